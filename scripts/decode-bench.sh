#!/usr/bin/env bash
# Decode attention outside the engine, in one device call: the f16 decode kernel (+ its reduction) of
# each version of kernels/cuda/paged_attention.cu given, side by side, and the floor that no kernel
# beats (one that only reads as many bytes). Llama-3.2-1B's attention shape; docs/perf.md.
#
#   scripts/decode-bench.sh pack [REV[:SMEM] ...]   # here: builds .device-decode/ (~10 MB)
#   scripts/decode-bench.sh run                     # there, from the repo root: a table per version
#
# pack: decode_bench (scripts/decode-bench/decode_bench.cpp, driver API, linked against the CUDA
# toolchain's libcuda stub from ../shared/tools/cuda-toolchain.sh), stream_read.cu, and a sm_90 cubin
# of the working tree's kernels, launched with 8192 bytes of dynamic shared memory
# (`decode_shared_bytes(64, 2, 4)` in src/ops/cuda.rs), plus one per git revision REV, launched with
# SMEM bytes (default 0: the kernels before the per-lane staging). Every version gets the same
# random inputs, so equal checksums mean equal outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.device-decode

pack() {
  eval "$(../shared/tools/cuda-toolchain.sh)"
  rm -rf "$dir" && mkdir -p "$dir"
  g++ -O2 -std=c++17 -Wall -Wextra -I"$CUDA_ROOT/include" -o "$dir/decode_bench" \
    scripts/decode-bench/decode_bench.cpp -L"$CUDA_ROOT/lib64/stubs" -lcuda
  nvcc --cubin -arch=sm_90 -O3 -o "$dir/stream_read.cubin" scripts/decode-bench/stream_read.cu
  nvcc --cubin -arch=sm_90 -O3 -std=c++17 -o "$dir/now.cubin" kernels/cuda/paged_attention.cu
  echo "now 8192" > "$dir/cubins.txt"
  local spec rev smem src
  for spec in "$@"; do
    rev=${spec%%:*}
    smem=0
    [[ $spec == *:* ]] && smem=${spec#*:}
    src=$(mktemp -d)
    git archive "$rev" kernels/cuda | tar -x -C "$src"
    nvcc --cubin -arch=sm_90 -O3 -std=c++17 -o "$dir/$rev.cubin" "$src/kernels/cuda/paged_attention.cu"
    rm -rf "$src"
    echo "$rev $smem" >> "$dir/cubins.txt"
  done
  du -sh "$dir"
}

run() {
  export LD_LIBRARY_PATH=/usr/local/nvidia/lib64
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  local name smem
  while read -r name smem; do
    "$dir/decode_bench" "$dir/$name.cubin" "$smem"
  done < "$dir/cubins.txt"
  "$dir/decode_bench" --stream "$dir/stream_read.cubin"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) run ;;
  *) sed -n 2,13p "$0"; exit 2 ;;
esac
