"""Issue 15's stability table from the evaluations of one sample set, with the hull's convergence check.

    python benchmarks/bench_stability_report.py --work runs/eval15 [--subset runs/device15_call1/hull_subset_relaxed.csv]

Reads `<work>/results/eval_{llm,refined}/metrics.json` + `stability.csv` (all 1,000 samples) and, where present,
`<work>/first500/eval_{llm,refined}` (the first 500 samples, every valid one relaxed) (written by `xtallm evaluate
... --hull configs/data/hull_sevennet_v1.csv.xz --relaxed ... --hull-anchor ...`) and writes
benchmarks/results/stability_v1.json: the rates over all samples as `xtallm evaluate` reports them
(valid samples that finished relaxing stand for all valid ones), a lower bound that counts every valid
sample of the relaxed id range that did not finish as not (meta)stable, and the hull's single-point
check (known crystals relaxed with 1,500 steps against their single points).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

RATES = ("stable_rate", "metastable_rate", "sun_rate", "msun_rate")


def lower_bounds(evaluation: Path, samples: Path) -> dict:
    """Rates counting unfinished relaxations (valid samples at ids up to the last relaxed one) as failures."""
    details = pd.read_csv(evaluation / "stability.csv")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    relaxed = {str(i) for i in details["id"]}
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    last = max(int(i.split("-")[1]) for i in relaxed)
    n = metrics["n_samples"]
    in_range = [r for r in rows if int(r["id"].split("-")[1]) <= last]
    share_valid = metrics["n_valid"] / n
    # valid samples in range ~ share_valid x rows in range (validity is not stored per row)
    expected_valid = share_valid * len(in_range)
    out = {"last_id_index": last, "rows_in_range": len(in_range), "valid_relaxed": int(len(details)),
           "expected_valid_in_range": round(expected_valid, 1)}
    for key, limit in (("stable_rate", 0.0), ("metastable_rate", 0.1)):
        hits = int((details["e_above_hull"] <= limit).sum())
        out[f"{key}_lower_bound"] = hits / expected_valid * share_valid
    for key, limit in (("sun_rate", 0.0), ("msun_rate", 0.1)):
        hits = int(((details["e_above_hull"] <= limit) & details["unique"] & details["novel"]).sum())
        out[f"{key}_lower_bound"] = hits / expected_valid * share_valid
    return out


def hull_gaps(evaluation: Path, relaxations: Path, hull: str) -> dict:
    """How far the hull is from complete for these samples (the evaluation's diagnostics, for runs made before them)."""
    from pymatgen.core import Composition

    from xtallm.pipelines.evaluation.stability import FAR_BELOW_HULL, Hull

    details = pd.read_csv(evaluation / "stability.csv")
    relaxed = {}
    for line in relaxations.read_text().splitlines():
        row = json.loads(line)
        relaxed[row["id"]] = row
    comps = []
    for i in details["id"]:
        cif = relaxed.get(i, {}).get("relaxed_cif") or ""
        formula = next((ln.split(None, 1)[1] for ln in cif.splitlines() if ln.startswith("_chemical_formula_sum")), None)
        if formula:
            comps.append(Composition(formula.strip("'\"")))
    e = details["e_above_hull"].dropna()
    stable = e[e <= 0]
    return {"hull_binary_coverage": Hull(hull).binary_systems_covered(comps), "n_compositions": len(comps),
            "n_far_below_hull": int((e < FAR_BELOW_HULL).sum()), "n_stable": int(len(stable)),
            "n_stable_within_0.1_below": int((stable >= FAR_BELOW_HULL).sum())}


def convergence(subset: Path, hull: Path) -> dict:
    sub = pd.read_csv(subset)
    ref = pd.read_csv(hull).set_index("id")
    sub = sub[sub["energy_corrected"].notna() & sub["id"].isin(ref.index[ref["energy_corrected"].notna()])]
    d = (sub["energy_corrected"].values - ref.loc[sub["id"], "energy_corrected"].values) / sub["n_atoms"].values
    groups = {"mp20+mpts52+wbm (in the hull)": ~sub["source"].str.startswith(("perov5", "carbon24")).values,
              "perov_5+carbon_24 (left out of the hull)": sub["source"].str.startswith(("perov5", "carbon24")).values}
    out = {"n": int(len(sub)), "relax_steps": 1500, "median_steps": float(sub["steps"].median())}
    for name, m in groups.items():
        x = d[m]
        out[name] = {"n": int(m.sum()), "median_eV_per_atom": float(np.median(x)), "share_within_0.01": float(np.mean(x > -0.01)),
                     "share_within_0.025": float(np.mean(x > -0.025)), "share_within_0.05": float(np.mean(x > -0.05)),
                     "min": float(x.min())}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/eval15")
    parser.add_argument("--subset", default="runs/device15_call1/hull_subset_relaxed.csv")
    parser.add_argument("--hull", default="runs/s15/hull_sevennet_all_sources.csv.xz")
    parser.add_argument("--shipped-hull", default="configs/data/hull_sevennet_v1.csv.xz")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "stability_v1.json"))
    args = parser.parse_args()
    work = Path(args.work)
    keys = ("n_samples", "parse_rate", "struct_validity", "comp_validity", "validity", "uniqueness", "novelty", "cov_recall",
            "cov_precision", "cov_recall_valid", "cov_precision_valid", "wdist_density", "wdist_n_elements", "sg_jsd", "p1_rate",
            "wyckoff_jsd", *RATES, *(f"{k}_mp_anchored" for k in RATES), "n_relaxed", "n_valid", "n_relax_failed", "hull_entries",
            "hull_chemsys_coverage", "stability_relax_steps")
    samples = {"refined": work / "samples.jsonl", "llm": work / "llm" / "samples.jsonl"}
    table: dict = {}
    for name in ("llm", "refined"):
        relaxations = work / "results" / f"relaxed_{name}.jsonl"
        # every sample of the 1,000; the valid ones that finished relaxing stand for all valid ones
        evaluation = work / "results" / f"eval_{name}"
        m = json.loads((evaluation / "metrics.json").read_text())
        table[name] = {k: m.get(k) for k in keys} | {"lower_bounds": lower_bounds(evaluation, samples[name]),
                                                     "hull_gaps": hull_gaps(evaluation, relaxations, args.shipped_hull)}
        # the first 500 samples, every valid one relaxed: exact rates, nothing extrapolated
        evaluation = work / "first500" / f"eval_{name}"
        if (evaluation / "metrics.json").exists():
            m = json.loads((evaluation / "metrics.json").read_text())
            table[f"{name}_first500"] = {k: m.get(k) for k in keys} | {
                "every_valid_sample_relaxed": m.get("n_relaxed") == m.get("n_valid"),
                "hull_gaps": hull_gaps(evaluation, relaxations, args.shipped_hull)}
    result = {"date": time.strftime("%Y-%m-%d"), "table": table, "hull_single_point_check": convergence(Path(args.subset), Path(args.hull)),
              "command": "python benchmarks/bench_stability_report.py --work " + args.work}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
