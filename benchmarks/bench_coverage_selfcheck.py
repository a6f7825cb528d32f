"""Coverage of real crystals against other real crystals: the known answer under each protocol.

    python benchmarks/bench_coverage_selfcheck.py --data ../shared/data [--n 0] [--num-proc 2]

Fingerprints every crystal of MP-20 val once (CrystalNN "ops" + Magpie, as `xtallm evaluate`), shuffles
(seed 0), takes the first half as samples and the second as the reference, and scores coverage under
CDVAE's protocol (every sample with a fingerprint; `xtallm evaluate`'s default) and the valid-only variant.
An independent run of CDVAE's own code on 1,000 vs 8,046 real crystals gave COV-P 0.996 / COV-R 0.972.

Writes benchmarks/results/coverage_selfcheck.json and the fingerprints to
tests/fixtures/mp20_val_fingerprints.npz, which tests/test_coverage.py scores again (after re-fingerprinting a
few crystals to check the file is what today's code computes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The shuffled index halves: samples first, reference second."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the team's shared/data folder")
    parser.add_argument("--n", type=int, default=0, help="use the first N crystals of MP-20 val (0: all 9,047)")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--fingerprints", default=str(HERE.parent / "tests" / "fixtures" / "mp20_val_fingerprints.npz"))
    parser.add_argument("--out", default=str(HERE / "results" / "coverage_selfcheck.json"))
    args = parser.parse_args()

    from pymatgen.core import Structure

    from xtallm.pipelines.evaluation import coverage as C
    from xtallm.pipelines.evaluation import metrics as M

    df = pd.read_csv(Path(args.data) / "mp20" / "val.csv.xz")
    if args.n:
        df = df.head(args.n)
    started = time.perf_counter()
    structures = [Structure.from_str(c, fmt="cif") for c in df.cif]
    struct_fp, comp_fp = C.fingerprints(structures, args.num_proc, desc="fingerprinting MP-20 val")
    valid = np.array([M.structurally_valid(s) and M.compositionally_valid(s.composition) for s in structures])
    seconds = time.perf_counter() - started
    np.savez_compressed(args.fingerprints, struct=struct_fp.astype(np.float32), comp=comp_fp.astype(np.float32),
                        valid=valid, material_id=df.material_id.to_numpy(dtype=str),
                        version=np.array(C.FINGERPRINT_VERSION))

    samples, reference = halves(len(df))
    cut = C.cutoffs("mp20")
    cdvae = C.coverage(struct_fp[samples], comp_fp[samples], struct_fp[reference], comp_fp[reference], len(samples), *cut)
    keep = samples[valid[samples]]
    only_valid = C.coverage(struct_fp[keep], comp_fp[keep], struct_fp[reference], comp_fp[reference], len(samples), *cut)
    result = {
        "what": "MP-20 val in halves (shuffled, seed 0): real crystals as samples vs real crystals as reference",
        "n_samples": int(len(samples)), "n_reference": int(len(reference)),
        "validity_of_samples": round(float(valid[samples].mean()), 4),
        "cdvae_protocol": {"cov_recall": cdvae["cov_recall"], "cov_precision": cdvae["cov_precision"]},
        "valid_only": {"cov_recall": only_valid["cov_recall"], "cov_precision": only_valid["cov_precision"]},
        "cutoffs": list(cut), "fingerprint_seconds": round(seconds, 1),
        "command": f"python benchmarks/bench_coverage_selfcheck.py --data {args.data} --n {args.n} --num-proc {args.num_proc}",
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
