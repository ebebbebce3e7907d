#!/usr/bin/env bash
# bodega built at several git revisions, benchmarked in turn in one call on a GPU machine: the
# same-call comparison docs/perf.md asks of a change (these machines drift between calls).
#
#   scripts/gpu-ab.sh pack REV...   # here: .device-ab/ with a release `bodega` of each revision,
#                                   # in order (`now`: the working tree; the first is the baseline)
#   scripts/gpu-ab.sh run [ROUNDS]  # there, from the repo root: each revision's benchmarks in turn,
#                                   # ROUNDS times (default 2), a table last; reports packed into
#                                   # $OUT/gpu-ab.tgz beside $OUT/ab.md when $OUT is set
#   scripts/gpu-ab.sh tests ROUNDS TEST...  # there: those GPU tests (tests/gpu.rs, --exact) of each
#                                   # revision in turn, ROUNDS times: their printed measurements
#
# With AB_GPU_TESTS=1, pack also keeps each revision's GPU test binary (~8 MB more a revision), for
# `tests` (kernel measurements such as attention_kernel_throughput, revision against revision).
#
# pack builds each revision in a git worktree with scripts/gpu-check.sh's cargo invocation and
# target folder (CUDA_TARGET_DIR, default target-cuda), so only bodega itself recompiles: ~2–3 min
# and ~10 MB a revision. run takes scripts/gpu-check.sh's benchmarks (scripts/bodega-benchmarks.sh:
# single stream and 1/4/16/64 sequences, F16 and Q8_0; BENCH_TYPES narrows them), ~1 min a revision
# and round; the table gives each figure per round and its ratio to the first revision's.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bodega-benchmarks.sh
source scripts/cuda-release-build.sh
dir=.device-ab

pack() {
  (($#)) || { echo "gpu-ab.sh pack: name at least one revision (now: the working tree)" >&2; exit 2; }
  eval "$(../shared/tools/cuda-toolchain.sh)"
  export CARGO_TARGET_DIR=$PWD/${CUDA_TARGET_DIR:-target-cuda}
  rm -rf "$dir" && mkdir -p "$dir"
  local rev src label built
  for rev in "$@"; do
    src=$PWD label=now
    if [[ $rev != now ]]; then
      label=$(git rev-parse --short "$rev")
      src=$(mktemp -d)
      git worktree add -q --detach "$src" "$rev"
    fi
    built=$(cd "$src" && cuda_release_build)
    strip -o "$dir/bodega-$label" "$(sed -n 1p <<<"$built")"
    xz -T2 -9 "$dir/bodega-$label"
    if [[ ${AB_GPU_TESTS:-0} == 1 ]]; then
      strip -o "$dir/gpu-$label" "$(sed -n 2p <<<"$built")"
      xz -T2 -9 "$dir/gpu-$label"
    fi
    echo "$label" >>"$dir/revisions.txt"
    [[ $rev == now ]] || git worktree remove --force "$src"
  done
  du -sh "$dir"
}

run() {
  local rounds=${1:-2} out=/tmp/gpu-ab bin=/tmp/gpu-ab-bin label round
  export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/nvidia/lib64
  rm -rf "$out" && mkdir -p "$out" "$bin"
  local labels
  mapfile -t labels <"$dir/revisions.txt"
  for label in "${labels[@]}"; do
    xz -dc "$dir/bodega-$label.xz" >"$bin/bodega-$label"
    chmod +x "$bin/bodega-$label"
  done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
  for round in $(seq "$rounds"); do
    for label in "${labels[@]}"; do
      bodega_benchmarks "$bin/bodega-$label" "$out" "-$label-r$round" >/dev/null
      echo "round $round, $label: done $(date +%T)"
    done
  done
  python3 scripts/gpu-table.py --ab "$out" "$rounds" "${labels[@]}" | tee "$out/ab.md"
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu-ab.tgz" -C "$(dirname "$out")" "$(basename "$out")"
    cp "$out/ab.md" "$OUT/"
  fi
}

tests() {
  local rounds=$1 label round
  shift
  export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/nvidia/lib64
  local labels
  mapfile -t labels <"$dir/revisions.txt"
  for label in "${labels[@]}"; do
    xz -dc "$dir/gpu-$label.xz" >"/tmp/gpu-$label"
    chmod +x "/tmp/gpu-$label"
  done
  for round in $(seq "$rounds"); do
    for label in "${labels[@]}"; do
      echo "== round $round, $label"
      "/tmp/gpu-$label" --test-threads=1 --nocapture --exact "$@" 2>&1 | grep -v '^$'
    done
  done
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  tests) shift; tests "$@" ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 2 ;;
esac
