#!/usr/bin/env bash
# Decode attention outside the engine, in one device call: f16 decode kernels (+ the reduction) of
# several versions of kernels/cuda, side by side, and the floor that no kernel beats (one that only
# reads as many bytes). Llama-3.2-1B's attention shape (head size 64, or that of KERNEL); docs/perf.md.
#
#   scripts/decode-bench.sh pack [REV[:SMEM[:KERNEL]] ...]  # here: builds .device-decode/ (~10 MB)
#   scripts/decode-bench.sh run                             # there, from the repo root: a table each
#   scripts/decode-bench.sh pack-qgemv [REV ...]            # here: .device-qgemv/, the Q8_0 GEMV
#   scripts/decode-bench.sh run-qgemv                       # there: its launch shapes, each REV
#
# pack: decode_bench (scripts/decode-bench/decode_bench.cpp, driver API, linked against the CUDA
# toolchain's libcuda stub from ../shared/tools/cuda-toolchain.sh), stream_read.cu, the reduction of
# the working tree, and one sm_90 cubin per spec: KERNEL (default `paged_decode_f16_d64_g4`;
# `paged_decode_mma_*` come from paged_attention_mma.cu) of git revision REV (`now`: the working
# tree), launched with SMEM bytes of dynamic shared memory (default 0). Without specs: the working
# tree's two kernels, with the shared memory src/ops/cuda.rs gives them. Each version gets its
# decode list as its kernels read it (`DECODE_ENTRY` words a sequence, or one before it) and the
# same random inputs, so equal checksums mean equal outputs. Block tables are shuffled; run with
# DECODE_BENCH_TABLES=ordered for each sequence's blocks in order; with DECODE_BENCH_PDL=1 the kernels
# launch as programmatic dependents, as in the engine (revisions from 974bf94 on: older kernels race).
#
# pack-qgemv: qgemv_bench (scripts/decode-bench/qgemv_bench.cpp) and kernels/cuda/qgemv.cu of each
# REV (default `now`; revisions from the integer tensor-core kernel on, whose launch shapes are
# `qgemv_q8_0_w{4,8,16}_d2`): each launch shape on Llama-3.2-1B's and 8B's decode matrices at 1–16
# rows (16: the two-tile `_n16` variant where the revision has it, and launches of 8), weights read
# from memory, results checked against a CPU reference.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.device-decode
qgemv_dir=.device-qgemv

# decode_bench or qgemv_bench (NAME) into DIR, linked against the toolchain's libcuda stub.
build_bench() {
  g++ -O2 -std=c++17 -Wall -Wextra -I"$CUDA_ROOT/include" -o "$2/$1" "scripts/decode-bench/$1.cpp" \
    -L"$CUDA_ROOT/lib64/stubs" -lcuda
}

# kernels/cuda of revision REV (`now`: the working tree) into a new temporary folder, printed.
sources_of() {
  local src
  src=$(mktemp -d)
  if [[ $1 == now ]]; then cp -r kernels "$src/"; else git archive "$1" kernels/cuda | tar -x -C "$src"; fi
  echo "$src"
}

pack() {
  eval "$(../shared/tools/cuda-toolchain.sh)"
  rm -rf "$dir" && mkdir -p "$dir"
  build_bench decode_bench "$dir"
  nvcc --cubin -arch=sm_90 -O3 -o "$dir/stream_read.cubin" scripts/decode-bench/stream_read.cu
  nvcc --cubin -arch=sm_90 -O3 -std=c++17 -o "$dir/reduce.cubin" kernels/cuda/paged_attention.cu
  (($#)) || set -- now:8192:paged_decode_f16_d64_g4 now:32768:paged_decode_mma_f16_d64
  : > "$dir/cubins.txt"
  local spec rev rest smem kernel file src label entry
  for spec in "$@"; do
    rev=${spec%%:*} rest=${spec#"$rev"} rest=${rest#:}
    smem=${rest%%:*} kernel=${rest#"$smem"} kernel=${kernel#:}
    smem=${smem:-0} kernel=${kernel:-paged_decode_f16_d64_g4}
    file=paged_attention.cu
    [[ $kernel == paged_decode_mma_* ]] && file=paged_attention_mma.cu
    src=$(sources_of "$rev")
    label="$rev-$kernel-$smem"
    nvcc --cubin -arch=sm_90 -O3 -std=c++17 -o "$dir/$label.cubin" "$src/kernels/cuda/$file"
    entry=1  # words per decoding sequence in the decode list: 3 since DECODE_ENTRY
    grep -qs DECODE_ENTRY "$src/kernels/cuda/attention.cuh" && entry=3
    rm -rf "$src"
    echo "$label $kernel $smem $entry" >> "$dir/cubins.txt"
  done
  du -sh "$dir"
}

run() {
  export LD_LIBRARY_PATH=/usr/local/nvidia/lib64
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  local label kernel smem entry
  while read -r label kernel smem entry; do
    "$dir/decode_bench" "$dir/$label.cubin" "$kernel" "$smem" "$dir/reduce.cubin" "$entry"
  done < "$dir/cubins.txt"
  "$dir/decode_bench" --stream "$dir/stream_read.cubin"
}

pack_qgemv() {
  eval "$(../shared/tools/cuda-toolchain.sh)"
  rm -rf "$qgemv_dir" && mkdir -p "$qgemv_dir"
  build_bench qgemv_bench "$qgemv_dir"
  local rev src
  for rev in "${@:-now}"; do
    src=$(sources_of "$rev")
    nvcc --cubin -arch=sm_90 -O3 -std=c++17 -o "$qgemv_dir/qgemv-$rev.cubin" "$src/kernels/cuda/qgemv.cu"
    rm -rf "$src"
  done
  du -sh "$qgemv_dir"
}

run_qgemv() {
  export LD_LIBRARY_PATH=/usr/local/nvidia/lib64
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  local cubin
  for cubin in "$qgemv_dir"/qgemv-*.cubin; do
    echo "== $cubin"
    "$qgemv_dir/qgemv_bench" "$cubin"
  done
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) run ;;
  pack-qgemv) shift; pack_qgemv "$@" ;;
  run-qgemv) run_qgemv ;;
  *) sed -n 2,24p "$0"; exit 2 ;;
esac
