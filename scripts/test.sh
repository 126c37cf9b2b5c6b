#!/usr/bin/env bash
# The README's test command: installs what the tests need (the Python interop readers, Debian's
# chromium for the HTML report test, nasm for libjpeg-turbo's SIMD build), then runs
# every test of the workspace. Works on a fresh machine with only Rust and Python 3 present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-python.sh
bash scripts/setup-debian.sh nasm chromium
export WIT_PYTHON="$PWD/.venv/bin/python" WIT_REQUIRE_JPEG_SIMD=1
cargo test --workspace --locked -- --test-threads=2
