#!/usr/bin/env bash
# Every GPU test and benchmark of the CUDA backend, in one call on a GPU machine, with a table last.
#
#   scripts/gpu-check.sh pack          # here (no GPU needed): builds and packs .device/ (~60 MB)
#   scripts/gpu-check.sh run [PHASES]  # there, from the repo root; logs in /tmp/gpu-check, packed into
#                                      # $OUT/gpu-check.tgz beside $OUT/table.md when $OUT is set
#
# pack: the CUDA toolchain (../shared/tools/cuda-toolchain.sh), a release build of `bodega` and of the
# test binary tests/gpu.rs (portable x86-64-v3, stripped, xz), a 4-block SmolLM2 for the real-weight
# tests (scripts/truncate-gguf.py; the demo file does not fit the carry) and, with PACK_LLAMA=1,
# llama.cpp's source with its build script (../shared/tools/llama-cpp.sh gpu-src).
# run: PHASES is any of `tests bench eager sampled spec llama depth` (default: `tests bench spec
# llama`; `tests` runs every GPU test, then a few again with BODEGA_CUDA_PDL=0; `eager` repeats `bench`
# with --eager, every step op by op, for the CUDA graphs' before/after in one call; `sampled` repeats
# it with --temperature 0.8, every token drawn by the device's top-k/top-p sampler instead of its
# argmax, for what sampling costs a step; `depth` measures both engines' single stream with 4,096 and
# 16,384 tokens already in context, llama-bench's -d: decode attention over a long cache and prompt
# chunks after a cached prefix). llama.cpp builds
# first, alone (~4.5 min; kept in /tmp for the next call on a warm machine, so a first `run llama`
# builds and a second `run bench llama` fits both engines' benchmarks in one call); then both engines
# are benchmarked on a synthetic Llama-3.2-1B in F16 and Q8_0:
# single-stream prompt (512) and decode (128) speed, and aggregate decode at 1/4/16/64 sequences of
# 128 prompt + 128 generated tokens (llama-batched-bench vs `bodega bench`). `spec` runs the
# copy-edit workload with and without n-gram speculation (`bench --spec-compare`, the switch-off
# raised to 64 so that every row speculates) on the truncated SmolLM2 (real text: guesses get
# accepted) and on the synthetic 1B (random weights: nothing is accepted, the cost alone).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bodega-benchmarks.sh
source scripts/cuda-release-build.sh
# BODEGA_DEVICE_DIR: another folder than .device/, so that two people can pack without clobbering.
dev=${BODEGA_DEVICE_DIR:-.device}

pack() {
  eval "$(../shared/tools/cuda-toolchain.sh)"
  export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-target-cuda}
  local built
  built=$(cuda_release_build)
  mkdir -p "$dev"
  strip -o "$dev/bodega" "$(sed -n 1p <<<"$built")"
  strip -o "$dev/gpu" "$(sed -n 2p <<<"$built")"
  # -9: the binaries, the model and the tracked files must fit the 64 MiB carry together.
  xz -f -T2 -9 "$dev/bodega" "$dev/gpu"
  local model
  model=$(scripts/fetch-test-models.sh | sed -n 1p)
  if [ ! -f "$dev/smollm2-4l.gguf.xz" ]; then
    # The gguf package, in a venv of its own under ~/.cache/bodega.
    local venv=${BODEGA_CACHE:-$HOME/.cache/bodega}/venv-gguf
    [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import gguf' 2>/dev/null \
      || { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check gguf; }
    "$venv/bin/python" scripts/truncate-gguf.py "$model" "$dev/smollm2-4l.gguf" --layers 4
    xz -f -T2 -6 "$dev/smollm2-4l.gguf"
  fi
  # llama.cpp's source (12 MB) does not fit the 64 MiB carry beside the model: PACK_LLAMA=1 packs it
  # (then leave the model out, or carry it in a second call: `run bench llama`).
  if [ "${PACK_LLAMA:-0}" = 1 ] && [ ! -f "$dev/llama-src.tgz" ]; then
    ../shared/tools/llama-cpp.sh gpu-src "$dev" >/dev/null
  fi
  du -ch "$dev"/* | tail -n 1
}

run() {
  local phases=${*:-tests bench spec llama}
  local out=/tmp/gpu-check bin=/tmp/gpu-check-bin
  mkdir -p "$out" "$bin"
  export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/nvidia/lib64
  python3 - "$dev" "$bin" <<'PY'
import lzma, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
for name in os.listdir(src):
    if name.endswith(".xz"):
        target = os.path.join(dst, name[:-3])
        with lzma.open(os.path.join(src, name)) as f, open(target, "wb") as g:
            shutil.copyfileobj(f, g)
        os.chmod(target, 0o755)
PY
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
  if [[ $phases == *llama* || $phases == *depth* ]]; then
    # First and alone: the build takes every core, and bodega's single-stream decode is sensitive to
    # the host's speed.
    # A warm machine keeps /tmp between calls: build once, then `run bench llama` measures both
    # engines in one call within the device's 10-minute limit.
    if [ -x /tmp/llama.cpp/build/bin/llama-batched-bench ]; then
      echo "llama.cpp: the build from an earlier call on this machine" | tee "$out/llama-build.log"
    else
      bash "$dev/build-llama-gpu.sh" >"$out/llama-build.log" 2>&1 || { tail -n 30 "$out/llama-build.log"; return 1; }
    fi
  fi
  if [[ $phases == *tests* ]]; then
    BODEGA_GPU_MODEL=$bin/smollm2-4l.gguf timeout 300 "$bin/gpu" --test-threads=1 --nocapture 2>&1 \
      | tee "$out/gpu-tests.log" || true
    # Again with plain launches (what a GPU older than sm_90 gets): the attention kernels against the
    # CPU, bitwise batch invariance, graphs against eager steps.
    BODEGA_CUDA_PDL=0 BODEGA_GPU_MODEL=$bin/smollm2-4l.gguf timeout 120 "$bin/gpu" --test-threads=1 \
      decode_of_many_sequences mixed_batches a_sequence_gets_bitwise decode_graph_replays_match_eager_steps \
      engine_on_cuda_graph_replays_keep_the_outputs 2>&1 | tee "$out/gpu-tests-plain-launches.log" || true
  fi
  # `eager`: the same benchmarks with --eager (every step op by op, no CUDA graphs), files *-eager.*;
  # `sampled`: with --temperature 0.8 (bench's top-k 40, top-p 0.95), files *-sampled.*
  local mode
  for mode in bench eager sampled; do
    [[ $phases == *$mode* ]] || continue
    case $mode in
      bench) bodega_benchmarks "$bin/bodega" "$out" "" ;;
      eager) bodega_benchmarks "$bin/bodega" "$out" -eager --eager ;;
      sampled) bodega_benchmarks "$bin/bodega" "$out" -sampled --temperature 0.8 ;;
    esac
  done
  if [[ $phases == *spec* ]]; then
    local spec=(--config bench-configs/copy-edit.toml --speculative ngram --spec-compare --spec-max-batch 64
      --max-seqs 64 --ctx-size 1024 --kv-memory 4G --warmup 2)
    timeout 200 "$bin/bodega" --device cuda -q bench "$bin/smollm2-4l.gguf" "${spec[@]}" --concurrency 1,4,16,64 \
      --num-prompts 64 --json "$out/spec-smollm2-4l.json" 2>&1 | tee "$out/spec-smollm2-4l.log" || true
    timeout 100 "$bin/bodega" --device cuda -q bench --synthetic llama-3.2-1b:f16 "${spec[@]}" --concurrency 1 \
      --num-prompts 4 --json "$out/spec-1b-c1.json" 2>&1 | tee "$out/spec-1b-c1.log" || true
    timeout 150 "$bin/bodega" --device cuda -q bench --synthetic llama-3.2-1b:f16 "${spec[@]}" --concurrency 16,64 \
      --num-prompts 64 --json "$out/spec-1b.json" 2>&1 | tee "$out/spec-1b.log" || true
  fi
  local lbin=/tmp/llama.cpp/build/bin type
  for type in f16 q8_0; do
    [[ $phases == *llama* || $phases == *depth* ]] || break
    # Kept for a later call on a warm machine; written aside first, so an interrupted call leaves none.
    if [ ! -f "/tmp/llama-1b-$type.gguf" ]; then
      PYTHONPATH=/tmp/llama.cpp/gguf-py python3 scripts/synthetic-gguf.py "/tmp/llama-1b-$type.part.gguf" "$type" >/dev/null
      mv "/tmp/llama-1b-$type.part.gguf" "/tmp/llama-1b-$type.gguf"
    fi
    if [[ $phases == *llama* ]]; then
      "$lbin/llama-bench" -m "/tmp/llama-1b-$type.gguf" -p 512 -n 128 -fa 1 -ngl 99 -r 3 2>&1 \
        | tee "$out/llama-$type-bench.log" || true
      "$lbin/llama-batched-bench" -m "/tmp/llama-1b-$type.gguf" -c 20000 -b 2048 -ub 512 -npp 128 -ntg 128 \
        -npl 1,4,16,64 -fa on -ngl 99 2>&1 | tee "$out/llama-$type-batched.log" || true
    fi
    if [[ $phases == *depth* ]]; then
      # The same lengths after 4,096 and 16,384 tokens of context, bodega first (its cache sized to fit).
      timeout 150 "$bin/bodega" --device cuda -q bench --synthetic "llama-3.2-1b:$type" --depth 4096,16384 \
        --input-len 512 --output-len 128 --repeat 2 --warmup 1 --ctx-size 17024 --kv-memory 8G \
        --json "$out/bodega-$type-depth.json" 2>&1 | tee "$out/bodega-$type-depth.log" || true
      "$lbin/llama-bench" -m "/tmp/llama-1b-$type.gguf" -p 512 -n 128 -d 4096,16384 -fa 1 -ngl 99 -r 2 2>&1 \
        | tee "$out/llama-$type-depth.log" || true
    fi
  done
  python3 scripts/gpu-table.py "$out" | tee "$out/table.md"
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu-check.tgz" -C "$(dirname "$out")" "$(basename "$out")"
    cp "$out/table.md" "$OUT/"
  fi
}

case "${1:-}" in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 2 ;;
esac
