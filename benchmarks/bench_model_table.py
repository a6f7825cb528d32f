"""One table of language models through the whole evaluation suite (issue 26): the shipped 11M default,
SmolLM2-135M + LoRA trained on 2 CPU cores, and the 11M architecture trained from scratch for the same CPU time.

    python benchmarks/bench_model_table.py run --label smollm2_lora --model smollm2 --adapter runs/smollm2_lora/final
    python benchmarks/bench_model_table.py run --label crystal11m_cpu --model runs/crystal11m_cpu/final
    python benchmarks/bench_model_table.py run --label default_11m          # the embedded default (no --model)
    python benchmarks/bench_model_table.py table --labels default_11m smollm2_lora crystal11m_cpu
    python benchmarks/bench_model_table.py llm-only --labels default_11m smollm2_lora crystal11m_cpu  # no slow suite

`run` (resumable: every step skips what is already written) for one model, in WORK/<label>/:
1. samples, grammar-constrained, no redraws (benchmarks/bench_refiner_repair.py `sample`): 1,000 `dim=3`
   (`uncond`) and --prompts (100) prompts each of `sg=`, `elements=`, `formula=` from the held-out split
   mp20-heldout-v1 (the same prompts for every model: same seed; the default's 200 of issue 25 are scored on
   their first 100, the same prompts);
2. the uncond set refined by the shipped refiner as `xtallm generate` does (`--steps 50`, tau 0.2);
3. `xtallm evaluate` of the uncond set before and after refinement against mp20-heldout-v1 (CDVAE protocol:
   validity, COV-R/COV-P, wdist, SG JSD, P1), novelty against every bulk training row;
4. conditional accuracy of each prompt set (benchmarks/bench_conditions.py's scoring: the condition as written
   in the text, and for sg= the group moyopy detects at symprec 0.1).
`table` writes benchmarks/results/model_table.json and prints the Markdown table. Speeds come from each
sample run's own summary (CPU vLLM); they compare only between runs on the same machine under the same load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REF = ROOT / ".devdata" / "ref"
PROMPT_SETS = ("sg", "elements", "formula")
SEED = 25  # bench_refiner_repair's: the default's sets of issue 25 are reused as they are
EVAL_KEYS = ("n_samples", "parse_rate", "struct_validity", "comp_validity", "validity", "uniqueness", "novelty", "cov_recall",
             "cov_precision", "wdist_density", "wdist_n_elements", "sg_jsd", "p1_rate")


def _bench(*argv: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_refiner_repair.py"), *argv], check=True)


def run(args) -> None:
    work = Path(args.work) / args.label
    model = ["--model", args.model] if args.model else []
    adapter = ["--adapter", args.adapter] if args.adapter else []
    todo = [s for s in ("uncond", *PROMPT_SETS) if not (work / "llm" / s / "summary.json").exists()]
    if todo:
        _bench("sample", "--work", str(work), "--sets", *todo, "--seed", str(SEED), "--prompts", str(args.prompts), *model, *adapter)
    if not (work / "rep50" / "uncond" / "summary.json").exists():
        _bench("refine", "--work", str(work), "--name", "rep50", "--sets", "uncond", "--steps", "50")
    for name, path in (("llm", work / "llm" / "uncond" / "samples.jsonl"), ("refined", work / "rep50" / "uncond" / "samples.jsonl")):
        out = work / f"eval_{name}"
        if (out / "metrics.json").exists():
            continue
        t = time.perf_counter()
        subprocess.run(["xtallm", "evaluate", str(path), "--reference", str(REF / "mp20-heldout-v1.csv.gz"),
                        "--train", str(REF / "train_bulk.csv.gz"), "--train-meta", str(REF / "train_meta_mp20.csv.gz"),
                        "--num-proc", str(args.num_proc), "--out", str(out)], check=True)
        print(f"{args.label} {name}: evaluated in {time.perf_counter() - t:.0f} s", flush=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_conditions import score

    conditional = {key: score(work / "llm" / key / "samples.jsonl", key, prompts=args.prompts) for key in PROMPT_SETS}
    (work / "conditional.json").write_text(json.dumps(conditional, indent=1))


def _column(work: Path) -> dict:
    evals = {name: json.loads((work / f"eval_{name}" / "metrics.json").read_text()) for name in ("llm", "refined")}
    sampled = json.loads((work / "llm" / "uncond" / "summary.json").read_text())
    refined = json.loads((work / "rep50" / "uncond" / "summary.json").read_text())
    conditional = json.loads((work / "conditional.json").read_text())
    column = {f"{k} (LLM only)": evals["llm"].get(k) for k in ("struct_validity", "comp_validity", "validity")}
    column |= {f"{k} (refined)" if k in ("struct_validity", "comp_validity", "validity") else k: evals["refined"].get(k)
               for k in EVAL_KEYS}
    column["parse_rate"] = sampled["parse_rate"]
    column["sg= honoured (detected, of all)"] = conditional["sg"]["honoured_detected"]["of_all"]
    for key in PROMPT_SETS:
        column[f"{key}= honoured (written, of all)"] = conditional[key]["honoured_written"]["of_all"]
        column[f"{key}= parse rate"] = conditional[key]["parse_rate"]
    column["crystals/s (CPU vLLM, constrained)"] = sampled.get("samples_per_s")
    column["tokens/s (CPU vLLM, constrained)"] = sampled.get("tokens_per_s")
    # a resumed refinement's wall time covers the rows it refined in its last run only
    now = refined.get("refined_now", refined["samples"])
    column["refine crystals/s (CPU, loaded)"] = now / refined["wall_seconds"] if refined.get("wall_seconds") and now else None
    return column


def table(args) -> None:
    columns = {label: _column(Path(args.work) / label) for label in args.labels}
    keys = list(next(iter(columns.values())))
    lines = ["| metric | " + " | ".join(args.labels) + " |", "|---|" + "---|" * len(args.labels)]
    for key in keys:
        cells = [columns[label].get(key) for label in args.labels]
        lines.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |")
    text = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"date": time.strftime("%Y-%m-%d"), "labels": args.labels, "columns": columns,
           "protocol": f"1,000 dim=3 samples (constrained, no redraws) + {args.prompts} held-out prompts each of sg=/elements=/formula= "
                       "(mp20-heldout-v1, seed 25); refined with the shipped refiner --steps 50 (tau 0.2); xtallm evaluate against "
                       "mp20-heldout-v1, novelty against the bulk training rows"}
    (RESULTS / "model_table.json").write_text(json.dumps(out, indent=1) + "\n")
    print(text)


def llm_only(args) -> None:
    """The LLM-only rows without the slow suite (fingerprints, novelty): readable structure, structural and SMACT
    validity of the uncond set, conditional accuracy; benchmarks/results/model_table_llm_only.json."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_conditions import score

    from xtallm.pipelines.evaluation import metrics as M
    from xtallm.pipelines.evaluation.context import parse
    from xtallm.pipelines.samples import read_jsonl

    out = {}
    for label in args.labels:
        work = Path(args.work) / label
        n = readable = structural = smact = 0
        for row in read_jsonl(work / "llm" / "uncond" / "samples.jsonl"):
            n += 1
            structure = parse(row["cif"]) if row["ok"] else None
            if structure is not None:
                readable += 1
                structural += M.structurally_valid(structure)
                smact += M.compositionally_valid(structure.composition)
        sampled = json.loads((work / "llm" / "uncond" / "summary.json").read_text())
        conditional = {key: score(work / "llm" / key / "samples.jsonl", key, prompts=args.prompts) for key in PROMPT_SETS}
        out[label] = {"samples": n, "parse_rate": sampled["parse_rate"], "readable": readable / n, "struct_validity": structural / n,
                      "comp_validity": smact / n, "samples_per_s": sampled.get("samples_per_s"), "tokens_per_s": sampled.get("tokens_per_s"),
                      "conditional": conditional}
        print(label, {k: v for k, v in out[label].items() if k != "conditional"}, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_table_llm_only.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "columns": out}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["run", "table", "llm-only"])
    parser.add_argument("--work", default="runs/table")
    parser.add_argument("--label", help="run: the model's column (and folder) name")
    parser.add_argument("--model", default=None, help="run: --model of `xtallm sample` (default: the embedded 11M)")
    parser.add_argument("--adapter", default=None, help="run: a LoRA adapter for --model")
    parser.add_argument("--labels", nargs="+", help="table: the columns, in order")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=100, help="run: prompts per condition kind (the first N of the seeded "
                        "held-out choice; a set sampled with more is scored on its first N)")
    args = parser.parse_args()
    {"run": run, "table": table, "llm-only": llm_only}[args.what](args)


if __name__ == "__main__":
    main()
