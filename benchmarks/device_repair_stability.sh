#!/usr/bin/env bash
# The repairing refiner's stability check on the GPU machine: the same samples, LLM-only vs refined, relaxed
# with SevenNet-0 (batched FIRE, <= 1500 steps, fmax 0.05); no hull build (the shipped hull v1 scores them locally).
#   carry [".whl", "$S"] (.dev/ is gitignored: carry names it); command: bash benchmarks/device_repair_stability.sh
#   CPU variant: carry [".whl", ".dev/s25cpu"] (the first 200 ids), command: CPU=1 S=.dev/s25cpu bash benchmarks/device_repair_stability.sh
# Inputs: $S/llm.jsonl.xz, $S/refined.jsonl.xz (S=.dev/s25). Outputs relaxed_{llm,refined}/relaxed.jsonl, gpu.csv, log.txt;
# each output resumes (copy what came back into $S/out/ before the next call). LIMIT (s) caps each relaxation.
# CPU=1: CPU cores only (the issue's "relaxed on CPU, capped steps"): ASE FIRE per crystal, <= STEPS (200) steps,
# half the cores per arm, no GPU; any many-core machine (400 relaxations are ~15 h on the 2 shared dev cores).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
mkdir -p /tmp/ns/xtallm
for p in tokenization llm refiner pipelines configs; do ln -sfn "$PWD/$p" "/tmp/ns/xtallm/$p"; done
export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
S=${S:-.dev/s25}; X="python3 -m xtallm.pipelines.cli"; LIMIT=${LIMIT:-520}; LOGS=/tmp/logs; mkdir -p "$OUT" $LOGS
cp -r $S/out/relaxed_* "$OUT"/ 2>/dev/null || true  # partial outputs of an earlier call: resumed
if [ "${CPU:-0}" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
  ARGS="--device cpu --engine ase --workers $(( $(nproc) / 2 )) --relax-steps ${STEPS:-200}"
  echo "$(nproc) CPU cores:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $ARGS"
  sleep 1 & monitor=$!
else
  ARGS="--engine batched --relax-steps 1500 --batch-atoms ${BATCH_ATOMS:-6000}"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 10 > "$OUT/gpu.csv" &
  monitor=$!
fi
start=$(date +%s)
for set in llm refined; do
  timeout $LIMIT $X relax $S/$set.jsonl.xz --out "$OUT/relaxed_$set" --mlff sevennet $ARGS --fmax 0.05 \
    > "$LOGS/relax_$set.txt" 2>&1 &
done
wait $(jobs -p | grep -v "^$monitor$")
kill $monitor 2>/dev/null
echo "wall $(( $(date +%s) - start )) s"
rm -f "$OUT"/*/*.lock
for f in "$OUT"/*/*.jsonl; do echo "$f $(wc -l < "$f") lines"; done
for f in $LOGS/*.txt; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v "^$" | tail -n 2; done > "$OUT/log.txt"
grep -i -B2 "error\|traceback" $LOGS/*.txt | head -40 >> "$OUT/log.txt"
tail -n 40 "$OUT/log.txt"
