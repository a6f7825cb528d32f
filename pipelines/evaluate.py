"""`xtallm evaluate`: metrics of a set of samples against reference and training crystals.

Samples: the sampler's/refiner's samples.jsonl, or a folder of CIFs. Reference: a CSV with a
`cif` column (e.g. the held-out split). Train: CSVs novelty is checked against.
Writes `metrics.json` (stable keys, rates as fractions of ALL samples; null where a metric was
not computed, with the reason under `not_computed`) and `summary.md`.
"""

from __future__ import annotations

import json
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from tokenization.formats import parse_cif
from tokenization.record import detect_group

from . import metrics as M
from .records import read_samples

METRIC_KEYS = (
    "n_samples", "parse_rate", "struct_validity", "comp_validity", "validity", "uniqueness", "novelty",
    "cov_recall", "cov_precision", "wdist_density", "wdist_n_elements", "sg_jsd", "p1_rate", "wyckoff_jsd",
    "stable_rate", "metastable_rate", "sun_rate", "msun_rate",
)


def _parse(cif: str | None) -> Structure | None:
    if not cif:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parse_cif(cif)
    except ValueError:
        return None


def _parse_many(cifs: list[str | None], num_proc: int, desc: str) -> list[Structure | None]:
    if num_proc <= 1 or len(cifs) < 64:
        return [_parse(c) for c in tqdm(cifs, desc=desc, leave=False)]
    with ProcessPoolExecutor(num_proc) as pool:
        return list(tqdm(pool.map(_parse, cifs, chunksize=64), total=len(cifs), desc=desc, leave=False))


def load_samples(path: str | Path) -> list[dict[str, Any]]:
    """Rows with at least id, ok, cif, group; a folder of CIFs becomes such rows."""
    path = Path(path)
    if path.is_dir():
        return [{"id": p.stem, "ok": True, "cif": p.read_text(), "group": None, "dim": 3} for p in sorted(path.glob("*.cif"))]
    rows = list(read_samples(path))
    if not rows:
        raise ValueError(f"{path}: no samples")
    return rows


def _cif_column(table: pd.DataFrame, csv: str | Path) -> str:
    """`cif_layer_std` for layer tables (vacuum along c), else `cif`."""
    for column in ("cif_layer_std", "cif"):
        if column in table.columns:
            return column
    raise ValueError(f"{csv}: no 'cif' (or 'cif_layer_std') column")


def read_reference(csv: str | Path, num_proc: int) -> tuple[list[Structure], list[str], list[bool]]:
    """Parsed structures (unreadable rows dropped), the CIF texts of those rows, and which are monolayers.

    A row is a monolayer when the table's CIFs are `cif_layer_std` (2DMatPedia, MC2D) or its
    `dim` column says 2 (the references `pipelines.training_data` writes, bulk and 2D mixed)."""
    table = pd.read_csv(csv)
    column = _cif_column(table, csv)
    cifs = table[column].tolist()
    layer = [True] * len(table) if column == "cif_layer_std" else (table["dim"] == 2).tolist() if "dim" in table else [False] * len(table)
    parsed = _parse_many(cifs, num_proc, f"reading {Path(csv).name}")
    kept = [(s, c, is2d) for s, c, is2d in zip(parsed, cifs, layer) if s is not None]
    return [s for s, _, _ in kept], [c for _, c, _ in kept], [is2d for _, _, is2d in kept]


def load_structures(csv: str | Path, num_proc: int) -> list[Structure]:
    return read_reference(csv, num_proc)[0]


def is_layer_sample(row: dict[str, Any]) -> bool:
    """A sample that claims to be a monolayer (dim=2 or a layer-group condition)."""
    conditions = row.get("conditions") or {}
    return row.get("dim") == 2 or conditions.get("dim") == 2 or "lg" in conditions


def _as_layer(s: Structure | None) -> Structure | None:
    if s is None:
        return None
    try:
        return M.with_vacuum(s)
    except Exception:  # not a slab at all: matched as it is
        return s


def evaluate(
    samples: str | Path,
    reference: str | Path,
    train: list[str | Path] | None = None,
    num_proc: int = 2,
    train_meta: list[str | Path] | None = None,
    *,
    coverage: bool = True,
    coverage_cutoffs: str | tuple[float, float] = "mp20",
    coverage_all_parsed: bool = False,
    hull: str | Path | None = None,
    mlff: str | None = None,
    stability_subsample: int | None = None,
    relax_steps: int = 1500,
    fmax: float = 0.05,
    device: str | None = None,
    seed: int = 0,
    use_cache: bool = True,
    relaxed: str | Path | None = None,
) -> dict[str, Any]:
    """All metrics; `train_meta` are formula + cell tables (no positions) that also count as known.

    Train tables with a `cif_layer_std` column are 2D references: monolayer samples are matched
    against those (both at the same vacuum), bulk samples against the bulk tables. `relaxed` is the
    output of `xtallm relax` on these samples: the valid samples found there are the stability
    subsample, and their relaxations are read, not recomputed.
    """
    from . import coverage as C

    stability_job = None
    if hull is not None or mlff is not None:  # refuse mixed scales before any expensive work
        from . import stability as S

        if mlff is not None:
            S.check_mlff(mlff)
        hull_obj = S.Hull(hull, mlff) if hull is not None else None
        potential = mlff or (hull_obj.mlff if hull_obj is not None else None)
        cache = None
        if relaxed is not None:
            from .relax import done_ids

            cache = done_ids(relaxed)
            if not cache:
                raise ValueError(f"{relaxed}: no relaxations (write them with `xtallm relax`)")
            if used := {r.get("mlff") for r in cache.values()} - {potential}:
                raise S.MixedEnergyScalesError(f"{relaxed} holds relaxations with {sorted(used)}, the hull/--mlff is {potential}")
        stability_job = (hull_obj, potential, cache)
    elif relaxed is not None:
        raise ValueError("--relaxed needs --hull (the relaxations are scored against it)")
    rows = load_samples(samples)
    n = len(rows)
    structures = _parse_many([r.get("cif") if r.get("ok") else None for r in rows], num_proc, "reading samples")
    layer = [is_layer_sample(r) for r in rows]
    ref, ref_cifs, ref_layer = read_reference(reference, num_proc)
    result: dict[str, Any] = {k: None for k in METRIC_KEYS}
    not_computed: dict[str, str] = {}
    result["n_samples"] = n
    result["parse_rate"] = sum(s is not None for s in structures) / n
    struct_ok = [M.structurally_valid(s) for s in tqdm(structures, desc="structural validity", leave=False)]
    comp_ok = [M.compositionally_valid(s.composition if s is not None else None) for s in structures]
    valid_flags = [a and b for a, b in zip(struct_ok, comp_ok)]
    result["struct_validity"] = sum(struct_ok) / n
    result["comp_validity"] = sum(comp_ok) / n
    result["validity"] = sum(valid_flags) / n
    matchable = [_as_layer(s) if is2d else s for s, is2d in zip(structures, layer)]
    unique = set(M.unique_indices(matchable))
    result["uniqueness"] = len(unique) / n
    novel: list[bool] | None = None
    if train or train_meta:
        bulk_refs: list[Structure] = []
        layer_refs: list[Structure] = []
        for t in train or []:
            structs, _, is_layer = read_reference(t, num_proc)
            layer_refs += [x for x in (_as_layer(s) for s, is2d in zip(structs, is_layer) if is2d) if x is not None]
            bulk_refs += [s for s, is2d in zip(structs, is_layer) if not is2d]
        index = M.ReferenceIndex(bulk_refs)
        index_2d = M.ReferenceIndex(layer_refs)
        lattices = M.LatticeIndex(pd.concat([pd.read_csv(t) for t in train_meta])) if train_meta else None
        novel = [s is not None and (not index_2d.contains(s) if is2d else
                                    not index.contains(s) and not (lattices is not None and lattices.contains(s)))
                 for s, is2d in tqdm(list(zip(matchable, layer)), desc="novelty", leave=False)]
        result["novelty"] = sum(novel) / n
        result["n_train_reference"] = len(index) + len(index_2d) + (len(lattices) if lattices else 0)
        if any(layer):
            result["n_train_reference_2d"] = len(index_2d)
    else:
        not_computed["novelty"] = "no --train / --train-meta sets given"
    valid = [s for s, ok in zip(structures, valid_flags) if ok]
    result["wdist_density"] = M.wdist([s.density for s in valid], [s.density for s in ref])
    result["wdist_n_elements"] = M.wdist([len(s.composition.elements) for s in valid], [len(s.composition.elements) for s in ref])
    if coverage:
        struct_cut, comp_cut = C.cutoffs(coverage_cutoffs)
        ref_struct, ref_comp = C.reference_fingerprints(reference, ref_cifs, num_proc, column=_cif_column(pd.read_csv(reference, nrows=0), reference), use_cache=use_cache)
        # the protocol: valid samples only; CDVAE's script itself fingerprints every constructed sample
        covered = [s for s in structures if s is not None] if coverage_all_parsed else valid
        fp_struct, fp_comp = C.fingerprints(covered, num_proc, desc="coverage fingerprints")
        cov = C.coverage(fp_struct, fp_comp, ref_struct, ref_comp, n, struct_cut, comp_cut)
        result["cov_recall"], result["cov_precision"] = cov.pop("cov_recall"), cov.pop("cov_precision")
        result["coverage"] = {**cov, "struct_cutoff": struct_cut, "comp_cutoff": comp_cut,
                              "cutoffs": coverage_cutoffs if isinstance(coverage_cutoffs, str) else "custom",
                              "samples": "all parsed" if coverage_all_parsed else "valid"}
    else:
        not_computed["cov_recall"] = not_computed["cov_precision"] = "coverage switched off (--no-coverage)"
    groups = [r.get("group") if r.get("group") is not None else (detect_group(s, 3, 0.1) if s is not None else None)
              for r, s in zip(rows, structures)]
    ref_groups = [detect_group(s, 3, 0.1) for s in tqdm(ref, desc="reference groups", leave=False)]
    parsed_groups = [g for g, s in zip(groups, structures) if s is not None]
    result["sg_jsd"] = M.distribution_jsd(parsed_groups, ref_groups) if parsed_groups else None
    result["p1_rate"] = sum(g == 1 for g in parsed_groups) / n
    result["n_reference"] = len(ref)
    plots: dict[str, Any] = {}
    layer_refs_heldout = [s for s, is2d in zip(ref, ref_layer) if is2d]
    result.update(_layer_metrics(rows, structures, layer_refs_heldout or None, unique, novel, plots))
    sample_labels = [label for r, s in zip(rows, structures) if s is not None for label in _wyckoff_of(r, s)]
    ref_labels = [label for s in tqdm(ref, desc="reference Wyckoff sites", leave=False) for label in _wyckoff_of({}, s)]
    result["wyckoff_jsd"] = M.distribution_jsd(sample_labels, ref_labels) if sample_labels and ref_labels else None
    result["conditional_accuracy"], not_evaluated = _conditional_accuracy(rows, structures, groups)
    if not_evaluated:
        not_computed["conditional_accuracy"] = f"no property predictor for {', '.join(sorted(not_evaluated))}: not evaluated"
    if stability_job is not None:
        hull_obj, potential, cache = stability_job
        result.update(_stability(rows, structures, valid_flags, layer, unique, novel, hull_obj, potential,
                                 stability_subsample, relax_steps, fmax, device, seed, not_computed, plots, cache))
    else:
        for key in ("stable_rate", "metastable_rate", "sun_rate", "msun_rate"):
            not_computed[key] = "no --hull given (build one with `xtallm hull build`)"
    plots.update({
        "sample_groups": parsed_groups, "reference_groups": ref_groups,
        "sample_density": [s.density for s in valid], "reference_density": [s.density for s in ref],
        "sample_n_elements": [len(s.composition.elements) for s in valid],
        "reference_n_elements": [len(s.composition.elements) for s in ref],
    })
    result["_plots"] = plots
    result["not_computed"] = not_computed
    return result


def _stability(rows, structures, valid_flags, layer, unique, novel, hull, mlff, subsample, relax_steps, fmax, device,
               seed, not_computed, plots, cache=None) -> dict[str, Any]:
    """Relax valid samples with the MLFF, e_above_hull against the hull; rates estimated over ALL samples.

    With a subsample of the valid samples, a rate is (share among the relaxed) x (valid / all): the
    invalid samples count as unstable, the subsample stands for the valid ones.
    """
    import numpy as np

    from . import stability as S

    n = len(rows)
    valid_idx = [i for i, ok in enumerate(valid_flags) if ok]
    rng = np.random.default_rng(seed)
    pool = valid_idx if cache is None else [i for i in valid_idx if str(rows[i].get("id", i)) in cache]
    chosen = sorted(rng.choice(pool, subsample, replace=False).tolist()) if subsample and subsample < len(pool) else pool
    out: dict[str, Any] = {"mlff": mlff, "stability_relax_steps": relax_steps}
    if cache is not None:
        out["stability_relaxations"] = "read from `xtallm relax` output (valid samples found there form the subsample)"
    layer_valid = [i for i in valid_idx if layer[i]]
    calc = S.load_calculator(mlff, device) if layer_valid or (hull is not None and chosen and cache is None) else None
    energies_2d = []
    for i in tqdm(layer_valid[: subsample or None], desc="monolayer energies", leave=False):
        r = S.relax(structures[i], calc, steps=0, dim=2)
        if r.energy_per_atom is not None:
            energies_2d.append(r.energy_per_atom)
    if any(layer):
        out["mean_2d_energy_per_atom"] = float(np.mean(energies_2d)) if energies_2d else None
        out["n_2d_energy"] = len(energies_2d)
    if hull is None:
        for key in ("stable_rate", "metastable_rate", "sun_rate", "msun_rate"):
            not_computed[key] = "no --hull given (build one with `xtallm hull build`)"
        return out
    details = []
    for i in tqdm(chosen, desc=f"relaxing ({mlff})"):
        if cache is not None:
            from .relax import cached_relaxation

            r = cached_relaxation(cache[str(rows[i].get("id", i))])
        else:
            r = S.relax(structures[i], calc, steps=relax_steps, fmax=fmax, dim=2 if layer[i] else 3)
        e_hull, reason = None, r.error
        if r.energy is not None:
            corrected, reason = S.corrected_energy(mlff, r.structure, r.energy)
            if corrected is not None:
                e_hull, reason = hull.e_above_hull(r.structure.composition, corrected)
        details.append({"id": rows[i].get("id", i), "index": i, "e_above_hull": e_hull, "energy_per_atom": r.energy_per_atom,
                        "steps": r.steps, "converged": r.converged, "error": reason,
                        "unique": i in unique, "novel": None if novel is None else bool(novel[i])})
    k = len(chosen)
    scale = len(valid_idx) / n / k if k else 0.0
    stable = [d["e_above_hull"] is not None and d["e_above_hull"] <= 0.0 for d in details]
    meta = [d["e_above_hull"] is not None and d["e_above_hull"] <= 0.1 for d in details]
    out.update({
        "stable_rate": sum(stable) * scale, "metastable_rate": sum(meta) * scale,
        "n_relaxed": k, "n_valid": len(valid_idx), "n_relax_failed": sum(d["e_above_hull"] is None for d in details),
        "stability_denominator": "all samples (invalid ones count as unstable; a subsample of the valid ones stands for all of them)",
    })
    if novel is not None:
        sun = [s and d["unique"] and d["novel"] for s, d in zip(stable, details)]
        msun = [s and d["unique"] and d["novel"] for s, d in zip(meta, details)]
        out["sun_rate"], out["msun_rate"] = sum(sun) * scale, sum(msun) * scale
    else:
        not_computed["sun_rate"] = not_computed["msun_rate"] = "S.U.N. needs novelty: give --train / --train-meta"
    if not k:
        not_computed["stable_rate"] = "no valid sample to relax"
    plots["e_above_hull"] = [d["e_above_hull"] for d in details if d["e_above_hull"] is not None]
    out["_stability_details"] = details
    return out


def _wyckoff_of(row: dict[str, Any], structure: Structure) -> list[str]:
    """Wyckoff labels from the sample's own text when it is a wyckoff record, else by analysis."""
    from tokenization import get_format
    from tokenization.errors import XtallmError
    from tokenization.record import CrystalRecord

    try:
        if row.get("text") and str(row["text"]).lstrip().startswith(("sg ", "lg ")):
            return M.wyckoff_labels(get_format("wyckoff").decode_record(row["text"]))
        return M.wyckoff_labels(CrystalRecord.from_structure(structure, dim=row.get("dim") or 3))
    except (XtallmError, ValueError):
        return []


def _layer_metrics(rows, structures, layer_refs, unique, novel, plots) -> dict[str, Any]:
    """Monolayer checks over the samples that claim dim=2 (rates over all of those samples).

    `layer_refs`: the reference structures when the reference is a layer table (thickness
    distribution); `unique`/`novel`: the sample-level flags (2D samples were matched against
    2D references only).
    """
    indices = [i for i, r in enumerate(rows) if is_layer_sample(r)]
    if not indices:
        return {}
    n = len(indices)
    detected, contiguous, vacuum_ok, requested, matched, thickness = 0, 0, 0, 0, 0, []
    for i in indices:
        row, s = rows[i], structures[i]
        if s is None:
            continue
        lg = detect_group(s, 2, symprec=0.1)
        detected += lg is not None
        geometry = M.layer_geometry(s)
        contiguous += geometry["contiguous"]
        vacuum_ok += geometry["vacuum_ok"]
        thickness.append(geometry["thickness"])
        want = (row.get("conditions") or {}).get("lg")
        if want is not None:
            requested += 1
            matched += lg == want
    out = {
        "n_2d": n,
        "layer_group_detected_rate": detected / n,
        "slab_contiguous_rate": contiguous / n,
        "vacuum_ok_rate": vacuum_ok / n,
        "lg_match_rate": matched / requested if requested else None,
        "mean_thickness": float(sum(thickness) / len(thickness)) if thickness else None,
        "uniqueness_2d": sum(i in unique for i in indices) / n,
        "novelty_2d": sum(novel[i] for i in indices) / n if novel is not None else None,
        "wdist_thickness": None,
    }
    if layer_refs:
        ref_thickness = []
        for s in layer_refs:
            try:
                ref_thickness.append(M.layer_geometry(s)["thickness"])
            except Exception:  # a reference that is not a slab has no thickness
                continue
        out["wdist_thickness"] = M.wdist(thickness, ref_thickness)
        plots["sample_thickness"], plots["reference_thickness"] = thickness, ref_thickness
    return out


def _conditional_accuracy(rows, structures, groups) -> tuple[dict[str, Any], set[str]]:
    """Share of parsed samples honouring each requested condition."""
    hits: dict[str, list[bool]] = {}
    not_evaluated: set[str] = set()
    for row, s, g in zip(rows, structures, groups):
        requested = row.get("conditions") or {}
        not_evaluated |= {k for k in requested if k in ("band_gap", "formation_energy", "e_above_hull", "mag_density", "hhi")}
        if s is None:
            continue
        for key, ok in M.condition_accuracy(requested, s, g).items():
            hits.setdefault(key, []).append(ok)
    return {k: {"rate": sum(v) / len(v), "n": len(v)} for k, v in hits.items()}, not_evaluated


def write_plots(result: dict[str, Any], out: Path) -> list[Path]:
    """Space-group histogram, density and #elements distributions, samples vs reference."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = result.get("_plots") or {}
    paths = []
    fig, ax = plt.subplots(figsize=(10, 3.5))
    bins = range(1, 232)
    ax.hist([data.get("reference_groups") or [], data.get("sample_groups") or []], bins=bins, density=True,
            label=["reference", "samples"], histtype="step")
    ax.set_xlabel("space group")
    ax.set_ylabel("fraction")
    ax.legend()
    paths.append(out / "space_groups.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].hist([data.get("reference_density") or [], data.get("sample_density") or []], bins=40, density=True,
                 label=["reference", "valid samples"], histtype="step")
    axes[0].set_xlabel("density (g/cm$^3$)")
    axes[0].legend()
    axes[1].hist([data.get("reference_n_elements") or [], data.get("sample_n_elements") or []], bins=[k + 0.5 for k in range(10)], density=True,
                 label=["reference", "valid samples"], histtype="bar")
    axes[1].set_xlabel("number of elements")
    axes[1].legend()
    paths.append(out / "distributions.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    if data.get("e_above_hull"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        e = np.clip(np.asarray(data["e_above_hull"]), -0.5, 2.0)
        ax.hist(e, bins=50)
        for x, label in ((0.0, "stable"), (0.1, "metastable")):
            ax.axvline(x, color="k", ls="--", lw=0.8)
            ax.text(x, ax.get_ylim()[1] * 0.9, f" {label}", fontsize=8)
        ax.set_xlabel("E above hull (eV/atom, clipped to [-0.5, 2])")
        ax.set_ylabel("relaxed samples")
        paths.append(out / "e_above_hull.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    if data.get("sample_thickness") and data.get("reference_thickness"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist([data["reference_thickness"], data["sample_thickness"]], bins=40, density=True,
                label=["reference", "2D samples"], histtype="step")
        ax.set_xlabel("monolayer thickness (Å)")
        ax.legend()
        paths.append(out / "thickness.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return paths


def write_report(result: dict[str, Any], out: str | Path) -> None:
    """metrics.json, summary.md (with the denominators), PNG plots and, with stability, stability.csv."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(result, out)
    details = result.get("_stability_details")
    if details:
        pd.DataFrame(details).to_csv(out / "stability.csv", index=False)
    result = {k: v for k, v in result.items() if not k.startswith("_")}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    lines = ["# Evaluation", "", "| metric | value |", "|---|---|"]
    extra_keys = ("n_2d", "layer_group_detected_rate", "lg_match_rate", "slab_contiguous_rate", "vacuum_ok_rate", "mean_thickness",
                  "wdist_thickness", "uniqueness_2d", "novelty_2d", "mean_2d_energy_per_atom", "mlff", "n_relaxed", "n_relax_failed")
    for key in METRIC_KEYS + tuple(k for k in extra_keys if k in result):
        value = result.get(key)
        text = "—" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"| {key} | {text} |")
    for key, acc in (result.get("conditional_accuracy") or {}).items():
        lines.append(f"| condition `{key}` honoured | {acc['rate']:.4f} (of {acc['n']} parsed) |")
    n = result["n_samples"]
    lines += ["", "Denominators: every rate is over all {n} samples (unparseable ones included) unless said otherwise.".format(n=n)]
    if result.get("coverage"):
        c = result["coverage"]
        lines.append(f"COV-R is over the {c['n_reference_fingerprinted']} reference crystals with a fingerprint; COV-P counts the "
                     f"{c['n_fingerprinted']} {c['samples']} samples with a fingerprint and divides by all {n} samples (CDVAE's convention); "
                     f"cutoffs: structure {c['struct_cutoff']}, composition {c['comp_cutoff']} ({c['cutoffs']}).")
    if "n_2d" in result:
        lines.append(f"2D rates (`*_2d`, layer checks) are over the {result['n_2d']} samples that claim to be monolayers; "
                     "2D samples are matched against 2D references only (both at 15 Å vacuum).")
    if result.get("n_relaxed") is not None:
        lines.append(f"Stability: {result['n_relaxed']} of {result['n_valid']} valid samples relaxed with {result['mlff']} "
                     f"(FIRE, FrechetCellFilter, <= {result['stability_relax_steps']} steps); stable: E_hull <= 0, metastable: <= 0.1 eV/atom; "
                     f"stable/metastable/S.U.N./M.S.U.N. rates are over all {n} samples (invalid samples count as unstable; "
                     "the relaxed share stands for all valid samples); unique and novel are judged on the generated (unrelaxed) "
                     f"structures; {result['n_relax_failed']} relaxations failed (reasons in stability.csv).")
    if result.get("mean_2d_energy_per_atom") is not None:
        lines.append(f"`mean_2d_energy_per_atom`: single-point {result['mlff']} energy (raw, uncorrected) of {result['n_2d_energy']} valid monolayers.")
    if result.get("not_computed"):
        lines += ["", "Not computed:", ""] + [f"- `{k}`: {v}" for k, v in result["not_computed"].items()]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
