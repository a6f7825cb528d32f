"""The improved model against its start, on the same prompts and seeds (issue 28).

    python benchmarks/bench_improve_final.py --start runs/table/default_11m --adapter runs/improve_cpu/round_2/adapter \
        --work runs/improve_final --n 200 --out benchmarks/results/improve_final_cpu.json

The start's samples are the model table's (benchmarks/bench_model_table.py: `dim=3` samples, seed 25, and 100
held-out prompts each of sg=, elements=, formula=; grammar-constrained, no redraws, refined with the pipeline's
chain). The improved model (the start + `--adapter`) is sampled with the same prompts, seeds and sampling settings
(benchmarks/bench_refiner_repair.py `sample`), so sample k of both arms shares its prompt and seed; its first --n
`dim=3` samples are refined the same way. Then both arms' first --n refined samples are scored by `xtallm improve`'s
scorer (the same protocol for both: the refiner's validity re-check, SevenNet-0 after `--relax-steps` capped FIRE
steps on the CPU, MP2020, the shipped hull v1; uniqueness and novelty against the training table by the
evaluation's matching), and the conditional prompts by bench_conditions' scoring (unrefined, as the model table).
Resumable: every step skips what is written.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 25  # the model table's and bench_refiner_repair's


def _bench(*argv: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_refiner_repair.py"), *argv], check=True)


def _head(src: Path, dst: Path, n: int) -> Path:
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src) as f:
            dst.write_text("".join(line for _, line in zip(range(n), f)))
    return dst


def _prescreen_rest(refined: Path, out: Path, scorer, scored: set) -> list[dict]:
    """Rows for the samples not in `scored`: the scorer's tiers up to `valid` and novelty, no energy (resumes by id)."""
    from tqdm import tqdm

    from xtallm.pipelines.samples import JsonlWriter, read_jsonl, read_samples

    rows = {r["id"]: r for r in read_jsonl(out)}
    with JsonlWriter(out) as writer:
        for sample in tqdm([s for s in read_samples(refined) if s.id not in scored and s.id not in rows], desc="prescreen"):
            row, structure = scorer.prescreen(sample)
            if structure is not None:
                row["novel"] = scorer.novel(structure)
            writer.write([row])
            rows[row["id"]] = row
    return list(rows.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", required=True, help="the model table's folder of the start model (llm/, rep50/)")
    parser.add_argument("--adapter", required=True, help="the improved adapter")
    parser.add_argument("--work", required=True)
    parser.add_argument("--n", type=int, default=200, help="dim=3 samples per arm (refined and scored)")
    parser.add_argument("--prompts", type=int, default=100, help="held-out prompts per condition")
    parser.add_argument("--relax-steps", type=int, default=10)
    parser.add_argument("--energy-n", type=int, default=None,
                        help="score energies (the capped relaxation) of the first N of the --n only; validity, uniqueness "
                             "and novelty are over all --n (default: all)")
    parser.add_argument("--train", default=".devdata/ref/train_bulk.csv.gz", help="training table for novelty")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_conditions import score as condition_score

    from xtallm.pipelines.improve import ScoreOptions, Scorer, round_metrics, score_round

    start, work = Path(args.start), Path(args.work)
    final = work / "final"
    todo = [s for s in ("uncond", "sg", "elements", "formula") if not (final / "llm" / s / "summary.json").exists()]
    t = time.perf_counter()
    if todo:
        _bench("sample", "--work", str(final), "--sets", *todo, "--uncond", str(args.n), "--prompts", str(args.prompts),
               "--seed", str(SEED), "--adapter", args.adapter)
    if not (final / "rep50" / "uncond" / "summary.json").exists():
        # the start arm was refined by SDEdit (the default until the sixth session): the final arm the same way
        _bench("refine", "--work", str(final), "--name", "rep50", "--sets", "uncond", "--steps", "50", "--start", "noise")
    print(f"final arm sampled and refined in {time.perf_counter() - t:.0f} s", flush=True)
    arms = {"start": _head(start / "rep50" / "uncond" / "samples.jsonl", work / "start" / "refined.jsonl", args.n),
            "final": _head(final / "rep50" / "uncond" / "samples.jsonl", work / "final" / "refined.jsonl", args.n)}
    scorer = Scorer(ScoreOptions(relax_steps=args.relax_steps, engine="batched", device="cpu", novelty_reference=args.train))
    energy_n = min(args.n, args.energy_n or args.n)
    result = {"date": time.strftime("%Y-%m-%d"), "start": str(start), "adapter": args.adapter, "n": args.n,
              "relax_steps": args.relax_steps, "energy_n": energy_n, "arms": {}}
    for name, refined in arms.items():
        t = time.perf_counter()
        subsample = _head(refined, work / name / f"refined_first{energy_n}.jsonl", energy_n) if energy_n < args.n else refined
        scores = score_round(subsample, work / name / "scores.jsonl", scorer)
        if energy_n < args.n:  # the rest: validity, group and novelty without an energy
            energies = round_metrics(subsample, scores, scorer.options.metastable)
            scores = scores + _prescreen_rest(refined, work / name / "prescreened.jsonl", scorer, {r["id"] for r in scores})
            metrics = round_metrics(refined, scores, scorer.options.metastable)
            rates = ("metastable_rate", "stable_rate", "e_above_hull_quartiles")
            metrics.update({key: energies[key] for key in rates}, energy_subsample=energy_n)
        else:
            metrics = round_metrics(refined, scores, scorer.options.metastable)
        llm = start / "llm" if name == "start" else final / "llm"
        metrics["conditional"] = {key: condition_score(llm / key / "samples.jsonl", key, prompts=args.prompts)
                                  for key in ("sg", "elements", "formula")}
        metrics["score_seconds"] = round(time.perf_counter() - t, 1)
        result["arms"][name] = metrics
    keys = ("validity", "valid_in_group", "uniqueness_valid", "novelty_valid", "metastable_rate", "stable_rate", "e_above_hull_quartiles")
    for key in keys:
        print(f"{key:24s} " + "  ".join(f"{name}: {result['arms'][name][key]}" for name in arms))
    for key in ("sg", "elements", "formula"):
        print(f"{key:24s} " + "  ".join(f"{name}: {result['arms'][name]['conditional'][key]}" for name in arms))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
