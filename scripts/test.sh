#!/usr/bin/env bash
# Every test bodega has, as CI runs them (.ci/run calls this; the README's "Tests" section shows it).
# Installs the demo models and a venv with the openai client first (both cached after the first run),
# then checks formatting and lints, then runs the unit and integration tests against the real models.
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
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
