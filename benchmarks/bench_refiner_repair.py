"""Does the refiner repair what the LLM gets wrong? LLM-only vs refined, on the same samples (issue 25).

    python benchmarks/bench_refiner_repair.py sample --work runs/repair                   # the LLM's sets (CPU vLLM)
    python benchmarks/bench_refiner_repair.py refine --work runs/repair --name rep [--checkpoint C] [refine flags]
    python benchmarks/bench_refiner_repair.py score  --work runs/repair --name rep [--energy 300]
    python benchmarks/bench_refiner_repair.py diagnose --work runs/repair                # what goes wrong in the LLM's samples

Sets (the default model unless --model/--adapter, grammar-constrained, no redraws: the LLM as it is):
- `uncond`: 1,000 samples of `dim=3`;
- `sg`, `elements`, `formula`: 200 prompts each from the held-out split mp20-heldout-v1 (configs/data),
  one sample per prompt;
- `lg`: 500 `dim=2 lg=N` samples across the 80 layer groups with the shipped layer-group adapter.

`refine` runs `xtallm refine` (run_refine) on every set into WORK/<name>/<set>/. `score` compares each
refined row with its LLM row (same id): structural validity (the protocol's 0.5 Å), the per-species-pair
rule, SMACT, composition / group / Wyckoff assignment unchanged, group detected (symprec 0.01), and with
--energy N the SevenNet-0 single-point energy per atom of the first N ids valid in both (median, spread).
Writes benchmarks/results/refiner_repair_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HELDOUT = ROOT / "configs" / "data" / "mp20-heldout-v1.csv"
SETS = ("uncond", "sg", "elements", "formula", "lg")


def sample(args) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_conditions import bulk_prompts, write_conditions

    from xtallm.llm.model import default_adapter_path, default_model_path
    from xtallm.pipelines.sample import SampleJob, SampleOptions, run_sample
    from xtallm.tokenization.conditions import validate_conditions

    work = Path(args.work) / "llm"
    work.mkdir(parents=True, exist_ok=True)
    prompts = bulk_prompts(args.prompts, args.seed)
    layer_sets = [validate_conditions({"dim": 2, "lg": 1 + i % 80}) for i in range(args.layers)]
    model = args.model or str(default_model_path())
    jobs = {
        "uncond": dict(num_samples=args.uncond, conditions={"dim": 3}),
        **{key: dict(num_samples=1, conditions_file=str(write_conditions(work / f"{key}.csv", prompts[key]))) for key in ("sg", "elements", "formula")},
        "lg": dict(num_samples=1, conditions_file=str(write_conditions(work / "lg.csv", layer_sets))),
    }
    for name in args.sets:
        adapter = args.adapter or (str(default_adapter_path()) if name == "lg" and not args.model else None)
        options = SampleOptions(model=model, adapter=adapter, constrained=True, redraws=0, seed=args.seed)
        t = time.perf_counter()
        summary = run_sample(SampleJob(str(work / name), options=options, **jobs[name]))
        print(name, summary["samples"], f"{time.perf_counter() - t:.0f} s", flush=True)


def refine(args, extra: list[str]) -> None:
    from xtallm.pipelines.cli import main as cli

    for name in args.sets:
        source = Path(args.work) / "llm" / name / "samples.jsonl"
        out = Path(args.work) / args.name / name
        flags = ["refine", str(source), "--out", str(out), "--seed", "0", *extra]
        if args.checkpoint:
            flags += ["--checkpoint", args.checkpoint]
        t = time.perf_counter()
        code = cli(flags)
        seconds = time.perf_counter() - t
        summary = json.loads((out / "summary.json").read_text())
        summary.setdefault("wall_seconds", round(seconds, 1))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(name, "exit", code, f"{seconds:.0f} s", flush=True)


def _wyckoff(record) -> list[tuple[str, str]]:
    return sorted((s.element, s.wyckoff) for s in record.sites) if record is not None else []


def score_set(llm_rows: dict, refined_rows: list, dim: int) -> dict:
    from xtallm.pipelines.evaluation import metrics as M
    from xtallm.refiner.clash import closest_pair
    from xtallm.tokenization.record import detect_group

    n = len(refined_rows)
    counts: Counter = Counter()
    for row in refined_rows:
        before = llm_rows[row.id]
        s0, s1 = before.structure(), row.structure()
        for tag, s in (("before", s0), ("after", s1)):
            if s is None:
                continue
            counts[f"structural_{tag}"] += M.structurally_valid(s)
            counts[f"pair_rule_{tag}"] += closest_pair(s)[0] >= 1.0
            counts[f"smact_{tag}"] += M.compositionally_valid(s.composition)
        counts["valid_flag"] += bool(row.valid)
        counts["refined"] += bool(row.refined)
        if s0 is not None and s1 is not None:
            counts["composition_kept"] += s0.composition == s1.composition
            counts["group_kept_declared"] += row.group == before.group
            counts["wyckoff_kept"] += _wyckoff(row.record) == _wyckoff(before.record)
            counts["detected_equals_declared_after"] += detect_group(s1, dim, symprec=0.01) == row.group.number
    rates = {k: v / max(n, 1) for k, v in sorted(counts.items())}
    rates["samples"] = n
    return rates


def _energy_per_atom(structure, calc) -> float:
    """A single point (eV/atom) of a pymatgen structure with an ASE calculator."""
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    return float(atoms.get_potential_energy()) / len(atoms)


def energies(pairs: list, limit: int) -> dict:
    """SevenNet-0 single-point energy per atom, LLM vs refined, same ids (same composition, so the MP2020
    correction, identical on both sides, is left out)."""
    import numpy as np

    from xtallm.pipelines.evaluation.stability import load_calculator

    calc = load_calculator("sevennet", "cpu")
    before, after = [], []
    for s0, s1 in pairs[:limit]:
        e = []
        for s in (s0, s1):
            e.append(_energy_per_atom(s, calc))
        before.append(e[0])
        after.append(e[1])
    b, a = np.array(before), np.array(after)
    q = lambda x: [float(np.percentile(x, p)) for p in (10, 25, 50, 75, 90)]  # noqa: E731
    return {"n": len(b), "median_before": float(np.median(b)), "median_after": float(np.median(a)),
            "median_change": float(np.median(a - b)), "share_lower_after": float(np.mean(a < b)),
            "quantiles_before": q(b), "quantiles_after": q(a), "quantiles_change": q(a - b)}


def score(args) -> None:
    from xtallm.pipelines.evaluation import metrics as M
    from xtallm.pipelines.samples import read_samples

    result = {"name": args.name, "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {_cores()} cores",
              "command": " ".join(sys.argv), "heldout": HELDOUT.name, "sets": {}}
    energy_pairs = []
    for name in args.sets:
        llm = {r.id: r for r in read_samples(Path(args.work) / "llm" / name / "samples.jsonl")}
        out = Path(args.work) / args.name / name
        rows = list(read_samples(out / "samples.jsonl"))
        scored = score_set(llm, rows, 2 if name == "lg" else 3)
        summary = json.loads((out / "summary.json").read_text())
        scored["refine_seconds"] = summary.get("seconds")
        scored["structures_per_s"] = summary.get("structures_per_s")
        result["sets"][name] = scored
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in scored.items()}), flush=True)
        if name == "uncond" and args.energy:
            for r in rows:
                s0, s1 = llm[r.id].structure(), r.structure()
                if s0 is not None and s1 is not None and M.structurally_valid(s0) and M.structurally_valid(s1):
                    energy_pairs.append((s0, s1))
    if energy_pairs:
        result["energy_uncond"] = energies(energy_pairs, args.energy)
        print("energy", json.dumps(result["energy_uncond"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"refiner_repair_{args.name}.json"
    if path.exists():  # sets scored by an earlier call are kept (each set's own figures and command)
        earlier = json.loads(path.read_text())
        for name, figures in earlier.get("sets", {}).items():
            result["sets"].setdefault(name, {**figures, "command": earlier.get("command")})
        if "energy_uncond" in earlier and "energy_uncond" not in result:
            result["energy_uncond"] = earlier["energy_uncond"]
    path.write_text(json.dumps(result, indent=1))
    print("->", path)


def energy_split(args) -> None:
    """Two refined variants of the same LLM rows against the LLM's own crystals: SevenNet-0 single-point energy per
    atom, split by whether the LLM's crystal broke the pair rule, on the rows structurally valid in both variants."""
    import numpy as np

    from xtallm.pipelines.evaluation import metrics as M
    from xtallm.pipelines.evaluation.stability import load_calculator
    from xtallm.pipelines.samples import read_samples

    from xtallm.refiner.clash import pair_distance_table

    calc = load_calculator("sevennet", "cpu")
    table = pair_distance_table()
    first, second = args.variants
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "variants": args.variants, "sets": {}}
    for name in args.sets:
        rows = {n: {r.id: r for r in read_samples(Path(args.work) / n / name / "samples.jsonl")} for n in ("llm", first, second)}
        energy: dict[str, dict[str, list[float]]] = {kind: {n: [] for n in rows} for kind in ("plausible", "clashing")}
        for i, row in rows[second].items():
            structures = [rows[n][i].structure() if i in rows[n] else None for n in rows]
            if structures[0] is None or any(s is None or not M.structurally_valid(s) for s in structures[1:]):
                continue
            kind = "clashing" if _breaks_pair_rule(structures[0], table) else "plausible"
            for n, structure in zip(rows, structures):
                energy[kind][n].append(_energy_per_atom(structure, calc))
        figures = {}
        for kind, by_variant in energy.items():
            e = {n: np.array(v) for n, v in by_variant.items()}
            change = lambda a, b: [float(np.percentile(e[a] - e[b], q)) for q in (10, 25, 50, 75, 90)]  # noqa: E731
            figures[kind] = {"n": len(e["llm"]), "median": {n: float(np.median(v)) for n, v in e.items()} if len(e["llm"]) else None,
                             f"{first}_minus_llm_10_25_50_75_90": change(first, "llm") if len(e["llm"]) else None,
                             f"{second}_minus_llm_10_25_50_75_90": change(second, "llm") if len(e["llm"]) else None,
                             f"{second}_minus_{first}_10_25_50_75_90": change(second, first) if len(e["llm"]) else None,
                             f"share_{second}_below_{first}": float(np.mean(e[second] < e[first])) if len(e["llm"]) else None}
        result["sets"][name] = figures
        print(name, json.dumps(figures), flush=True)
    path = RESULTS / f"refiner_energy_{first}_{second}.json"
    path.write_text(json.dumps(result, indent=1))
    print("->", path)


def _breaks_pair_rule(structure, table) -> bool:
    """Some pair closer than the per-pair rule (pyxtal's atomic tolerance), as the refiner's start levels see it."""
    import numpy as np

    i, j, _, d = structure.get_neighbor_list(float(table.max()) + 0.5)
    z = np.asarray(structure.atomic_numbers)
    return bool(len(d) and (d / table[z[i], z[j]]).min() < 1.0)


def diagnose(args) -> None:
    """Classify each LLM sample that breaks the per-pair rule by its closest pair: two atoms of one orbit
    (a collapsed orbit: free coordinates near a special position), atoms of two orbits (stacked orbits),
    or an atom and its own periodic image (a cell too small); and how far each is from the rule."""
    import numpy as np

    from xtallm.pipelines.samples import read_samples
    from xtallm.refiner.clash import pair_distance_table

    table = pair_distance_table()
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "sets": {}}
    for name in args.sets:
        kinds: Counter = Counter()
        ratios, sizes = [], Counter()
        rows = list(read_samples(Path(args.work) / "llm" / name / "samples.jsonl"))
        for row in rows:
            record, structure = row.record, row.structure()
            if record is None or structure is None:
                kinds["no crystal"] += 1
                continue
            site_of = np.repeat(np.arange(len(record.sites)), [s.multiplicity for s in record.sites])
            i, j, image, d = structure.get_neighbor_list(float(table.max()) + 0.5)
            if len(d) == 0:
                continue
            z = np.asarray(structure.atomic_numbers)
            ratio = d / table[z[i], z[j]]
            w = int(np.argmin(ratio))
            if ratio[w] >= 1.0:
                continue
            if i[w] == j[w]:
                kinds["own periodic image (cell too small)"] += 1
            elif site_of[i[w]] == site_of[j[w]]:
                kinds["one orbit collapsed (near a special position)"] += 1
            else:
                kinds["two orbits on one spot"] += 1
            ratios.append(float(ratio[w]))
            sizes["<=10" if record.n_atoms <= 10 else "11-20" if record.n_atoms <= 20 else "21-40" if record.n_atoms <= 40 else ">40"] += 1
        result["sets"][name] = {"samples": len(rows), "breaking_the_pair_rule": len(ratios), "by_closest_pair": dict(kinds),
                                "by_cell_size": dict(sizes),
                                "closest_pair_over_rule_quantiles": [float(np.percentile(ratios, q)) for q in (10, 50, 90)] if ratios else None}
        print(name, json.dumps(result["sets"][name]), flush=True)
    path = RESULTS / "refiner_repair_diagnosis.json"
    path.write_text(json.dumps(result, indent=1))
    print("->", path)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["sample", "refine", "score", "diagnose", "energy-split"])
    parser.add_argument("--variants", nargs=2, default=["rep50", "hyb"], help="energy-split: two refined variants (folders in --work)")
    parser.add_argument("--work", default="runs/repair")
    parser.add_argument("--name", default="refined", help="refine/score: the refined variant's folder")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--checkpoint", default=None, help="refine: a refiner checkpoint (default: the shipped one)")
    parser.add_argument("--uncond", type=int, default=1000)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--layers", type=int, default=500)
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--energy", type=int, default=0, help="score: single-point energies of this many uncond pairs")
    parser.add_argument("--model", default=None, help="sample: another LM (default: the embedded 11M; `lg` then uses its adapter)")
    parser.add_argument("--adapter", default=None, help="sample: a LoRA adapter for --model, on every set")
    args, extra = parser.parse_known_args()
    if args.what == "sample":
        sample(args)
    elif args.what == "refine":
        refine(args, extra)
    elif args.what == "diagnose":
        diagnose(args)
    elif args.what == "energy-split":
        energy_split(args)
    else:
        score(args)


if __name__ == "__main__":
    main()
