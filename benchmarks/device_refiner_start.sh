#!/usr/bin/env bash
# Issue 25, sixth session: the shipped refiner on the degraded held-out crystals (bulk + monolayers), the chain as
# `xtallm refine` runs it (`--repair`: start levels, repulsion, polish), plausible crystals denoised from the input
# (start=input, level 0.45) against SDEdit from tau 0.2 (start=noise, the earlier default); same degradation seeds
# (batch 512) as the earlier GPU rows. Scoring (StructureMatcher) runs on the CPU machine.
# The repairing chain needs pyxtal's tolerance matrix: carry a trimmed copy (pyxtal/__init__.py empty + tolerance.py +
# database/element.py) at runs/device_refiner/pyx.
#   carry [".dev/whl_refiner", ".devdata/refiner", "runs/device_refiner/pyx"]; command: WHL=.dev/whl_refiner bash benchmarks/device_refiner_start.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHL:-.whl}/*.whl || exit 3
mkdir -p /tmp/ns/xtallm
for p in tokenization llm refiner pipelines configs; do ln -sfn "$PWD/$p" "/tmp/ns/xtallm/$p"; done
export PYTHONPATH=/tmp/site:/tmp/ns:$PWD/runs/device_refiner/pyx PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for start in input noise; do
  t0=$(date +%s)
  timeout 150 python3 benchmarks/bench_refiner.py run --checkpoint refiner/pretrained/xtallm-refiner --heldout .devdata/refiner/heldout.npz \
    --out "$OUT/refined_$start.npz" --taus 0.2 --skip-speed --repair --start $start > "$OUT/bench_$start.log" 2>&1
  echo "$start: rc $? $(( $(date +%s) - t0 )) s"
done
tail -n 3 "$OUT"/*.log
