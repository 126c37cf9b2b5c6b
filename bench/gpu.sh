#!/usr/bin/env bash
# bench/gpu.sh — wit's CUDA trainer against open_clip on the same GPU, in one run.
#
#   bash bench/gpu.sh WIT_BINARY OUT_DIR [DEMO_DIR]
#
# WIT_BINARY is `wit` built with `--features cuda` (see README, "CUDA"); the machine needs the NVIDIA
# driver and Python with torch + open_clip (`pip install open_clip_torch`). For ViT-B/32 at
# batch 256 on synthetic pairs, bf16 autocast over f32 master weights for both, it alternates wit,
# wit with its CUDA kernels off (`--no-cuda-kernels`: candle's plain-op graphs; PLAIN=0 skips
# these rows) and open_clip ROUNDS times (default 2), then RN50 at batch 64 once each (each capped
# at RN_LIMIT seconds, default 180; 0 skips them). It reports samples/s and peak GPU memory:
# nvidia-smi's device-wide maximum above the idle reading, polled every 100 ms, so both tools are
# measured the same way. With DEMO_DIR (a finished `wit demo --dir DEMO_DIR`), it also trains the
# demo's tiny CLIP on CUDA with the demo's recipe for 500, 2000 and 4000 steps and evaluates each
# on the held-out pairs.
# Everything goes to OUT_DIR/gpu.log; the evaluations go to OUT_DIR/eval-<steps>.json.
# With WIT_BASE, another `wit` binary (a baseline build) runs before WIT in every round, so a change
# is timed against the code before it on the same GPU in one run.
# With WIT_TESTS, a folder of the trainer's CUDA test binaries (`cargo test --release --features
# cuda -p wit-trainer --no-run`), their CUDA tests run first.
set -uo pipefail
WIT=$(readlink -f "$1")
OUT=$(readlink -f "$2")
DEMO=${3:+$(readlink -f "$3")}
HERE=$(dirname "$(readlink -f "$0")")
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
idle_mib=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n1)

# Runs a command while polling GPU memory; prints its output and `gpu_peak_mib: N` (above idle).
with_peak() {
  local poll
  poll=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$poll" &
  local smi=$!
  "$@"
  local rc=$?
  kill "$smi" 2>/dev/null
  wait "$smi" 2>/dev/null
  echo "gpu_peak_mib: $(($(sort -n "$poll" | tail -n1) - idle_mib))"
  rm -f "$poll"
  return $rc
}

for test in ${WIT_TESTS:+"$WIT_TESTS"/*}; do
  echo "== CUDA tests of $(basename "$test")"
  "$test" cuda --nocapture 2>&1 | grep -v "gradient cosine 0.99" | tail -n 30
done

wit_bench() {
  with_peak "${BIN:-$WIT}" bench train --config vit-b-32 --device cuda --batch-size 256 \
    --vocab-size 49408 --caption-tokens 16 --steps 30 --warmup-steps 3 "$@"
}

for round in $(seq "${ROUNDS:-2}"); do
  if [ -n "${WIT_BASE:-}" ]; then
    echo "== round $round: baseline wit ($WIT_BASE), ViT-B/32, batch 256"
    BIN=$WIT_BASE wit_bench
  fi
  echo "== round $round: wit, ViT-B/32, batch 256"
  wit_bench
  if [ "${PLAIN:-1}" = 1 ]; then
    echo "== round $round: wit with --no-cuda-kernels, ViT-B/32, batch 256"
    wit_bench --no-cuda-kernels
  fi
  echo "== round $round: open_clip, ViT-B-32, batch 256"
  with_peak "$PY" "$HERE/open_clip_step.py" --model ViT-B-32 --batch-size 256 \
    --caption-tokens 16 --steps 30 --warmup-steps 3
done

# The ResNet tower once each, capped at RN_LIMIT seconds (default 180; 0 skips it): on CUDA wit's
# im2col, BatchNorm, pooling and residual join are plain-op graphs (the fused ops are CPU-only),
# so this measures that fallback.
RN_LIMIT=${RN_LIMIT:-180}
if [ "$RN_LIMIT" != 0 ]; then
  echo "== wit, RN50, batch 64"
  with_peak timeout "$RN_LIMIT" "$WIT" bench train --config rn50 --device cuda --batch-size 64 \
    --vocab-size 49408 --caption-tokens 16 --steps 10 --warmup-steps 2
  echo "== open_clip, RN50, batch 64"
  with_peak timeout "$RN_LIMIT" "$PY" "$HERE/open_clip_step.py" --model RN50 --batch-size 64 \
    --caption-tokens 16 --steps 10 --warmup-steps 2
fi

[ -n "$DEMO" ] || exit 0
for steps in 500 2000 4000; do
  echo "== demo recipe on CUDA: $steps steps"
  model=$(mktemp -d)
  start=$(date +%s)
  "$WIT" train --data "$DEMO/shards/train" --config tiny --steps "$steps" --batch-size 128 \
    --lr 0.001 --warmup $((steps / 10)) --seed 0 --hard-negatives negatives \
    --negatives-per-sample 2 --device cuda --quiet --out "$model" || continue
  echo "train_seconds: $(($(date +%s) - start))"
  "$WIT" eval --checkpoint "$model" --data "$DEMO/shards/heldout" --device cuda \
    --json "$OUT/eval-$steps.json" | tail -n 12
  rm -rf "$model"
done
