#!/usr/bin/env bash
# The macOS type-check (issue 10): compiles the library, the binary and every test target for Apple
# Silicon, which builds candle's Metal backend and all of bodega's Metal host code (src/ops/metal.rs,
# the Metal device and memory budget, tests/metal.rs) without a Mac: no linking, no SDK. Then clippy
# with warnings as errors, for the same target. Prints one `SKIPPED macOS type-check:` line and exits 0
# when the Rust target cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-apple-darwin
if ! rustup target list --installed | grep -qx "$target"; then
  if ! why=$(rustup target add "$target" 2>&1); then
    echo "SKIPPED macOS type-check: cannot install the Rust target $target ($(printf '%s' "$why" | tail -n 1))"
    exit 0
  fi
fi
cargo check --locked --target "$target" --all-targets
cargo clippy --locked --target "$target" --all-targets -- -D warnings
