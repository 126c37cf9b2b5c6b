#!/usr/bin/env bash
# The README's test command: installs what the tests need (the Python interop readers, Debian's
# chromium for the HTML report test), then runs
# every test of the workspace. Works on a fresh machine with only Rust and Python 3 present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-python.sh
bash scripts/setup-chromium.sh
export WIT_PYTHON="$PWD/.venv/bin/python"
cargo test --workspace --locked -- --test-threads=2
