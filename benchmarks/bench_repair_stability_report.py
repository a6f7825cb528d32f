"""The repairing refiner's stability check: the same samples, LLM-only vs refined, SevenNet-0 on the shipped hull v1.

    python benchmarks/bench_repair_stability_report.py --work .dev/s25 [--device "one NVIDIA H200"]      # 300, GPU, <= 1500 steps
    python benchmarks/bench_repair_stability_report.py --work .dev/s25cpu --cap 50 --relaxations runs/meta50 \
        --device "2-core CPU" --out benchmarks/results/refiner_repair_stability_cpu.json                 # 200, CPU, <= 50 steps

Reads what these wrote (commands in the output's `commands`):
- `<work>/{llm,refined}.jsonl.xz`: the first 300 ids of runs/repair/llm/uncond/samples.jsonl, both versions;
- `<work>/out/relaxed_{llm,refined}.jsonl`: `xtallm relax` on the GPU (benchmarks/device_repair_stability.sh);
- `<work>/eval_{llm,refined}/`: `xtallm evaluate --relaxed ... --hull configs/data/hull_sevennet_v1.csv.xz`.
Rates are `xtallm evaluate`'s: over all 300 samples, invalid ones (and failed relaxations) count as not stable.
Writes benchmarks/results/refiner_repair_stability.json.
"""

from __future__ import annotations

import argparse
import json
import lzma
import time
from math import comb
from pathlib import Path

import pandas as pd

from xtallm.pipelines.evaluation.relax import relaxed_file
from xtallm.pipelines.samples import read_jsonl

KEYS = ("n_samples", "validity", "struct_validity", "comp_validity", "uniqueness", "stable_rate", "metastable_rate", "n_valid",
        "n_relaxed", "n_relax_failed", "n_far_below_hull", "hull_entries", "hull_chemsys_coverage", "hull_binary_coverage",
        "stability_relax_steps")


def sign_test(a: int, b: int) -> float:
    """Two-sided exact binomial p of a vs b discordant pairs."""
    n, k = a + b, min(a, b)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def _relaxations(out: Path, arm: str) -> list[dict]:
    """`xtallm relax` rows of one arm: its output folder (`relaxed_<arm>/` or `<arm>/`), or the JSONL that earlier
    versions wrote (`relaxed_<arm>.jsonl`)."""
    for candidate in (out / f"relaxed_{arm}", out / arm, out / f"relaxed_{arm}.jsonl"):
        if candidate.exists():
            return list(read_jsonl(relaxed_file(candidate)))
    raise FileNotFoundError(f"{out}: no relaxations of the {arm} arm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=".dev/s25")
    parser.add_argument("--device", default="one NVIDIA H200 (143771 MiB), one call: both arms in parallel, 237 s wall "
                        "(relaxing 213 s LLM-only, 201 s refined), ~437 s of the session's device budget incl. start-up")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "refiner_repair_stability.json"))
    parser.add_argument("--cap", type=int, default=1500, help="the FIRE step cap the relaxations ran with")
    parser.add_argument("--relaxations", default=None, help="folder with both arms' `xtallm relax` outputs (default: WORK/out)")
    parser.add_argument("--refined", default="rep50", help="the refined variant's folder in runs/repair (bench_refiner_repair.py --name)")
    args = parser.parse_args()
    work = Path(args.work)
    with lzma.open(work / "llm.jsonl.xz", "rt") as f:
        ids = [json.loads(line)["id"] for line in f]
    arms, e_hull = {}, {}
    for arm in ("llm", "refined"):
        m = json.loads((work / f"eval_{arm}" / "metrics.json").read_text())
        details = pd.read_csv(work / f"eval_{arm}" / "stability.csv").set_index("id")
        e = e_hull[arm] = details["e_above_hull"].reindex(ids)
        relax = _relaxations(Path(args.relaxations) if args.relaxations else work / "out", arm)
        arms[arm] = {k: m.get(k) for k in KEYS} | {
            "n_stable": int((e <= 0).sum()), "n_metastable": int((e <= 0.1).sum()),
            "n_stable_within_0.1_below_hull": int(((e <= 0) & (e >= -0.1)).sum()),
            "median_e_above_hull_valid": float(e.median()),
            "relaxed_all_rows": {"n": len(relax), "failed": sum(bool(r.get("error")) for r in relax),
                                 "converged": sum(bool(r.get("converged")) for r in relax if not r.get("error")),
                                 "at_step_cap": sum(int(r.get("steps") or 0) >= args.cap for r in relax),
                                 "engine": sorted({r.get("engine") for r in relax}), "mlff": sorted({r.get("mlff") for r in relax})}}
    paired = {}
    for name, limit in (("stable", 0.0), ("metastable", 0.1)):
        a, b = e_hull["llm"] <= limit, e_hull["refined"] <= limit
        only_llm, only_refined = int((a & ~b).sum()), int((~a & b).sum())
        paired[name] = {"both": int((a & b).sum()), "llm_only": only_llm, "refined_only": only_refined,
                        "sign_test_p": round(sign_test(only_llm, only_refined), 4)}
    valid = {arm: set(pd.read_csv(work / f"eval_{arm}" / "stability.csv")["id"]) for arm in arms}
    new = sorted(valid["refined"] - valid["llm"])
    e_new = e_hull["refined"].loc[new]
    paired["valid_only_after_refining"] = {"n": len(new), "stable": int((e_new <= 0).sum()), "metastable": int((e_new <= 0.1).sum())}
    paired["valid_only_before_refining"] = len(valid["llm"] - valid["refined"])
    n, gpu = len(ids), args.relaxations is None
    if gpu:
        commands = [
            "python benchmarks/device_wheels.py --out .whl",
            "stage: first 300 ids of runs/repair/llm/uncond/samples.jsonl -> .dev/s25/llm.jsonl.xz, same ids of "
            f"runs/repair/{args.refined}/uncond/samples.jsonl -> .dev/s25/refined.jsonl.xz",
            "device (run tool, nvidia-h200, carry ['.whl']): LIMIT=500 bash benchmarks/device_repair_stability.sh",
            "xtallm evaluate .dev/s25/<arm>.jsonl.xz --reference heldout/mp20-heldout-v1-reference.csv.xz --no-coverage --num-proc 1 "
            "--hull configs/data/hull_sevennet_v1.csv.xz --mlff sevennet --relaxed .dev/s25/out/relaxed_<arm>.jsonl --out .dev/s25/eval_<arm>",
            "python benchmarks/bench_repair_stability_report.py --work .dev/s25"]
    else:
        commands = [
            f"stage: first {n} ids of runs/repair/llm/uncond/samples.jsonl -> {work}/llm.jsonl.xz, same ids of "
            f"runs/repair/{args.refined}/uncond/samples.jsonl -> {work}/refined.jsonl.xz",
            f"OMP_NUM_THREADS=1 xtallm relax {work}/<arm>.jsonl.xz --out {args.relaxations}/<arm> --mlff sevennet --engine batched "
            f"--device cpu --relax-steps {args.cap} --fmax 0.05 --batch-atoms 800   # both arms side by side, 1 thread each",
            f"xtallm evaluate {work}/<arm>.jsonl.xz --reference heldout/mp20-heldout-v1-reference.csv.xz --no-coverage --num-proc 2 "
            f"--hull configs/data/hull_sevennet_v1.csv.xz --mlff sevennet --relaxed {args.relaxations}/<arm> --out {work}/eval_<arm>",
            f"python benchmarks/bench_repair_stability_report.py --work {work} --cap {args.cap} --relaxations {args.relaxations} "
            f"--device ... --out {args.out}"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "samples": f"first {n} ids (file order) of runs/repair/llm/uncond/samples.jsonl (1,000 dim=3 samples, default model, "
                   f"constrained); refined = the same ids in runs/repair/{args.refined}/uncond/samples.jsonl (repairing refiner, 50 steps)",
        "protocol": {"mlff": "SevenNet-0 (sevenn 0.13.0), raw PBE scale + MaterialsProject2020Compatibility",
                     "relaxation": f"xtallm relax, batched FIRE + FrechetCellFilter on the {'GPU' if gpu else 'CPU'}, <= {args.cap} "
                                   "steps, fmax 0.05 eV/A, every row with a crystal relaxed (valid or not)"
                                   + ("" if gpu else "; a capped relaxation: e_hull is an upper bound, the rates lower bounds"),
                     "hull": "configs/data/hull_sevennet_v1.csv.xz (shipped v1, 30,985 entries, same potential and correction)",
                     "rates": f"xtallm evaluate: over all {n} samples; invalid samples and failed relaxations count as not stable; "
                              "stable e_hull <= 0, metastable <= 0.1 eV/atom",
                     "device": args.device},
        "arms": arms, "paired": paired, "commands": commands,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
