"""Do property requests land on target? The embedded default asked for band gaps and formation energies (issue 29).

    python benchmarks/bench_property_requests.py run --work runs/props --reference heldout/mp20-heldout-v1-reference.csv.xz
    python benchmarks/bench_property_requests.py report --work runs/props --out benchmarks/results/property_requests.json

`run` (resumable) makes one `xtallm generate` run over benchmarks/property_requests.csv: band gap 0, 1, 2, 3, 5 eV,
formation energy -3, -2, -1, 0 eV/atom, and two two-condition prompts, each `dim=3`, grammar-constrained, the
pipeline's refinement, `--screen DRAWS` with --per-request samples per row. So each row gets DRAWS x per-request
refined draws (DIR/draws: the model as it is, arm a) and per-request screened samples (DIR/samples.jsonl: best of
DRAWS by the predictor, arm b): the same draws, so the screen's gain is measured on exactly the crystals it chose
from. Then `xtallm evaluate` scores each prompt family (band gap, formation energy, each two-condition prompt) of
each arm: MAE against the request and against the requests shuffled within the family, share within tolerance,
validity, and what the structure decides (sg, elements).

`report` prints the tables and writes the JSON.
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


def run(args) -> None:
    work = Path(args.work)
    started = time.perf_counter()
    adapter = ["--adapter", args.adapter] if args.adapter else []
    subprocess.run([sys.executable, "-m", "xtallm.pipelines.cli", "generate", "--conditions-file", str(PROMPTS), "--num-samples",
                    str(args.per_request), "--screen", str(args.draws), *adapter, "--out", str(work / "gen")], check=True)
    (work / "generate_seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")
    evaluate(args)


def _present(path: Path) -> set[int]:
    with open(path) as f:
        return {int(json.loads(line)["id"].rpartition("-")[0].lstrip("p")) for line in f}


def evaluate(args) -> None:
    """Each prompt family of each arm through `xtallm evaluate` (a family whose draws are not all there is skipped)."""
    work = Path(args.work)
    prompts = pd.read_csv(PROMPTS, dtype=str, keep_default_na=False)
    present = _present(work / "gen" / "draws" / "samples.jsonl")
    for arm, src in (("drawn", work / "gen" / "draws" / "samples.jsonl"), ("screened", work / "gen" / "samples.jsonl")):
        for name, rows in families(prompts).items():
            if not set(rows) <= present:
                print(f"{name}: not all its draws are refined; skipped", flush=True)
                continue
            out = work / "eval" / arm / _folder(name)
            if (out / "metrics.json").exists():
                continue
            out.mkdir(parents=True, exist_ok=True)
            _subset(src, rows, out / "samples.jsonl")
            subprocess.run([sys.executable, "-m", "xtallm.pipelines.cli", "evaluate", str(out / "samples.jsonl"), "--reference",
                            args.reference, "--no-coverage", "--num-proc", str(args.num_proc), "--out", str(out)], check=True)


def report(args) -> None:
    work = Path(args.work)
    prompts = pd.read_csv(PROMPTS, dtype=str, keep_default_na=False)
    summary = json.loads((work / "gen" / "summary.json").read_text())
    result = {"date": time.strftime("%Y-%m-%d"), "prompts": str(PROMPTS.relative_to(ROOT)), "generate": summary, "families": {}}
    for name in families(prompts):
        if not (work / "eval" / "drawn" / _folder(name) / "metrics.json").exists():
            continue
        entry = {}
        for arm in ("drawn", "screened"):
            m = json.loads((work / "eval" / arm / _folder(name) / "metrics.json").read_text())
            entry[arm] = {"n_samples": m["n_samples"], "validity": m["validity"], "struct_validity": m["struct_validity"],
                          "property_requests": m.get("property_requests"), "conditional_accuracy": m.get("conditional_accuracy")}
        result["families"][name] = entry
        for arm, e in entry.items():
            for key, r in (e["property_requests"] or {}).items():
                per = ", ".join(f"{v}: {b['mae']:.2f} (mean {b['mean_achieved']:.2f})" for v, b in r["by_request"].items())
                print(f"{name:32s} {arm:9s} {key}: MAE {r['mae']:.3f} vs shuffled {r['shuffled_mae']:.3f}, within "
                      f"{r['within_tolerance']:.2f}, n {r['n_scored']}/{e['n_samples']}, validity {e['validity']:.2f} | {per}")
            for key, acc in (e["conditional_accuracy"] or {}).items():
                if key in ("sg", "elements"):
                    print(f"{name:32s} {arm:9s} {key} honoured {acc['rate']:.2f} of {acc['n']} parsed")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--work", required=True)
    r.add_argument("--reference", required=True, help="held-out reference table (xtallm data reference)")
    r.add_argument("--per-request", type=int, default=25, help="screened samples per prompt row")
    r.add_argument("--draws", type=int, default=4, help="draws per screened sample")
    r.add_argument("--num-proc", type=int, default=1)
    r.add_argument("--adapter", default=None, help="a LoRA adapter of the default model (e.g. `xtallm improve`'s, property reward)")
    e = sub.add_parser("evaluate", help="only the evaluations (DIR/gen from a run, or screened from part of its draws)")
    e.add_argument("--work", required=True)
    e.add_argument("--reference", required=True)
    e.add_argument("--num-proc", type=int, default=1)
    w = sub.add_parser("report")
    w.add_argument("--work", required=True)
    w.add_argument("--out", required=True)
    args = parser.parse_args()
    {"run": run, "evaluate": evaluate, "report": report}[args.what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
