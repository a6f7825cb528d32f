"""Formation-energy conditioning, measured with the MLFF: requested vs achieved eV/atom.

    python benchmarks/bench_formation_energy.py --work runs/fe15 [--n 120] [--relax-steps 1500] [--device cpu]

1. N requests `dim=3 formation_energy=E`, E drawn from the held-out MP-20 crystals (mp20-heldout-v1, seed 15);
2. `xtallm generate --conditions-file` with the shipped default pipeline, one sample per request;
3. `xtallm relax` (SevenNet-0, batched FIRE) and `xtallm evaluate --hull configs/data/hull_sevennet_v1.csv.xz`:
   achieved = relaxed energy (MP2020-corrected) minus the elemental references of the same potential.
The baseline is the same samples scored against shuffled requests (the mean over 200 permutations): the gap
between the two MAEs is what the condition does. Every step resumes. Writes benchmarks/results/formation_energy_conditioning_<steps>.json.
On a 2-core CPU, relaxing 120 crystals takes hours (SevenNet-0 ~6 steps/s): `--relax-steps 0 --engine ase` scores the
generated structures' single points instead (say so with the figure); the GPU machine runs the real thing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def xtallm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "xtallm.pipelines.cli", *args], check=True, cwd=REPO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/fe15")
    parser.add_argument("--reference", default=".devdata/ref/mp20-heldout-v1.csv.gz",
                        help="held-out crystals with formation_energy_per_atom (python -m xtallm.pipelines.training_data build)")
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--relax-steps", type=int, default=1500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--subsample", type=int, default=0, help="relax a random N of the samples only (0: all)")
    parser.add_argument("--engine", default="auto", help="relax engine: auto (batched on a GPU), ase (one by one: the CPU's choice)")
    parser.add_argument("--out", help="results file (default: benchmarks/results/formation_energy_conditioning_<steps>.json)")
    args = parser.parse_args()
    work = REPO / args.work
    work.mkdir(parents=True, exist_ok=True)
    conditions = work / "conditions.csv"
    if not conditions.exists():
        held_out = pd.read_csv(REPO / args.reference).sample(args.n, random_state=15)
        pd.DataFrame({"dim": 3, "formation_energy": held_out.formation_energy_per_atom.round(3).to_numpy()}).to_csv(conditions, index=False)
    started = time.perf_counter()
    xtallm("generate", "--conditions-file", str(conditions), "--num-samples", "1", "--out", str(work / "gen"))
    tag = f"{args.relax_steps}" + (f"_sub{args.subsample}" if args.subsample else "")
    relaxed, scored = work / f"relaxed_{tag}.jsonl", work / f"eval_{tag}"
    sub = ["--subsample", str(args.subsample)] if args.subsample else []
    xtallm("relax", str(work / "gen" / "samples.jsonl"), "--relax-steps", str(args.relax_steps), "--device", args.device,
           "--engine", args.engine, *sub, "--out", str(relaxed))
    xtallm("evaluate", str(work / "gen" / "samples.jsonl"), "--reference", str(REPO / args.reference), "--no-coverage",
           "--hull", "configs/data/hull_sevennet_v1.csv.xz", "--mlff", "sevennet", "--relaxed", str(relaxed),
           "--num-proc", "2", "--out", str(scored))
    metrics = json.loads((scored / "metrics.json").read_text())
    details = pd.read_csv(scored / "stability.csv").dropna(subset=["formation_energy_per_atom"])
    samples = {json.loads(line)["id"]: json.loads(line) for line in (work / "gen" / "samples.jsonl").read_text().splitlines()}
    requested = np.array([float(samples[i]["conditions"]["formation_energy"]) for i in details["id"]])
    achieved = details["formation_energy_per_atom"].to_numpy()
    rng = np.random.default_rng(0)
    shuffled = [float(np.mean(np.abs(rng.permutation(requested) - achieved))) for _ in range(200)]
    result = {
        "what": "formation-energy conditioning of the shipped default, SevenNet-0 relaxed energy minus its elemental references",
        "n_requests": args.n, "n_scored": int(len(details)), "relax_steps": args.relax_steps, "subsample": args.subsample,
        "conditioning": metrics.get("formation_energy_conditioning"),
        "mae": float(np.mean(np.abs(requested - achieved))),
        "within_0.1": float(np.mean(np.abs(requested - achieved) <= 0.1)),
        "mae_shuffled_requests": float(np.mean(shuffled)),
        "pearson_r": float(np.corrcoef(requested, achieved)[0, 1]) if len(details) > 2 else None,
        "requested_mean": float(requested.mean()), "achieved_mean": float(achieved.mean()),
        "validity": metrics.get("validity"), "seconds": round(time.perf_counter() - started, 1),
        "engine": args.engine,
        "command": f"python benchmarks/bench_formation_energy.py --work {args.work} --n {args.n} --relax-steps {args.relax_steps} --subsample {args.subsample} --device {args.device} --engine {args.engine}",
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out or HERE / "results" / f"formation_energy_conditioning_{tag}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
