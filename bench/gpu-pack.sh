#!/usr/bin/env bash
# bench/gpu-pack.sh — prepares, on this machine, everything one `device` run of bench/gpu.sh needs,
# so a session lent a GPU spends its few device minutes measuring, not building.
#
#   bash bench/gpu-pack.sh        (then, on the GPU machine: bash .gpu/run.sh, carrying .gpu and .whl)
#   BASE_WIT=/path/to/older/wit bash bench/gpu-pack.sh   (also packs that binary as the baseline that
#                                 bench/gpu.sh alternates with the new one: WIT_BASE)
#
# Builds `wit` and the trainer's test binaries with `--features cuda` (CUDA 13 from
# scripts/cuda-build-env.sh, CUDA_COMPUTE_CAP=90 for the H100/H200; ~20 minutes cold on
# 2 cores, into /work/target-cuda or $CARGO_TARGET_DIR), strips and packs them (`.gpu/bins.tar.xz`,
# ~27 MB: the device tool carries at most 64 MiB), copies gpu-ldpath.sh, downloads open_clip_torch
# and the two packages the GPU image lacks (ftfy, wcwidth) as wheels into `.whl`, and writes
# `.gpu/run.sh`: install the wheels, unpack, run bench/gpu.sh with the CUDA tests, then time every
# kernel of one ViT-B/32 step with Nsight Compute (`ncu.csv.gz`, NCU=0 skips it). Both folders are
# git-ignored through .git/info/exclude.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${TOOLS:-scripts}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-cuda} CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
eval "$(bash "$TOOLS/cuda-build-env.sh")"
cargo build --release --features cuda --bin wit
tests=$(cargo test --release --features cuda -p wit-trainer --no-run --message-format=json |
  python3 -c 'import json,sys; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("executable") and m.get("profile", {}).get("test")]')
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || printf '/.gpu/\n/.whl/\n' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/pack/tests .whl
cp "$CARGO_TARGET_DIR/release/wit" .gpu/pack/wit
for t in $tests; do cp "$t" .gpu/pack/tests/; done
strip .gpu/pack/wit .gpu/pack/tests/*
tar -C .gpu/pack -cf - wit tests | xz -T0 -6 > .gpu/bins.tar.xz
rm -rf .gpu/pack
if [ -n "${BASE_WIT:-}" ]; then
  mkdir -p .gpu/pack && cp "$BASE_WIT" .gpu/pack/wit && strip .gpu/pack/wit
  tar -C .gpu/pack -cf - wit | xz -T0 -6 > .gpu/base-wit.tar.xz
  rm -rf .gpu/pack
fi
cp "$TOOLS/gpu-ldpath.sh" .gpu/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  open_clip_torch==3.3.0 ftfy wcwidth
cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
TORCH_VENV=/opt/torch/.venv . .gpu/gpu-ldpath.sh
tar -xJf .gpu/bins.tar.xz -C .gpu || exit 1
if [ -f .gpu/base-wit.tar.xz ]; then
  mkdir -p .gpu/base && tar -xJf .gpu/base-wit.tar.xz -C .gpu/base || exit 1
  export WIT_BASE=.gpu/base/wit
fi
WIT_TESTS=.gpu/tests ROUNDS=${ROUNDS:-2} RN_LIMIT=${RN_LIMIT:-100} bash bench/gpu.sh .gpu/wit "$OUT"
[ "${NCU:-1}" = 1 ] || exit 0
echo "== ncu, one ViT-B/32 step"
timeout 150 ncu --clock-control none --metrics gpu__time_duration.sum --csv --launch-count 3600 \
  .gpu/wit bench train --config vit-b-32 --device cuda --batch-size 256 --vocab-size 49408 \
  --caption-tokens 16 --steps 1 --warmup-steps 1 > /tmp/ncu.csv 2> /tmp/ncu.err
echo "ncu rc=$? kernels=$(wc -l < /tmp/ncu.csv)"
gzip -c /tmp/ncu.csv > "$OUT/ncu.csv.gz"
RUN
chmod +x .gpu/run.sh
du -sh .gpu .whl
