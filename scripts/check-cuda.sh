#!/usr/bin/env bash
# CI: the cuda feature compiles and is lint-clean, so CUDA code cannot rot on machines without a GPU.
# The toolchain (nvcc, headers, cuBLAS/cuRAND link libraries, a libcuda stub) comes from
# ../shared/tools/cuda-toolchain.sh (CUDA 13.0, cached under ~/.cache/bodega); the GPU tests themselves
# run on a GPU machine (scripts/gpu-check.sh). A separate target dir keeps the CPU build's cache intact.
set -euo pipefail
cd "$(dirname "$0")/.."
toolchain=${BODEGA_CUDA_TOOLCHAIN:-../shared/tools/cuda-toolchain.sh}
[ -x "$toolchain" ] || { echo "error: $toolchain not found (set BODEGA_CUDA_TOOLCHAIN to cuda-toolchain.sh)" >&2; exit 1; }
eval "$("$toolchain")"
# The release profile as scripts/gpu-check.sh builds it, so both share one cache (candle's CUDA kernels
# take many minutes of nvcc on a cold cache).
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-target-cuda} cargo clippy --release --features cuda --all-targets --locked -- -D warnings
