"""Conditional accuracy of the shipped default, grammar-constrained vs free decoding (CPU vLLM).

    python benchmarks/bench_conditions.py bulk --prompts 100 --samples 2 --work runs/conditions
    python benchmarks/bench_conditions.py layer-groups --samples 8 --redraws 3 --work runs/conditions

`bulk`: `dim=3 sg=N`, `dim=3 elements=...` and `dim=3 formula=...` prompts taken from the
held-out split mp20-heldout-v1 (configs/data, seeded choice), sampled by the default model.
`layer-groups`: `dim=2 lg=N` for all 80 layer groups, sampled by the default + its
layer-group LoRA adapter. Both modes run on one engine; each sample is scored by the
evaluation suite's checks: parsed, structurally and compositionally valid, condition honoured
(group as written in the text and as detected by moyopy at symprec 0.1). `--redraws N` adds a
third mode for sg=/lg= prompts: constrained with up to N redraws of a sample whose detected group
is not the requested one (the same test as the score: it measures what `xtallm generate` delivers
and what it costs in draws, not the model alone).

Writes benchmarks/results/conditions_constrained.json / layer_groups_constrained.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HELDOUT = ROOT / "configs" / "data" / "mp20-heldout-v1.csv"


def bulk_prompts(n: int, seed: int) -> dict[str, list[dict]]:
    """`n` condition sets per kind from held-out crystals (their group, elements, formula)."""
    import pandas as pd
    from pymatgen.core import Composition

    from xtallm.tokenization.conditions import validate_conditions

    rows = pd.read_csv(HELDOUT).sample(n, random_state=seed)
    out: dict[str, list[dict]] = {"sg": [], "elements": [], "formula": []}
    for _, r in rows.iterrows():
        comp = Composition(r["reduced_formula"])
        out["sg"].append(validate_conditions({"dim": 3, "sg": int(r["group"])}))
        out["elements"].append(validate_conditions({"dim": 3, "elements": ",".join(e.symbol for e in comp.elements)}))
        out["formula"].append(validate_conditions({"dim": 3, "formula": r["reduced_formula"]}))
    return out


def write_conditions(path: Path, sets: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(sets).to_csv(path, index=False)
    return path


def score(samples: Path, key: str, prompts: int | None = None) -> dict:
    """Rates over all samples, parsed ones and valid ones (structurally + compositionally); with `prompts`, only
    the samples of the first N prompts (ids `p<prompt>-<k>`)."""
    from xtallm.pipelines.evaluation import metrics as M
    from xtallm.pipelines.evaluation.context import parse as _parse
    from xtallm.pipelines.samples import read_jsonl as read_samples
    from xtallm.tokenization.record import detect_group

    n = parsed = valid = 0
    honoured = defaultdict(lambda: [0, 0, 0])  # all, of parsed, of valid
    draws = 0
    for row in read_samples(samples):
        if prompts is not None and int(row["id"].split("-")[0].lstrip("p")) >= prompts:
            continue
        n += 1
        draws += row.get("draws", 1)
        s = _parse(row["cif"]) if row["ok"] else None
        if s is None:
            continue
        parsed += 1
        ok_valid = M.structurally_valid(s) and M.compositionally_valid(s.composition)
        valid += ok_valid
        wanted = {key: row["conditions"][key]}
        checks = {"written": M.condition_accuracy(wanted, s, row["group"])[key]}
        if key in ("sg", "lg"):
            checks["detected"] = detect_group(s, 3 if key == "sg" else 2, symprec=0.1) == wanted[key]
        for name, ok in checks.items():
            honoured[name][0] += ok
            honoured[name][1] += ok
            honoured[name][2] += ok and ok_valid
    return {
        "samples": n, "parse_rate": parsed / max(n, 1), "validity": valid / max(n, 1), "draws_per_sample": draws / max(n, 1),
        **{f"honoured_{name}": {"of_all": h[0] / max(n, 1), "of_parsed": h[1] / max(parsed, 1), "of_valid": h[2] / max(valid, 1)}
           for name, h in honoured.items()},
    }


def per_group(samples: Path) -> tuple[dict[int, dict], list[dict]]:
    """Layer groups: counts per requested group, and the valid samples detected in another group."""
    from xtallm.pipelines.evaluation import metrics as M
    from xtallm.pipelines.evaluation.context import parse as _parse
    from xtallm.pipelines.samples import read_jsonl as read_samples
    from xtallm.tokenization.record import detect_group

    out: dict[int, dict] = {}
    misses = []
    for row in read_samples(samples):
        lg = row["conditions"]["lg"]
        g = out.setdefault(lg, {"samples": 0, "parsed": 0, "valid": 0, "detected_in_group": 0, "valid_in_group": 0})
        g["samples"] += 1
        s = _parse(row["cif"]) if row["ok"] else None
        if s is None:
            continue
        g["parsed"] += 1
        valid = M.structurally_valid(s) and M.compositionally_valid(s.composition)
        detected = detect_group(s, 2, symprec=0.1)
        g["valid"] += valid
        g["detected_in_group"] += detected == lg
        g["valid_in_group"] += valid and detected == lg
        if valid and detected != lg:
            misses.append({"id": row["id"], "requested": lg, "detected": detected, "text": row["text"]})
    return out, misses


def run(args, sets: dict[str, list[dict]], adapter: str | None, result_name: str) -> None:
    from xtallm.llm.model import default_adapter_path, default_model_path
    from xtallm.pipelines.sample import SampleJob, SampleOptions, make_sampler, run_sample

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = str(default_model_path())
    engine = make_sampler(SampleJob(str(work), options=SampleOptions(model=model, adapter=str(default_adapter_path()))))
    result: dict = {"model": Path(model).name, "adapter": Path(adapter).name if adapter else None, "samples_per_prompt": args.samples,
                    "heldout": HELDOUT.name if result_name.startswith("conditions") else None, "sets": {}}
    for key, conditions in sets.items():
        csv = write_conditions(work / f"{key}.csv", conditions)
        modes = {"constrained": (True, 0), "free": (False, 0)}
        if args.redraws and key in ("sg", "lg"):
            modes[f"constrained_redraws{args.redraws}"] = (True, args.redraws)
        for mode, (constrained, redraws) in modes.items():
            out = work / f"{key}_{mode}"
            job = SampleJob(str(out), num_samples=args.samples, conditions_file=str(csv), options=SampleOptions(
                model=model, adapter=adapter, constrained=constrained, redraws=redraws, seed=args.seed))
            t = time.perf_counter()
            summary = run_sample(job, sampler=engine)
            scored = score(out / "samples.jsonl", key)
            scored["sampling_seconds"] = round(time.perf_counter() - t, 1) if summary["generated_now"] else None
            result["sets"].setdefault(key, {})[mode] = scored
            if key == "lg":
                groups, misses = per_group(out / "samples.jsonl")
                hit = sorted(g for g, v in groups.items() if v["detected_in_group"])
                result["sets"][key][mode].update(groups_with_a_sample_in_group=len(hit), groups_missed=sorted(set(groups) - set(hit)),
                                                 per_group=groups, valid_misses=misses)
            print(key, mode, json.dumps({k: v for k, v in scored.items() if k not in ("per_group", "valid_misses")}), flush=True)
    result["command"] = " ".join(sys.argv)
    result["date"] = time.strftime("%Y-%m-%d")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{result_name}.json").write_text(json.dumps(result, indent=1))
    print(f"-> {RESULTS / (result_name + '.json')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["bulk", "layer-groups"])
    parser.add_argument("--work", default="runs/conditions")
    parser.add_argument("--prompts", type=int, default=100, help="bulk: prompts per condition kind")
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--redraws", type=int, default=0, help="also sample sg=/lg= prompts with this many redraws")
    args = parser.parse_args()
    if args.what == "bulk":
        run(args, bulk_prompts(args.prompts, args.seed), None, "conditions_constrained")
    else:
        from xtallm.llm.model import default_adapter_path
        from xtallm.tokenization.conditions import validate_conditions

        sets = {"lg": [validate_conditions({"dim": 2, "lg": n}) for n in range(1, 81)]}
        run(args, sets, str(default_adapter_path()), "layer_groups_constrained")


if __name__ == "__main__":
    main()
