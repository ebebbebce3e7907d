#!/usr/bin/env bash
# Prompt and decode speed of bodega next to llama.cpp, in one run, on the same model file and thread
# count (docs/perf.md records what it printed):
#  1. single stream: bodega run vs llama-bench (pp128, tg128);
#  2. aggregate decode at 1, 4 and 16 concurrent sequences: bodega bench (in-process, N requests
#     of 128 prompt tokens kept in flight) vs llama-batched-bench (npp 128, ntg 128, npl 1,4,16).
#     Both count decode time only: llama.cpp's S_TG times the generation phase after every prompt
#     is processed; bodega's engine `decode_tok_s` counts the tokens and time of steps that only
#     decode (a step that also carries a prompt chunk counts as prefill).
#
#   scripts/perf-cpu.sh [MODEL.gguf] [THREADS]
#
# Builds bodega in release mode and llama.cpp with ../shared/tools/llama-cpp.sh (or LLAMA_BIN=dir).
# Workload: a 128-token prompt, then 128 generated tokens (end-of-sequence ignored), 3 repetitions
# each, alternating the two engines; prints the medians and bodega/llama.cpp ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-$(scripts/fetch-test-models.sh | head -n 1)}
threads=${2:-2}
reps=3
bin=${LLAMA_BIN:-$(../shared/tools/llama-cpp.sh cpu)}
cargo build --release --quiet
prompt=$(python3 -c 'print(" ".join(["The history of bread begins in the Neolithic era when people first ground grain."] * 9))')
bodega_json=$(mktemp) llama_json=$(mktemp)
trap 'rm -f "$bodega_json" "$llama_json"' EXIT
for _ in $(seq $reps); do
  target/release/bodega --threads "$threads" run "$model" --raw "$prompt" --max-tokens 128 --ignore-eos \
    --temperature 0 --json >> "$bodega_json"
  "$bin/llama-bench" -m "$model" -t "$threads" -p 128 -n 128 -r 1 -o jsonl >> "$llama_json" 2>/dev/null
done
python3 - "$bodega_json" "$llama_json" "$threads" <<'PY'
import json, statistics, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
theirs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
med = statistics.median
b_pp = med(o["timings"]["prefill_tok_s"] for o in ours)
b_tg = med(o["timings"]["decode_tok_s"] for o in ours)
l_pp = med(r["avg_ts"] for r in theirs if r["n_prompt"] > 0)
l_tg = med(r["avg_ts"] for r in theirs if r["n_gen"] > 0)
ptoks = ours[0]["usage"]["prompt_tokens"]
print(f"threads {sys.argv[3]}, bodega prompt {ptoks} tokens, llama.cpp pp128/tg128, median of {len(ours)} runs each")
print(f"| | bodega tok/s | llama.cpp tok/s | bodega / llama.cpp |")
print(f"|---|---|---|---|")
print(f"| prompt | {b_pp:.1f} | {l_pp:.1f} | {b_pp / l_pp:.2f} |")
print(f"| decode | {b_tg:.1f} | {l_tg:.1f} | {b_tg / l_tg:.2f} |")
PY

echo
echo "aggregate decode tok/s, 128-token prompts, 128 generated tokens each (end-of-sequence ignored)"
"$bin/llama-batched-bench" -m "$model" -t "$threads" -c 8192 -b 2048 -ub 512 -npp 128 -ntg 128 -npl 1,4,16 \
  --output-format jsonl 2>/dev/null > "$llama_json"
for n in 1 4 16; do
  target/release/bodega --threads "$threads" bench "$model" -q --concurrency "$n" --num-prompts "$n" \
    --input-len 128 --output-len 128 --json "$bodega_json.$n" > /dev/null
done
python3 - "$bodega_json" "$llama_json" <<'PY'
import json, sys
theirs = {r["pl"]: r for r in (json.loads(l) for l in open(sys.argv[2]) if l.strip()) if r.get("pl")}
print("| sequences | bodega tok/s | llama.cpp S_TG tok/s | bodega / llama.cpp |")
print("|---|---|---|---|")
for n in (1, 4, 16):
    ours = json.load(open(f"{sys.argv[1]}.{n}"))["runs"][0]["engine"]["decode_tok_s"]
    ref = theirs[n]["speed_tg"]
    print(f"| {n} | {ours:.1f} | {ref:.1f} | {ours / ref:.2f} |")
PY
rm -f "$bodega_json".*
