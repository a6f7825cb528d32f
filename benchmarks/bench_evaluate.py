"""Evaluation speed: the whole metric set (no stability) and MLFF relaxation throughput.

    python benchmarks/bench_evaluate.py metrics --n-samples 10000 --n-reference 9047 --num-proc 2
    python benchmarks/bench_evaluate.py relax --mlff sevennet --n 8 --steps 100 [--device cuda]

`metrics`: stand-in "samples" are real crystals (MP-20 train_partial first, then MPTS-52 val and
test), reference = MP-20 val (first N rows), train = MP-20 train_partial + train_meta (novelty).
The reference fingerprints, the reference's symmetry and the parsed reference and train tables are
computed once (timed separately) and then read from the cache, as in repeated evaluations. `relax`: MP-20 val crystals (<= 20 atoms), rattled by 0.05 Å and
strained by 3% so that FIRE has work to do, relaxed with FrechetCellFilter.
Prints the figures and writes benchmarks/results/evaluate_*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from itertools import islice
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("XTALLM_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"


def _machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": gpu, "torch": torch.__version__}


def _ray_start(address: str | None) -> float | None:
    """Seconds to join (or start) the cluster, paid once per command; None without Ray."""
    if not address:
        return None
    from xtallm.pipelines.parallel import Workers

    t = time.perf_counter()
    Workers(ray=address).parallel  # connects, and waits until the cluster answers
    return time.perf_counter() - t


def bench_metrics(args) -> dict:
    from xtallm.pipelines.evaluation import coverage as C
    from xtallm.pipelines.evaluation import evaluate

    parts = [pd.read_csv(DATA / "mp20/train_partial.csv.xz"), pd.read_csv(DATA / "mpts52/val.csv.xz"), pd.read_csv(DATA / "mpts52/test.csv.xz")]
    cifs = pd.concat([p[["cif"]] for p in parts]).cif.tolist()[: args.n_samples]
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    samples = work / "samples.jsonl"
    samples.write_text("".join(json.dumps({"id": f"s{i}", "ok": True, "cif": c, "group": None}) + "\n" for i, c in enumerate(cifs)))
    ref = work / "reference.csv"
    pd.read_csv(DATA / "mp20/val.csv.xz").head(args.n_reference).to_csv(ref, index=False)
    train = [str(DATA / "mp20/train_partial.csv.xz")]
    meta = [str(DATA / "mp20/train_meta_no_positions.csv.xz")]
    t = time.perf_counter()
    C.reference_fingerprints(ref, workers=args.num_proc)
    t_ref = time.perf_counter() - t
    # what repeated evaluations read from the cache: the reference's symmetry and the parsed reference and train tables
    from xtallm.pipelines.evaluation.context import CrystalTable

    t = time.perf_counter()
    CrystalTable.read(ref, args.num_proc).symmetry
    for table in train:
        CrystalTable.read(table, args.num_proc)
    t_warm = time.perf_counter() - t
    ray_start = _ray_start(args.ray)
    runs = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        r = evaluate(samples, ref, train, num_proc=args.num_proc, train_meta=meta, ray=args.ray)
        runs.append(time.perf_counter() - t)
    metrics = {k: r[k] for k in ("n_samples", "validity", "uniqueness", "novelty", "cov_recall", "cov_precision",
                                 "wdist_density", "sg_jsd", "p1_rate", "wyckoff_jsd")}
    out = {"what": "evaluate() without stability", "n_samples": len(cifs), "n_reference": args.n_reference,
           "num_proc": args.num_proc, "ray": args.ray, "ray_start_s": ray_start, "reference_fingerprints_s": t_ref,
           "cache_warmup_s": t_warm, "evaluate_s": runs,
           "stages_s": r["seconds"],
           "samples": "MP-20 train_partial, then MPTS-52 val, test", "metrics": metrics, "machine": _machine()}
    print(f"reference fingerprints ({args.n_reference} crystals, first run, cached after): {t_ref:.1f} s")
    print(f"evaluate {len(cifs)} samples vs {args.n_reference} references, {args.num_proc} processes: "
          + ", ".join(f"{x:.1f} s" for x in runs))
    print(json.dumps(metrics))
    return out


def bench_relax(args) -> dict:
    from pymatgen.core import Structure

    from xtallm.pipelines.evaluation import stability as S

    warnings.filterwarnings("ignore")
    source = DATA / "mp20/val.csv.xz"
    if not source.exists():  # e.g. on the GPU machine: the 64 MP-20 crystals shipped with xtallm
        source = ROOT / "tokenization/examples/bulk_examples.csv"
    df = pd.read_csv(source)
    df = df.sample(frac=1, random_state=0)  # a permutation: its first 200 rows are what sample(200, random_state=0) gave
    structures = list(islice((s for s in (Structure.from_str(c, fmt="cif") for c in df.cif) if len(s) <= 20), args.n))
    for s in structures:
        s.perturb(0.05)
        s.scale_lattice(s.volume * 1.03 ** 3)
    from xtallm.pipelines.evaluation.relax import relax_many

    device = args.device or S.default_device()
    if args.workers == 1:
        S.relax(structures[0].copy(), S.load_calculator(args.mlff, device), steps=3)  # warm-up (kernels, first graph)
    ray_start = _ray_start(args.ray)
    t = time.perf_counter()  # with workers, their start (one potential each) is inside the time
    items = [(i, s, 3) for i, s in enumerate(structures)]
    results = [r for _, r in relax_many(items, args.mlff, args.steps, args.fmax, device, args.workers, ray=args.ray)]
    elapsed = time.perf_counter() - t
    steps = sum(r.steps for r in results)
    out = {"mlff": args.mlff, "device": device, "workers": args.workers, "ray": args.ray, "ray_start_s": ray_start, "n": len(structures), "max_steps": args.steps, "fmax": args.fmax,
           "mean_atoms": sum(len(s) for s in structures) / len(structures), "seconds": elapsed,
           "structures_per_s": len(structures) / elapsed, "steps_per_s": steps / elapsed, "total_steps": steps,
           "converged": sum(r.converged for r in results), "failed": sum(r.error is not None for r in results),
           "machine": _machine()}
    print(f"{args.mlff} on {device}: {len(structures)} structures (mean {out['mean_atoms']:.1f} atoms), {steps} FIRE steps in "
          f"{elapsed:.1f} s -> {out['structures_per_s']:.3f} structures/s, {out['steps_per_s']:.1f} steps/s; "
          f"{out['converged']} converged (fmax {args.fmax}) within {args.steps} steps")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="case", required=True)
    m = sub.add_parser("metrics")
    m.add_argument("--n-samples", type=int, default=10000)
    m.add_argument("--n-reference", type=int, default=9047)
    m.add_argument("--num-proc", type=int, default=2)
    m.add_argument("--repeats", type=int, default=1)
    r = sub.add_parser("relax")
    r.add_argument("--mlff", choices=["sevennet", "chgnet"], default="sevennet")
    r.add_argument("--n", type=int, default=8)
    r.add_argument("--steps", type=int, default=100)
    r.add_argument("--fmax", type=float, default=0.05)
    r.add_argument("--device", default=None)
    r.add_argument("--workers", type=int, default=1, help="parallel relaxations (pipelines.relax), start-up included in the time")
    for parser in (m, r):
        parser.add_argument("--tag", default="", help="suffix of the results file name")
        parser.add_argument("--ray", default=None, help="a Ray cluster (auto: a local one on 127.0.0.1), as `--ray` of the commands")
    args = p.parse_args()
    out = bench_metrics(args) if args.case == "metrics" else bench_relax(args)
    out["command"] = " ".join(sys.argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"evaluate_{args.case}" + (f"_{args.mlff}_{out['device'].split(':')[0]}" if args.case == "relax" else f"_{args.n_samples}")
    path = RESULTS / f"{name}{args.tag}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
