#!/usr/bin/env bash
# Every test bodega has, as CI runs them (.ci/run calls this; the README's "Tests" section shows it).
# Installs the demo models first (cached after the first run), then checks formatting and lints, then
# runs the unit and integration tests against the real SmolLM2 model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-models.sh >/dev/null
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
