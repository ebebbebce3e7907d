#!/usr/bin/env bash
# The decode sweep through `bodega bench`, three ways in one run (docs/perf.md records what it printed):
#  1. bodega in-process (A) vs bodega serve-lite over HTTP (B): B/A is the HTTP overhead;
#  2. bodega serve-lite (A) vs llama-server (B), same prompts, interleaved: B/A compares the engines.
#
#   scripts/perf-bench.sh [MODEL.gguf] [THREADS] [CONCURRENCY LIST]
#
# Builds bodega in release mode and llama.cpp with ../shared/tools/llama-cpp.sh (or LLAMA_BIN=dir).
# Workload: random 128-token prompts, 64 generated tokens each (EOS ignored), 16 requests per row.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-$(scripts/fetch-test-models.sh | head -n 1)}
threads=${2:-2}
sweep=${3:-1,4,16}
bin=${LLAMA_BIN:-$(../shared/tools/llama-cpp.sh cpu)}
cargo build --release --quiet
bodega=target/release/bodega
out=${PERF_OUT:-$(mktemp -d)}
ours=18431 theirs=18432
"$bodega" --threads "$threads" -q serve-lite "$model" --port "$ours" --max-seqs 16 &
serve_pid=$!
"$bin/llama-server" -m "$model" --port "$theirs" -t "$threads" -np 16 -c 8192 --log-disable >/dev/null 2>&1 &
llama_pid=$!
trap 'kill $serve_pid $llama_pid 2>/dev/null || true' EXIT
for port in $ours $theirs; do
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break; sleep 0.5; done
done
workload=(--concurrency "$sweep" --num-prompts 16 --input-len 128 --output-len 64 --warmup 4)
echo "== 1. bodega in-process (A) vs bodega serve-lite over HTTP (B)"
"$bodega" --threads "$threads" -q bench "$model" --max-seqs 16 --vs "http://127.0.0.1:$ours" "${workload[@]}" \
  --json "$out/inproc-vs-http.json"
echo "== 2. bodega serve-lite (A) vs llama-server (B)"
# A new seed: run 1's prompts are in serve-lite's prefix cache.
"$bodega" --threads "$threads" -q bench "$model" --url "http://127.0.0.1:$ours" --vs "http://127.0.0.1:$theirs" \
  "${workload[@]}" --seed 1 --check --json "$out/http-vs-llama.json" || echo "(bench exited $?: see the check above)"
echo "reports in $out"
