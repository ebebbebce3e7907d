#!/usr/bin/env bash
# The Metal kernels under emulation (issue 10): compiles kernels/metal/*.metal unmodified as C++20
# with clang-19 against the MSL shim (kernels/metal/emu/) and runs them on the CPU against the Rust
# reference, then under ThreadSanitizer, then deliberately broken copies that must fail
# (tests/metal_emulated.rs). Installs clang-19 once when missing; exits non-zero on any failure.
# `--setup-only` installs clang-19 and stops: scripts/test.sh does that, then runs these tests inside
# its one `cargo test --workspace`, so that they are not run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v "${BODEGA_CLANG:-clang++-19}" >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-19; } \
    >/dev/null 2>&1 || {
    echo "error: the Metal emulation tests need clang-19 (apt-get install clang-19, or set BODEGA_CLANG)" >&2
    exit 1
  }
fi
[ "${1:-}" = --setup-only ] && exit 0
cargo test --locked --test metal_emulated -- --show-output
