#!/usr/bin/env bash
# Side-by-side benchmarks of wit against img2dataset, webdataset + PIL and selectolax, on the same
# inputs in the same run. Builds wit (release), creates bench/.work/venv with the peers, runs bench.py.
#   bash bench/run.sh           full run, writes bench/RESULTS.md
#   bash bench/run.sh --quick   tiny smoke run (what CI runs), writes bench/.work/RESULTS.quick.md
#   bash bench/run.sh --sections train   one part only, writes bench/RESULTS-train.md
set -euo pipefail
cd "$(dirname "$0")/.."
# Any other flags go to bench.py (sizes, repeats: see `python3 bench/bench.py --help`).
# Full and quick runs use separate scratch folders, and a lock serialises runs of one kind (a CI
# smoke run started during a full run must not overwrite its shards).
OUT=bench/RESULTS.md
WORK=bench/.work/full
prev=
for a in "$@"; do
  if [ "$prev" = "--sections" ]; then OUT="bench/RESULTS-${a//,/-}.md"; fi
  prev=$a
done
for a in "$@"; do
  if [ "$a" = "--quick" ]; then OUT=bench/.work/RESULTS.quick.md; WORK=bench/.work/quick; fi
done
mkdir -p "$WORK"
exec 9>"$WORK.lock"
flock 9
WIT=${WIT_BIN:-}
if [ -z "$WIT" ]; then
  # libjpeg-turbo's SIMD code needs nasm at build time; without it JPEG coding is ~2× slower.
  bash scripts/setup-debian.sh nasm
  cargo build --release --locked --bin wit
  WIT=$PWD/target/release/wit
fi
exec 8>bench/.work/venv.lock
flock 8
if [ ! -x bench/.work/venv/bin/python ]; then python3 -m venv bench/.work/venv; fi
# The peers (img2dataset pinned to the release the comparison targets). The peers must not
# phone home: albumentations (pulled by img2dataset) checks PyPI for updates at import.
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled
PEERS=(img2dataset==1.47.0 webdataset pillow numpy pyarrow selectolax)
if ! bench/.work/venv/bin/python -c 'import img2dataset, webdataset, PIL, numpy, pyarrow, selectolax' 2>/dev/null; then
  if ! bench/.work/venv/bin/python -m pip install --quiet --disable-pip-version-check "${PEERS[@]}"; then
    echo "bench/run.sh: could not pip install the peers (${PEERS[*]}) into bench/.work/venv:" \
      "PyPI must be reachable; delete bench/.work/venv and rerun" >&2
    exit 1
  fi
fi
# PyTorch and open_clip for the trainer comparisons (a CUDA-enabled wheel from PyPI, several GB):
# full runs only.
TORCH=()
if [ "$WORK" = bench/.work/full ]; then
  if [ ! -x bench/.work/torch-venv/bin/python ]; then python3 -m venv bench/.work/torch-venv; fi
  if ! bench/.work/torch-venv/bin/python -c 'import torch, open_clip' 2>/dev/null; then
    if ! bench/.work/torch-venv/bin/python -m pip install --quiet --disable-pip-version-check torch numpy open_clip_torch; then
      echo "bench/run.sh: could not pip install torch and open_clip into bench/.work/torch-venv (PyPI must be reachable)" >&2
      exit 1
    fi
  fi
  TORCH=(--torch-python "$PWD/bench/.work/torch-venv/bin/python")
fi
flock -u 8
bench/.work/venv/bin/python bench/bench.py --wit "$WIT" --work "$WORK" --out "$OUT" "${TORCH[@]}" "$@"
