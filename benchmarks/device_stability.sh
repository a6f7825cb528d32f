#!/usr/bin/env bash
# Issue 15's stability run on the GPU machine (Python 3.12, torch; the rest travels in .whl):
#   carry [".whl", ".dev/s15"]; command: bash benchmarks/device_stability.sh
# 1. the reference hull: SevenNet-0 single points of every known bulk crystal (3 shards in parallel);
# 2. the samples relaxed (FIRE <= 1500 steps, fmax 0.05, batched): the refined set, then the LLM-only set;
# 3. convergence: 300 random known crystals relaxed with 1500 steps (against their single points).
# Everything resumes: a second call that carries the partial outputs back in .dev/s15/out continues them.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
mkdir -p /tmp/ns/xtallm
for p in tokenization llm refiner pipelines configs; do ln -sfn "$PWD/$p" "/tmp/ns/xtallm/$p"; done
export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=3
S=.dev/s15; X="python3 -m xtallm.pipelines.cli"
mkdir -p "$OUT"; cp $S/out/* "$OUT"/ 2>/dev/null || true
LIMIT=${LIMIT:-540}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$(date +%s)
for i in 0 1 2; do
  timeout $LIMIT $X hull build --structures $S/known_$i.csv.xz --relax-steps 0 --out "$OUT/hull_sp_$i.csv" > "$OUT/log_hull_$i.txt" 2>&1 &
done
( timeout $LIMIT $X relax $S/refined.jsonl.xz --out "$OUT/relaxed_refined.jsonl" --relax-steps 1500
  timeout $((LIMIT - $(date +%s) + start)) $X relax $S/llm.jsonl.xz --out "$OUT/relaxed_llm.jsonl" --relax-steps 1500 ) > "$OUT/log_relax.txt" 2>&1 &
timeout $LIMIT $X hull build --structures $S/known_subset.csv.xz --relax-steps 1500 --no-elements --out "$OUT/hull_subset_relaxed.csv" > "$OUT/log_subset.txt" 2>&1 &
wait
echo "wall $(( $(date +%s) - start )) s"
for f in "$OUT"/*.csv "$OUT"/*.jsonl; do echo "$f $(wc -l < "$f") lines"; done
tail -n 3 "$OUT"/log_*.txt | tr '\r' '\n' | grep -v "^$" | tail -n 30
cat "$OUT"/log_*.txt | tr '\r' '\n' | grep -i "error\|traceback" | head -20
