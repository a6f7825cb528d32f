#!/usr/bin/env bash
# Issue 15's stability run on the GPU machine (Python 3.12, torch; the rest travels in .whl):
#   carry [".whl", ".dev/s15"]; command: bash benchmarks/device_stability.sh
# 1. the reference hull: SevenNet-0 single points of known bulk crystals, one process per table
#    .dev/s15/known_*.csv.xz (benchmarks/stability_inputs.py writes them);
# 2. the samples relaxed (batched FIRE, <= 1500 steps, fmax 0.05): refined.jsonl.xz, llm.jsonl.xz;
# 3. with SUBSET=1, convergence: known_subset.csv.xz relaxed with 1500 steps;
# 4. with .dev/s15/fe_gen.jsonl present (bench_formation_energy.py's generated samples), those relaxed too.
# BATCH_ATOMS (default 6000) sets the atoms per model call of the sample relaxations; GPU use is logged to gpu.csv.
# Each output resumes (rows already there are skipped); at most 8 files come back.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
mkdir -p /tmp/ns/xtallm
for p in tokenization llm refiner pipelines configs; do ln -sfn "$PWD/$p" "/tmp/ns/xtallm/$p"; done
export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
S=${S:-.dev/s15}; X="python3 -m xtallm.pipelines.cli"; LIMIT=${LIMIT:-540}; LOGS=/tmp/logs; mkdir -p "$OUT" $LOGS
cp $S/out/* "$OUT"/ 2>/dev/null || true  # partial outputs of an earlier call: resumed
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 10 > "$OUT/gpu.csv" &
monitor=$!
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
start=$(date +%s)
for f in $S/known_*.csv.xz $S/rest_*.csv.xz; do
  [ -e "$f" ] || continue
  name=$(basename "$f" .csv.xz)
  timeout $LIMIT $X hull build --structures "$f" --relax-steps 0 --out "$OUT/hull_$name" > "$LOGS/hull_$name.txt" 2>&1 &
done
for set in refined llm; do
  [ -e $S/$set.jsonl.xz ] && timeout $LIMIT $X relax $S/$set.jsonl.xz --out "$OUT/relaxed_$set" --relax-steps 1500 \
    --batch-atoms "${BATCH_ATOMS:-6000}" > "$LOGS/relax_$set.txt" 2>&1 &
done
[ -e $S/fe_gen.jsonl ] && timeout $LIMIT $X relax $S/fe_gen.jsonl --out "$OUT/relaxed_fe_1500" --relax-steps 1500 \
  > "$LOGS/relax_fe.txt" 2>&1 &
if [ "${SUBSET:-0}" = 1 ]; then
  timeout $LIMIT $X hull build --structures $S/known_subset.csv.xz --relax-steps 1500 --no-elements \
    --out "$OUT/hull_subset_relaxed" > "$LOGS/subset.txt" 2>&1 &
fi
wait $(jobs -p | grep -v "^$monitor$")
kill $monitor
echo "wall $(( $(date +%s) - start )) s"
for f in "$OUT"/*/*.jsonl "$OUT"/*/*.csv; do [ -e "$f" ] && echo "$f $(wc -l < "$f") lines"; done
rm -f "$OUT"/*/*.lock
for f in $LOGS/*.txt; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v "^$" | tail -n 2; done > "$OUT/log.txt"
grep -i -B2 "error\|traceback" $LOGS/*.txt | head -40 >> "$OUT/log.txt"
cat "$OUT/log.txt" | tail -n 40
