"""Issue 7's evaluation of the embedded default: LLM only vs LLM + refiner, on the same samples.

    python benchmarks/bench_default_model.py generate --work runs/eval7 --num-samples 1000       # CPU: xtallm generate
    python benchmarks/bench_default_model.py stability-inputs --work runs/eval7 --subsample 100  # CPU: what the GPU relaxes
    # GPU machine (pymatgen, ase, sevenn, moyopy: `python benchmarks/device_wheels.py`, carry .whl):
    python3 -m pipelines.cli hull build --structures runs/eval7/known.csv --relax-steps 0 --workers 14 --device cuda --out $OUT/hull.csv
    python3 -m pipelines.cli relax runs/eval7/relax_llm.jsonl --workers 15 --relax-steps 250 --device cuda --out $OUT/relaxed_llm.jsonl
    python3 -m pipelines.cli relax runs/eval7/relax_refined.jsonl --workers 15 --relax-steps 250 --device cuda --out $OUT/relaxed_refined.jsonl
    python benchmarks/bench_default_model.py evaluate --work runs/eval7 --stability DIR   # CPU: xtallm evaluate x 2
    python benchmarks/bench_default_model.py report --work runs/eval7                     # Markdown table + JSON

`generate` writes WORK/gen/llm/samples.jsonl (the LM's samples, constrained decoding) and
WORK/gen/samples.jsonl (the same ids refined). Both sets are scored against the held-out split
mp20-heldout-v1 with novelty against every bulk training row and MP-20's train metadata; the
stability subsample is one seeded set of ids, relaxed in both versions.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
REF = ROOT / ".devdata" / "ref"
SETS = {"llm": "gen/llm/samples.jsonl", "refined": "gen/samples.jsonl"}
RESULTS = ROOT / "benchmarks" / "results"


def generate(args) -> None:
    t = time.perf_counter()
    cmd = ["xtallm", "generate", "--num-samples", str(args.num_samples), "--out", str(Path(args.work) / "gen"),
           "--condition", "dim=3", "--seed", str(args.seed)] + (["--model", args.model] if args.model else [])
    subprocess.run(cmd, check=True)
    (Path(args.work) / "generate_seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - t, "command": " ".join(cmd)}))


def stability_inputs(args) -> None:
    """One seeded id subset present (with a CIF) in both sets, and the known crystals of their chemical systems."""
    import numpy as np
    import pandas as pd

    from xtallm.pipelines.samples import read_jsonl as read_samples


    work = Path(args.work)
    rows = {name: {r["id"]: r for r in read_samples(work / path)} for name, path in SETS.items()}
    systems_of = {}
    for i in sorted(rows["llm"]):  # ids whose CIF pymatgen reads in both sets
        try:
            systems_of[i] = {frozenset(e.symbol for e in _structure(rows[name][i]["cif"]).composition.elements) for name in SETS}
        except Exception:
            continue
    common = sorted(systems_of)
    chosen = sorted(np.random.default_rng(args.seed).choice(common, min(args.subsample, len(common)), replace=False).tolist())
    systems = set().union(*(systems_of[i] for i in chosen))
    for name in SETS:
        with open(work / f"relax_{name}.jsonl", "w") as f:
            for i in chosen:
                f.write(json.dumps(rows[name][i]) + "\n")
    # known crystals: MP-20 (train_partial + val) and MPTS-52 (val + test), all Materials Project entries
    parts = []
    for path in ("mp20/train_partial.csv.xz", "mp20/val.csv.xz", "mpts52/val.csv.xz", "mpts52/test.csv.xz"):
        table = pd.read_csv(DATA / path)[["material_id", "cif"]]
        elements = [frozenset(el.split("[")[0] for el in re.findall(r"[A-Z][a-z]?", _formula_sum(c))) for c in table.cif]
        parts.append(table[[any(k <= s for s in systems) for k in elements]])
    known = pd.concat(parts).drop_duplicates("material_id")
    known.to_csv(work / "known.csv", index=False)
    print(f"{len(chosen)} ids in both sets -> relax_llm.jsonl, relax_refined.jsonl; {len(known)} known MP crystals "
          f"(MP-20 + MPTS-52) in their {len(systems)} chemical systems -> known.csv")


def _formula_sum(cif: str) -> str:
    """The CIF's _chemical_formula_sum (every table here writes it), without parsing the structure."""
    match = re.search(r"_chemical_formula_sum\s+'?([^'\n]+)'?", cif)
    return match.group(1) if match else _structure(cif).composition.formula


def _structure(cif: str):
    import warnings

    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def evaluate(args) -> None:
    work = Path(args.work)
    stab = Path(args.stability) if args.stability else None
    for name, path in SETS.items():
        cmd = ["xtallm", "evaluate", str(work / path), "--reference", str(REF / "mp20-heldout-v1.csv.gz"),
               "--train", str(REF / "train_bulk.csv.gz"), "--train-meta", str(REF / "train_meta_mp20.csv.gz"),
               "--num-proc", str(args.num_proc), "--out", str(work / f"eval_{name}")]
        if stab is not None:
            cmd += ["--hull", str(stab / "hull.csv"), "--relaxed", str(stab / f"relaxed_{name}.jsonl")]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"{name}: evaluated in {time.perf_counter() - t:.0f} s")


KEYS = ["n_samples", "parse_rate", "struct_validity", "comp_validity", "validity", "uniqueness", "novelty", "cov_recall",
        "cov_precision", "wdist_density", "wdist_n_elements", "sg_jsd", "p1_rate", "wyckoff_jsd", "stable_rate",
        "metastable_rate", "sun_rate", "msun_rate", "n_relaxed"]


def report(args) -> None:
    work = Path(args.work)
    metrics = {name: json.loads((work / f"eval_{name}" / "metrics.json").read_text()) for name in SETS}
    gen = json.loads((work / "generate_seconds.json").read_text()) if (work / "generate_seconds.json").exists() else {}
    lines = ["| metric | LLM only | LLM + refiner |", "|---|---|---|"]
    for key in KEYS:
        values = [metrics[name].get(key) for name in SETS]
        if all(v is None for v in values):
            continue
        lines.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values) + " |")
    table = "\n".join(lines)
    out = {"metrics": {n: {k: metrics[n].get(k) for k in KEYS} for n in SETS}, "generate": gen,
           "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(out, indent=1))
    (work / "report.md").write_text(table + "\n")
    print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    for name, func in (("generate", generate), ("stability-inputs", stability_inputs), ("evaluate", evaluate), ("report", report)):
        s = sub.add_parser(name)
        s.add_argument("--work", default="runs/eval7")
        s.add_argument("--seed", type=int, default=0)
        s.set_defaults(func=func)
        if name == "generate":
            s.add_argument("--num-samples", type=int, default=1000)
            s.add_argument("--model", default=None, help="LM folder (default: the embedded one)")
        if name == "stability-inputs":
            s.add_argument("--subsample", type=int, default=100)
        if name == "evaluate":
            s.add_argument("--stability", default=None, help="folder with hull.csv, relaxed_llm.jsonl, relaxed_refined.jsonl")
            s.add_argument("--num-proc", type=int, default=2)
        if name == "report":
            s.add_argument("--results", default="default_model_eval", help="benchmarks/results/<name>.json")
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
