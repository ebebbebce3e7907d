# Sourced by scripts/gpu-check.sh and scripts/gpu-ab.sh: the benchmarks both run on a GPU machine.
#
# bodega_benchmarks BIN OUT TAG [FLAG...]: BIN's single stream (a 512-token prompt, 128 decoded, 3
# repeats) and aggregate decode (rows of 10 × N requests of 128 + 128 tokens, N = 1/4/16/64 in
# flight) on a synthetic Llama-3.2-1B in F16 and Q8_0 (BENCH_TYPES), FLAGs added to every run;
# reports in OUT/bodega-TYPE-{single,sweep}TAG.{json,log}, the logs also on stdout.
bodega_benchmarks() {
  local bin=$1 out=$2 tag=$3 type
  shift 3
  for type in ${BENCH_TYPES:-f16 q8_0}; do
    timeout 120 "$bin" --device cuda -q bench --synthetic "llama-3.2-1b:$type" --depth 0 --input-len 512 \
      --output-len 128 --repeat 3 --warmup 1 --peak-bandwidth "${PEAK_GBS:-3350}" --ctx-size 4096 --kv-memory 4G \
      "$@" --json "$out/bodega-$type-single$tag.json" </dev/null 2>&1 | tee "$out/bodega-$type-single$tag.log" || true
    timeout 180 "$bin" --device cuda -q bench --synthetic "llama-3.2-1b:$type" --concurrency 1,4,16,64 \
      --warmup 2 --input-len 128 --output-len 128 --max-seqs 64 --ctx-size 512 --kv-memory 4G "$@" \
      --peak-bandwidth "${PEAK_GBS:-3350}" --json "$out/bodega-$type-sweep$tag.json" </dev/null 2>&1 \
      | tee "$out/bodega-$type-sweep$tag.log" || true
  done
}
