"""Do property requests land on target? The embedded default asked for band gaps and formation energies (issue 29).

    python benchmarks/bench_property_requests.py run --work runs/props --reference heldout/mp20-heldout-v1-reference.csv.xz \
        --train .devdata/ref/train_bulk.csv.gz --train-meta .devdata/ref/train_meta_mp20.csv.gz --per-request 100
    python benchmarks/bench_property_requests.py report --work runs/props --out benchmarks/results/property_requests.json

`run` (resumable) makes two `xtallm generate` runs over benchmarks/property_requests.csv (band gap 0, 1, 2, 3, 5 eV,
formation energy -3, -2, -1, 0 eV/atom, and two two-condition prompts; each `dim=3`, grammar-constrained, refined,
--per-request samples a row): arm `drawn` with `--screen 0` (the model as it draws: one draw a sample) and arm
`screened` with what a property request does by default (or `--screen N` with --draws). The sampling and
refinement seconds of each are recorded. Then `xtallm evaluate` scores each prompt family (band gap, formation
energy, each two-condition prompt) of each arm: MAE against the request and against the requests shuffled within
the family, share within tolerance, validity, novelty (with --train), and what the structure decides (sg, elements).

`report` prints the tables and writes the JSON.

    python benchmarks/bench_property_requests.py hints --work runs/props_hints --per-prompt 80 --out benchmarks/results/property_hints.json

`hints` measures what the element hints do to single draws: for band gap 0, 3, 5 eV and formation energy -3 and
0 eV/atom, --per-prompt draws each with `screen.hints` = 0.5 (so half hinted, half as the model draws, same
prompts), unrefined, the CGCNN prediction of every parsed draw: per prompt and kind, the share within the
predictor's tolerance, the quartiles, and how often the draw's elements are exactly the hinted ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "benchmarks" / "property_requests.csv"


def families(prompts: pd.DataFrame) -> dict[str, list[int]]:
    """Prompt rows by what they ask: the single-property ladders, then every multi-condition prompt alone."""
    out: dict[str, list[int]] = {}
    for p, row in prompts.iterrows():
        asked = [k for k in ("band_gap", "formation_energy", "sg", "elements") if pd.notna(row.get(k)) and str(row.get(k)) != ""]
        name = asked[0] if len(asked) == 1 else " ".join(f"{k}={row[k]}" for k in asked)
        out.setdefault(name, []).append(p)
    return out


def _folder(family: str) -> str:
    """A prompt family's evaluation folder name."""
    return family.replace(" ", "_").replace("=", "").replace(",", "")


def _subset(src: Path, prompts: list[int], dst: Path) -> None:
    keep = {f"p{p}" for p in prompts}
    with open(src) as f, open(dst, "w") as g:
        for line in f:
            if json.loads(line)["id"].rpartition("-")[0] in keep:
                g.write(line)


ARMS = {"drawn": ["--screen", "0"], "screened": []}  # screened: the default of a property request unless --draws


def run(args) -> None:
    work = Path(args.work)
    adapter = ["--adapter", args.adapter] if args.adapter else []
    for arm, flags in ARMS.items():
        if (work / arm / "summary.json").exists() and (work / f"{arm}_seconds.txt").exists():
            continue  # finished: its seconds stay those of the run that made it (a resumed run's count only its part)
        if arm == "screened" and args.draws:
            flags = ["--screen", str(args.draws)]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xtallm.pipelines.cli", "generate", "--conditions-file", str(PROMPTS), "--num-samples",
                        str(args.per_request), *flags, *adapter, "--out", str(work / arm)], check=True)
        (work / f"{arm}_seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")
    evaluate(args)


def evaluate(args) -> None:
    """Each prompt family of each arm through `xtallm evaluate` (an arm whose run has not finished is skipped)."""
    work = Path(args.work)
    prompts = pd.read_csv(PROMPTS, dtype=str, keep_default_na=False)
    novelty = [f for path in args.train or [] for f in ("--train", path)] + [f for path in args.train_meta or [] for f in ("--train-meta", path)]
    for arm in ARMS:
        src = work / arm / "samples.jsonl"
        if not (work / arm / "summary.json").exists():
            print(f"{arm}: its generate run has not finished; skipped", flush=True)
            continue
        for name, rows in families(prompts).items():
            out = work / "eval" / arm / _folder(name)
            if (out / "metrics.json").exists():
                continue
            out.mkdir(parents=True, exist_ok=True)
            _subset(src, rows, out / "samples.jsonl")
            subprocess.run([sys.executable, "-m", "xtallm.pipelines.cli", "evaluate", str(out / "samples.jsonl"), "--reference",
                            args.reference, *novelty, "--no-coverage", "--num-proc", str(args.num_proc), "--out", str(out)], check=True)


def report(args) -> None:
    work = Path(args.work)
    prompts = pd.read_csv(PROMPTS, dtype=str, keep_default_na=False)
    result = {"date": time.strftime("%Y-%m-%d"), "prompts": str(PROMPTS.relative_to(ROOT)), "families": {},
              "generate": {arm: {**json.loads((work / arm / "summary.json").read_text()),
                                 "wall_seconds": float((work / f"{arm}_seconds.txt").read_text())} for arm in ARMS}}
    for arm, g in result["generate"].items():
        print(f"{arm}: {g['samples']} samples from {g['draws']} draws in {g['wall_seconds']:.0f} s "
              f"({g['wall_seconds'] / g['samples']:.2f} s a sample)")
    for name in families(prompts):
        if not all((work / "eval" / arm / _folder(name) / "metrics.json").exists() for arm in ARMS):
            continue
        entry = {}
        for arm in ("drawn", "screened"):
            m = json.loads((work / "eval" / arm / _folder(name) / "metrics.json").read_text())
            entry[arm] = {"n_samples": m["n_samples"], "validity": m["validity"], "struct_validity": m["struct_validity"],
                          "novelty": m.get("novelty"), "uniqueness": m.get("uniqueness"),
                          "property_requests": m.get("property_requests"), "conditional_accuracy": m.get("conditional_accuracy")}
        result["families"][name] = entry
        for arm, e in entry.items():
            for key, r in (e["property_requests"] or {}).items():
                per = ", ".join(f"{v}: {b['mae']:.2f} (mean {b['mean_achieved']:.2f})" for v, b in r["by_request"].items())
                print(f"{name:32s} {arm:9s} {key}: MAE {r['mae']:.3f} vs shuffled {r['shuffled_mae']:.3f}, within "
                      f"{r['within_tolerance']:.2f}, n {r['n_scored']}/{e['n_samples']}, validity {e['validity']:.2f}, "
                      f"novelty {e['novelty'] if e['novelty'] is None else round(e['novelty'], 3)} | {per}")
            for key, acc in (e["conditional_accuracy"] or {}).items():
                if key in ("sg", "elements"):
                    print(f"{name:32s} {arm:9s} {key} honoured {acc['rate']:.2f} of {acc['n']} parsed")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


HINT_PROMPTS = [{"dim": 3, "band_gap": 0.0}, {"dim": 3, "band_gap": 3.0}, {"dim": 3, "band_gap": 5.0},
                {"dim": 3, "formation_energy": -3.0}, {"dim": 3, "formation_energy": 0.0}]


def hints(args) -> None:
    import numpy as np

    from xtallm.pipelines.evaluation import properties as P
    from xtallm.pipelines.property_hints import ElementHints
    from xtallm.pipelines.sample import SampleJob, SampleOptions, run_sample
    from xtallm.pipelines.samples import read_samples
    from xtallm.tokenization.conditions import validate_conditions

    work = Path(args.work)
    started = time.perf_counter()
    sampled = run_sample(SampleJob(str(work / "llm"), args.per_prompt, condition_sets=HINT_PROMPTS,
                                   options=SampleOptions(seed=args.seed), hint=ElementHints(0.5)))
    rows = [r for r in read_samples(work / "llm" / "samples.jsonl") if r.ok and r.structure() is not None]
    predicted = P.predict_requested(rows, unrefined=True)
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "hint_share": 0.5, "per_prompt": args.per_prompt,
              "sampling": {k: sampled[k] for k in ("samples", "seconds", "samples_per_s")}, "prompts": []}
    for prompt in HINT_PROMPTS:
        key = next(k for k in prompt if k in P.PREDICTORS)
        asked, p = prompt[key], P.predictor(key)
        entry = {"request": prompt}
        for kind in ("free", "hinted"):
            mine = [(r, v[key]) for r, v in zip(rows, predicted)
                    if r.conditions == prompt and bool(r.extra.get("hint")) == (kind == "hinted") and v.get(key) is not None]
            values = np.array([v for _, v in mine])
            followed = [validate_conditions({"elements": [str(e) for e in r.structure().composition.elements]})["elements"]
                        == r.extra["hint"]["elements"] for r, _ in mine] if kind == "hinted" else []
            entry[kind] = {"n": len(values), "within_tolerance": float(np.mean([p.within(asked, v) for v in values])),
                           "quartiles": np.percentile(values, [25, 50, 75]).round(3).tolist(),
                           "followed_hint": float(np.mean(followed)) if followed else None}
            print(f"{key}={asked:g} {kind:6s}: n {len(values)}, within {entry[kind]['within_tolerance']:.2f}, quartiles "
                  f"{entry[kind]['quartiles']}" + (f", elements as hinted {entry[kind]['followed_hint']:.2f}" if followed else ""))
        result["prompts"].append(entry)
    result["seconds"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--work", required=True)
    r.add_argument("--reference", required=True, help="held-out reference table (xtallm data reference)")
    r.add_argument("--per-request", type=int, default=100, help="samples per prompt row")
    r.add_argument("--draws", type=int, default=None, help="--screen N for the screened arm (default: a property request's default)")
    r.add_argument("--num-proc", type=int, default=1)
    r.add_argument("--train", action="append", help="training crystals for novelty (repeatable)")
    r.add_argument("--train-meta", action="append", help="training crystals without positions for novelty (repeatable)")
    r.add_argument("--adapter", default=None, help="a LoRA adapter of the default model (e.g. `xtallm improve`'s, property reward)")
    e = sub.add_parser("evaluate", help="only the evaluations (DIR/gen from a run, or screened from part of its draws)")
    e.add_argument("--work", required=True)
    e.add_argument("--reference", required=True)
    e.add_argument("--num-proc", type=int, default=1)
    e.add_argument("--train", action="append")
    e.add_argument("--train-meta", action="append")
    h = sub.add_parser("hints", help="single draws with and without element hints (unrefined, predicted)")
    h.add_argument("--work", required=True)
    h.add_argument("--per-prompt", type=int, default=80)
    h.add_argument("--seed", type=int, default=5)
    h.add_argument("--out", required=True)
    w = sub.add_parser("report")
    w.add_argument("--work", required=True)
    w.add_argument("--out", required=True)
    args = parser.parse_args()
    {"run": run, "evaluate": evaluate, "report": report, "hints": hints}[args.what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
