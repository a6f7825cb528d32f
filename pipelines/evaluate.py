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


def load_structures(csv: str | Path, num_proc: int) -> list[Structure]:
    df = pd.read_csv(csv)
    if "cif" not in df.columns:
        raise ValueError(f"{csv}: no 'cif' column")
    return [s for s in _parse_many(df["cif"].tolist(), num_proc, f"reading {Path(csv).name}") if s is not None]


def evaluate(
    samples: str | Path,
    reference: str | Path,
    train: list[str | Path] | None = None,
    num_proc: int = 2,
    train_meta: list[str | Path] | None = None,
) -> dict[str, Any]:
    """All metrics; `train_meta` are formula + cell tables (no positions) that also count as known."""
    rows = load_samples(samples)
    n = len(rows)
    structures = _parse_many([r.get("cif") if r.get("ok") else None for r in rows], num_proc, "reading samples")
    ref = load_structures(reference, num_proc)
    result: dict[str, Any] = {k: None for k in METRIC_KEYS}
    not_computed: dict[str, str] = {}
    result["n_samples"] = n
    result["parse_rate"] = sum(s is not None for s in structures) / n
    struct_ok = [M.structurally_valid(s) for s in tqdm(structures, desc="structural validity", leave=False)]
    comp_ok = [M.compositionally_valid(s.composition if s is not None else None) for s in structures]
    result["struct_validity"] = sum(struct_ok) / n
    result["comp_validity"] = sum(comp_ok) / n
    result["validity"] = sum(a and b for a, b in zip(struct_ok, comp_ok)) / n
    unique = M.unique_indices(structures)
    result["uniqueness"] = len(unique) / n
    if train or train_meta:
        index = M.ReferenceIndex(s for t in (train or []) for s in load_structures(t, num_proc))
        lattices = M.LatticeIndex(pd.concat([pd.read_csv(t) for t in train_meta])) if train_meta else None
        novel = M.novelty_flags(tqdm(structures, desc="novelty", leave=False), index, lattices)
        result["novelty"] = sum(novel) / n
        result["n_train_reference"] = len(index) + (len(lattices) if lattices else 0)
    else:
        not_computed["novelty"] = "no --train / --train-meta sets given"
    valid = [s for s, a, b in zip(structures, struct_ok, comp_ok) if a and b]
    result["wdist_density"] = M.wdist([s.density for s in valid], [s.density for s in ref])
    result["wdist_n_elements"] = M.wdist([len(s.composition.elements) for s in valid], [len(s.composition.elements) for s in ref])
    groups = [r.get("group") if r.get("group") is not None else (detect_group(s, 3, 0.1) if s is not None else None)
              for r, s in zip(rows, structures)]
    ref_groups = [detect_group(s, 3, 0.1) for s in tqdm(ref, desc="reference groups", leave=False)]
    parsed_groups = [g for g, s in zip(groups, structures) if s is not None]
    result["sg_jsd"] = M.distribution_jsd(parsed_groups, ref_groups) if parsed_groups else None
    result["p1_rate"] = sum(g == 1 for g in parsed_groups) / n
    result["n_reference"] = len(ref)
    result.update(_layer_metrics(rows, structures))
    sample_labels = [label for r, s in zip(rows, structures) if s is not None for label in _wyckoff_of(r, s)]
    ref_labels = [label for s in tqdm(ref, desc="reference Wyckoff sites", leave=False) for label in _wyckoff_of({}, s)]
    result["wyckoff_jsd"] = M.distribution_jsd(sample_labels, ref_labels) if sample_labels and ref_labels else None
    result["conditional_accuracy"], not_evaluated = _conditional_accuracy(rows, structures, groups)
    if not_evaluated:
        not_computed["conditional_accuracy"] = f"no property predictor for {', '.join(sorted(not_evaluated))}: not evaluated"
    result["_plots"] = {
        "sample_groups": parsed_groups, "reference_groups": ref_groups,
        "sample_density": [s.density for s in valid], "reference_density": [s.density for s in ref],
        "sample_n_elements": [len(s.composition.elements) for s in valid],
        "reference_n_elements": [len(s.composition.elements) for s in ref],
    }
    for key, reason in {
        "cov_recall": "coverage fingerprints not implemented yet",
        "cov_precision": "coverage fingerprints not implemented yet",
        "stable_rate": "MLFF stability not implemented yet",
        "metastable_rate": "MLFF stability not implemented yet",
        "sun_rate": "MLFF stability not implemented yet",
        "msun_rate": "MLFF stability not implemented yet",
    }.items():
        not_computed[key] = reason
    result["not_computed"] = not_computed
    return result


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


def _layer_metrics(rows, structures) -> dict[str, Any]:
    """Monolayer checks over the samples that claim dim=2 (rates over all of those samples)."""
    layers = [(r, s) for r, s in zip(rows, structures) if r.get("dim") == 2 or (r.get("conditions") or {}).get("dim") == 2
              or "lg" in (r.get("conditions") or {})]
    if not layers:
        return {}
    n = len(layers)
    detected, contiguous, vacuum_ok, requested, matched, thickness = 0, 0, 0, 0, 0, []
    for row, s in layers:
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
    return {
        "n_2d": n,
        "layer_group_detected_rate": detected / n,
        "slab_contiguous_rate": contiguous / n,
        "vacuum_ok_rate": vacuum_ok / n,
        "lg_match_rate": matched / requested if requested else None,
        "mean_thickness": float(sum(thickness) / len(thickness)) if thickness else None,
    }


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
    return paths


def write_report(result: dict[str, Any], out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(result, out)
    result = {k: v for k, v in result.items() if k != "_plots"}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    lines = ["# Evaluation", "", "| metric | value |", "|---|---|"]
    layer_keys = ("n_2d", "layer_group_detected_rate", "lg_match_rate", "slab_contiguous_rate", "vacuum_ok_rate", "mean_thickness")
    for key in METRIC_KEYS + tuple(k for k in layer_keys if k in result):
        value = result.get(key)
        text = "—" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"| {key} | {text} |")
    for key, acc in (result.get("conditional_accuracy") or {}).items():
        lines.append(f"| condition `{key}` honoured | {acc['rate']:.4f} (of {acc['n']} parsed) |")
    if result.get("not_computed"):
        lines += ["", "Not computed:", ""] + [f"- `{k}`: {v}" for k, v in result["not_computed"].items()]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
