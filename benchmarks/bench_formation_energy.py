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


def relax_provenance(path: Path) -> dict:
    """What made the relaxations (rows written on another machine, e.g. the GPU one, are reused as they are)."""
    from collections import Counter

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [r["steps"] for r in rows if r.get("steps") is not None]
    return {"n": len(rows), "engines": dict(Counter(str(r.get("engine")) for r in rows)),
            "converged": sum(bool(r.get("converged")) for r in rows), "failed": sum(r.get("error") is not None for r in rows),
            "median_steps": float(np.median(steps)) if steps else None}


def plot(requested: np.ndarray, achieved: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    lo, hi = float(min(requested.min(), achieved.min())) - 0.2, float(max(requested.max(), achieved.max())) + 0.2
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="achieved = requested")
    ax.scatter(requested, achieved, s=12, alpha=0.7)
    ax.set(xlabel="requested formation energy (eV/atom)", ylabel="achieved, SevenNet-0 relaxed (eV/atom)", xlim=(lo, hi), ylim=(lo, hi))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    relaxed, scored = work / f"relaxed_{tag}", work / f"eval_{tag}"  # relax writes relaxed_{tag}/relaxed.jsonl
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
        "relaxations": relax_provenance(relaxed),
        "command": f"python benchmarks/bench_formation_energy.py --work {args.work} --n {args.n} --relax-steps {args.relax_steps} --subsample {args.subsample} --device {args.device} --engine {args.engine}",
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out or HERE / "results" / f"formation_energy_conditioning_{tag}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(requested, achieved, out.with_suffix(".png"))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
