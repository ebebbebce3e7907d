#!/usr/bin/env bash
# Every test bodega has, as CI runs them (.ci/run calls this; the README's "Tests" section shows it).
# Installs the demo models and a venv with the openai client first (both cached after the first run),
# then checks formatting and lints, then runs the unit and integration tests against the real models,
# and last the CPU kernel crate's tests for aarch64 under qemu (its NEON path).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-models.sh >/dev/null
# The server tests drive the official openai Python client; keep it in a cached venv.
venv=${BODEGA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bodega}/venv-openai
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check 'openai>=1.50,<4'
fi
export BODEGA_TEST_PYTHON="$venv/bin/python"
command -v curl >/dev/null || { echo "error: the server tests need curl (apt-get install curl)" >&2; exit 1; }
cargo fmt --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/check-macos.sh
scripts/test-metal-emulated.sh --setup-only
cargo test --workspace --locked
scripts/check-cuda.sh

# The NEON kernels: cross-compile the dependency-free kernel crate and run its tests under qemu
# (.cargo/config.toml names the linker and the runner). The tools are installed once, when missing.
neon=aarch64-unknown-linux-gnu
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; } \
    >/dev/null 2>&1 || {
    echo "error: the NEON kernel tests need gcc-aarch64-linux-gnu and qemu-user (apt-get install them)" >&2
    exit 1
  }
fi
if ! rustup target list --installed | grep -qx "$neon"; then
  rustup target add "$neon" >/dev/null 2>&1 || { echo "error: could not add the Rust target $neon (rustup target add $neon)" >&2; exit 1; }
fi
cargo clippy -p bodega-cpu-kernels --all-targets --locked --target "$neon" -- -D warnings
cargo test -p bodega-cpu-kernels --locked --target "$neon"
