#!/usr/bin/env bash
# Train the default refiner on one GPU within a time budget, then benchmark it (quality inputs + speed).
#   bash benchmarks/run_refiner_gpu.sh OUT_DIR [TRAIN_SECONDS] [ARRAYS.npz] [--no-bench]
# Needs .devdata/refiner/{train,heldout}.npz (refiner/train.py --build-data; bench_refiner.py prepare):
# the GPU machine then needs torch, transformers, accelerate, safetensors, pyyaml, tqdm only.
set -euo pipefail
out=${1:?output folder}; budget=${2:-330}; data=${3:-.devdata/refiner/train.npz}; bench=${4:-}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
common=(--config configs/refiner/default.yaml data.train=[$data] --no-resume)
# 1. calibrate: steps per second at this batch size, so the cosine schedule ends inside the budget
python refiner/train.py "${common[@]}" train.output_dir=/tmp/refiner-cal train.max_steps=150 train.log_every=50 train.eval_every=100000 >/tmp/cal.log 2>&1
steps=$(python - "$budget" <<'PY'
import json, sys
h = json.load(open("/tmp/refiner-cal/metrics.json"))["history"]
rate = sum(r["crystals_per_s"] for r in h[1:]) / max(len(h[1:]), 1) / 256  # steps/s after warm-up
print(int(float(sys.argv[1]) * rate * 0.92))
PY
)
echo "calibrated: $steps steps in ${budget}s"
# 2. train
python refiner/train.py "${common[@]}" train.output_dir=/tmp/refiner train.max_steps=$steps train.eval_every=$((steps / 4)) train.save_every=$((steps + 1)) train.warmup_steps=$((steps / 20)) 2>&1 | grep -v "it/s]" | tail -n 5 | tee "$out/train_tail.txt"
cp /tmp/refiner/model/* /tmp/refiner/metrics.json /tmp/refiner/config.yaml "$out/"
[ "$bench" = "--no-bench" ] && exit 0
# 3. benchmark: degraded held-out crystals refined per tau, and structures/s for a 200-step chain
python benchmarks/bench_refiner.py run --checkpoint /tmp/refiner/model --heldout .devdata/refiner/heldout.npz \
  --out "$out/refined.npz" --speed-out "$out/speed.json" --speed-batch-sizes 512 2048 --repeats 1
