"""How right are the property predictors? Each one against the DFT value on the held-out split (issue 29).

    xtallm data reference mp20-heldout-v1 --data ../shared/data --out heldout/      # the split's structures + DFT columns
    python benchmarks/bench_property_predictors.py --reference heldout/mp20-heldout-v1-reference.csv.xz \
        --out benchmarks/results/property_predictors.json --ship configs/data/property_predictors.json

For band gap and formation energy (CGCNN, pipelines/evaluation/properties.py): MAE, RMSE, the MAE of predicting
the split's mean (the no-skill floor), metal / non-metal agreement, on every held-out crystal (or the first --limit).
Exact predictors (density, HHI, atom count) need no check. `--ship` writes the figures `xtallm evaluate` reports
beside every property-request figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from xtallm.pipelines.evaluation.context import cif_column
from xtallm.pipelines.evaluation.properties import PREDICTORS
from xtallm.pipelines.samples import read_cif

TRUTH = {"band_gap": "band_gap", "formation_energy": "formation_energy_per_atom"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="held-out table with a cif column and the DFT columns")
    parser.add_argument("--split", default="mp20-heldout-v1", help="the split's name, recorded with the figures")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ship", default=None, help="also write the figures evaluation reports (configs/data/property_predictors.json)")
    args = parser.parse_args()
    table = pd.read_csv(args.reference)
    if args.limit:
        table = table.head(args.limit)
    structures = [read_cif(c) if isinstance(c, str) else None for c in table[cif_column(table, args.reference)]]
    result = {"date": time.strftime("%Y-%m-%d"), "split": args.split, "reference": args.reference, "predictors": {}}
    for key, column in TRUTH.items():
        started = time.perf_counter()
        predicted = PREDICTORS[key].predict(structures, [3] * len(structures))
        seconds = time.perf_counter() - started
        rows = [(p, float(t)) for p, t in zip(predicted, table[column]) if p is not None and pd.notna(t)]
        pred, true = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        entry = {
            "n": len(rows), "mae": float(np.abs(pred - true).mean()), "rmse": float(np.sqrt(((pred - true) ** 2).mean())),
            "mae_of_the_mean": float(np.abs(true - true.mean()).mean()), "unit": PREDICTORS[key].unit,
            "source": PREDICTORS[key].source, "seconds": round(seconds, 1), "split": args.split,
        }
        if key == "band_gap":
            entry["metal_agreement"] = float(((pred == 0) == (true < 1e-6)).mean())
            entry["mae_non_metals"] = float(np.abs(pred - true)[true >= 1e-6].mean())
        result["predictors"][key] = entry
        print(f"{key}: MAE {entry['mae']:.3f} {entry['unit']} on {entry['n']} ({args.split}; predicting the mean: "
              f"{entry['mae_of_the_mean']:.3f}), {seconds:.0f} s", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.ship:
        Path(args.ship).write_text(json.dumps({"note": "written by benchmarks/bench_property_predictors.py", **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
