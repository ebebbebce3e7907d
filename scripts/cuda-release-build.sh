# Sourced by scripts/gpu-check.sh and scripts/gpu-ab.sh: the release build both carry to the GPU machine.
#
# cuda_release_build: in the current directory (a checkout of bodega), builds `bodega` and the GPU test
# binary (tests/gpu.rs) with the cuda feature into CARGO_TARGET_DIR, LTO off (the GPU does the work; a
# fat-LTO build of candle's CUDA backend takes far longer here), and prints their two paths as cargo
# reports them. One cargo invocation builds both: a separate `cargo build --bin bodega` resolves
# features without the dev-dependencies and rebuilds candle from scratch. gpu-ab.sh builds several
# checkouts into one target folder, where cargo gives each of bodega's own units the same name
# whatever the checkout and may take another checkout's for fresh; so those units' fingerprints are
# removed first and this checkout's bodega always recompiles (~2 min; candle stays built).
cuda_release_build() {
  rm -rf "${CARGO_TARGET_DIR:?}"/release/.fingerprint/bodega-*
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo test --release --features cuda --locked --test gpu --no-run --message-format=json \
    | python3 -c 'import json, sys
paths = {}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        paths[(m["target"]["name"], tuple(m["target"]["kind"]))] = m["executable"]
print(paths[("bodega", ("bin",))])
print(paths[("gpu", ("test",))])'
}
