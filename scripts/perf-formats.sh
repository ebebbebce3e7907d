#!/usr/bin/env bash
# The same weights in two formats, and load cost per format (docs/perf.md records what it printed):
#  1. the demo SmolLM2-135M as GGUF Q4_1 and as an MLX 4-bit folder (repacked to Q4_1 at load):
#     prompt and decode tok/s of `bodega run`, same workload as scripts/perf-cpu.sh, alternating;
#  2. a random model of Llama 3.2 1B's shape as bf16 safetensors, Q8_0 GGUF and MLX 4-bit: load time
#     (bodega's own load line) and peak resident memory (/usr/bin/time) of a one-token run.
#
#   [BODEGA=path/to/bodega] scripts/perf-formats.sh [THREADS] [WORK_DIR]
#
# Needs the venv of tests/fixtures/README.md (PYTHON=path/to/python, default
# $HOME/.cache/bodega/venv-models/bin/python) to write the MLX and 1B-shaped models into WORK_DIR
# (default $HOME/.cache/bodega/perf-formats, ~6 GB) the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
work=${2:-$HOME/.cache/bodega/perf-formats}
python=${PYTHON:-$HOME/.cache/bodega/venv-models/bin/python}
reps=3
gguf=$(scripts/fetch-test-models.sh | sed -n 1p)  # sed reads it all: no SIGPIPE under pipefail
mkdir -p "$work"
[ -d "$work/smollm2-mlx-4bit" ] || "$python" scripts/make-mlx-demo.py --gguf "$gguf" --out "$work/smollm2-mlx-4bit"
[ -d "$work/1b/mlx-4bit-g64" ] || "$python" scripts/make-1b-shapes.py "$work/1b"
# BODEGA=path/to/bodega measures that binary instead of a fresh release build.
bodega=${BODEGA:-target/release/bodega}
[ -n "${BODEGA:-}" ] || cargo build --release --quiet
prompt=$(python3 -c 'print(" ".join(["The history of bread begins in the Neolithic era when people first ground grain."] * 9))')
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq $reps); do
  for model in "$gguf" "$work/smollm2-mlx-4bit"; do
    printf '%s\t' "$model" >> "$out"
    "$bodega" --threads "$threads" run "$model" --raw "$prompt" --max-tokens 128 --ignore-eos --temperature 0 \
      --json >> "$out"
  done
done
python3 - "$out" "$threads" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    model, obj = line.split("\t", 1)
    rows.setdefault(model, []).append(json.loads(obj)["timings"])
print(f"threads {sys.argv[2]}, 128-token prompt then 128 tokens, median of {len(next(iter(rows.values())))} runs")
print("| model | prefill tok/s | decode tok/s |")
print("|---|---|---|")
for model, t in rows.items():
    med = lambda k: statistics.median(x[k] for x in t)
    print(f"| {model.rsplit('/', 1)[-1]} | {med('prefill_tok_s'):.1f} | {med('decode_tok_s'):.1f} |")
PY
echo
echo "| 1B-shaped model | load (s, bodega's load line) | peak RSS (MiB) |"
echo "|---|---|---|"
for model in "$work/1b/safetensors-bf16" "$work/1b/llama-1b-shape-Q8_0.gguf" "$work/1b/mlx-4bit-g64"; do
  log=$( { /usr/bin/time -f 'peak_kb %M' "$bodega" -v --threads "$threads" run "$model" --raw "a" --max-tokens 1 \
    --kv-memory 64M > /dev/null; } 2>&1 )
  load=$(grep -o 'in [0-9.]*s' <<<"$log" | head -n 1 | tr -dc '0-9.')
  peak=$(grep -o 'peak_kb [0-9]*' <<<"$log" | tr -dc '0-9')
  echo "| ${model##*/} | $load | $((peak / 1024)) |"
done
