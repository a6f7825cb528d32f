#!/usr/bin/env bash
# Issue 25, the refiner's start level (sixth session): on one GPU, the chain sweep on the degraded held-out crystals
# (bulk + monolayers) with the input noised first (SDEdit, as shipped) and taken as it is ("from input"), and the
# per-crystal level table (`bench_refiner.py levels`) for judging a start-level rule offline. Scores are array-space RMS.
#   carry [".dev/whl_refiner", ".devdata/refiner"]; command: WHL=.dev/whl_refiner bash benchmarks/device_refiner_levels.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHL:-.whl}/*.whl || exit 3
mkdir -p /tmp/ns/xtallm
for p in tokenization llm refiner pipelines configs; do ln -sfn "$PWD/$p" "/tmp/ns/xtallm/$p"; done
export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
C=refiner/pretrained/xtallm-refiner; H=.devdata/refiner/heldout.npz
t0=$(date +%s)
timeout 120 python3 benchmarks/bench_refiner.py levels --checkpoint $C --heldout $H --out "$OUT/levels.npz" > "$OUT/levels.log" 2>&1
echo "levels: rc $? $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
timeout 240 python3 benchmarks/bench_refiner.py sweep --checkpoint $C --heldout $H --out "$OUT/sweep200.json" --steps 200 \
  --taus 0.1 0.2 0.3 0.4 0.5 0.6 --settings "sde+corrector" "sde+corrector from input" "ode from input" "one step from input" > "$OUT/sweep200.log" 2>&1
echo "sweep 200: rc $? $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
timeout 120 python3 benchmarks/bench_refiner.py sweep --checkpoint $C --heldout $H --out "$OUT/sweep50.json" --steps 50 \
  --taus 0.2 0.3 0.4 0.5 --settings "sde+corrector" "sde+corrector from input" > "$OUT/sweep50.log" 2>&1
echo "sweep 50: rc $? $(( $(date +%s) - t0 )) s"
tail -n 3 "$OUT"/*.log
