#!/usr/bin/env bash
# Creates .venv with the Python readers the interop tests compare against (webdataset, wids,
# pyarrow, duckdb, warcio, pillow, numpy). Idempotent: a venv that already has them is kept.
# wids imports torch at import time only for base classes; it is not installed here (a 3 GB
# download): the wids interop test supplies those two names itself when torch is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PACKAGES=(webdataset wids pyarrow duckdb numpy pillow warcio)
CHECK='import importlib.util, webdataset, pyarrow, duckdb, numpy, PIL, warcio
assert importlib.util.find_spec("wids") is not None, "wids missing"'
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "$CHECK" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
fi
.venv/bin/python -c "$CHECK"
.venv/bin/python -c 'import webdataset, pyarrow, duckdb; print("python interop readers ready:", "webdataset", webdataset.__version__, "pyarrow", pyarrow.__version__, "duckdb", duckdb.__version__)'
