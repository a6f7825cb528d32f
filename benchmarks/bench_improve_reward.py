"""Does `xtallm improve`'s cheap reward rank samples as a relaxation does? The reward's e_hull of refined crystals
(a single point, or `--relax-steps K` capped FIRE steps, as `score.relax_steps`) against their relaxed e_hull (the
same samples, the same potential, correction and hull).

    python benchmarks/bench_improve_reward.py --samples .dev/s25cpu/refined.jsonl.xz \
        --relaxed-eval .dev/s25cpu/eval_refined --out benchmarks/results/improve_reward_single_point.json
    python benchmarks/bench_improve_reward.py ... --relax-steps 10 --engine batched --out benchmarks/results/improve_reward_relax10.json

`--relaxed-eval`: an `xtallm evaluate --relaxed ... --hull` output (its stability.csv holds each sample's relaxed
e_above_hull). Prints and writes: Spearman's rho over the samples with both values, and for every pair of samples
whose single points differ by at least the recipe's energy margin, the share the relaxation orders the same way
(what a preference pair built from single points gets right).
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import combinations
from pathlib import Path

import pandas as pd

from xtallm.llm.preference import PairOptions
from xtallm.pipelines.improve import ScoreOptions, Scorer
from xtallm.pipelines.samples import read_samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, help="refined samples (JSONL)")
    parser.add_argument("--relaxed-eval", required=True, help="xtallm evaluate output folder with stability.csv")
    parser.add_argument("--margin", type=float, default=PairOptions().energy_margin)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--relax-steps", type=int, default=0, help="the reward's capped FIRE steps (0: single points)")
    parser.add_argument("--engine", default="batched", help="as `xtallm relax --engine`")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    relaxed = pd.read_csv(Path(args.relaxed_eval) / "stability.csv").set_index("id")["e_above_hull"].dropna()
    scorer = Scorer(ScoreOptions(device=args.device, relax_steps=args.relax_steps, engine=args.engine))
    started = time.perf_counter()
    rows, items = {}, []
    for sample in read_samples(args.samples):
        if sample.id in relaxed.index:
            row, structure = scorer.prescreen(sample)
            if structure is not None:
                rows[sample.id] = row
                items.append((sample.id, structure, sample.dim or 3))
    single = {}
    for key, relaxation in scorer.energies(items):
        row = scorer.finish(rows[key], relaxation)
        if row["e_above_hull"] is not None:
            single[key] = row["e_above_hull"]
    seconds = time.perf_counter() - started
    ids = sorted(single)
    a, b = pd.Series([single[i] for i in ids]), pd.Series([relaxed[i] for i in ids])
    pairs = [(i, j) for i, j in combinations(ids, 2) if abs(single[i] - single[j]) >= args.margin]
    same = sum((single[i] - single[j]) * (relaxed[i] - relaxed[j]) > 0 for i, j in pairs)
    result = {
        "date": time.strftime("%Y-%m-%d"), "samples": args.samples, "relaxed_eval": args.relaxed_eval, "n": len(ids),
        "spearman_rho": float(a.rank().corr(b.rank())),
        "single_point_median": float(a.median()), "relaxed_median": float(b.median()),
        "single_point_metastable": int((a <= 0.1).sum()), "relaxed_metastable": int((b <= 0.1).sum()),
        "margin": args.margin, "pairs_at_margin": len(pairs), "pairs_ordered_as_relaxed": same / len(pairs) if pairs else None,
        "reward_relax_steps": args.relax_steps, "engine": args.engine, "reward_seconds": round(seconds, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
