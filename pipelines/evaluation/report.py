"""metrics.json, summary.md (with the denominators), PNG plots and stability.csv of an evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .evaluate import METRIC_KEYS


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
    if requests := data.get("property_requests"):
        fig, axes = plt.subplots(1, len(requests), figsize=(4 * len(requests), 3.8), squeeze=False)
        for ax, (key, (requested, achieved, unit)) in zip(axes[0], requests.items()):
            jitter = np.random.default_rng(0).normal(0, 0.02 * (np.ptp(requested) or 1), len(requested))
            ax.scatter(np.asarray(requested) + jitter, achieved, s=6, alpha=0.5)
            low, high = min(min(requested), min(achieved)), max(max(requested), max(achieved))
            ax.plot([low, high], [low, high], "k--", lw=0.8)
            ax.set_xlabel(f"requested {key} ({unit})" if unit else f"requested {key}")
            ax.set_ylabel("achieved (predictor)")
        paths.append(out / "property_requests.png")
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
    extra_keys = ("lg_jsd", "n_2d", "layer_group_detected_rate", "lg_match_rate", "slab_contiguous_rate", "vacuum_ok_rate", "mean_thickness",
                  "wdist_thickness", "uniqueness_2d", "novelty_2d", "mean_2d_energy_per_atom", "mlff", "n_relaxed", "n_relax_failed")
    for key in METRIC_KEYS + tuple(k for k in extra_keys if k in result):
        value = result.get(key)
        text = "—" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"| {key} | {text} |")
    for key, acc in (result.get("conditional_accuracy") or {}).items():
        lines.append(f"| condition `{key}` honoured | {acc['rate']:.4f} (of {acc['n']} parsed) |")
    for key, r in (result.get("property_requests") or {}).items():
        held = r.get("predictor_heldout") or {}
        error = (f"held-out MAE {held['mae']:.3f} {r['unit']} on {held['split']}" if held else "exact")
        tolerance = f"{r['tolerance']:.0%} of the request" if r["tolerance_relative"] else f"{r['tolerance']:g} {r['unit']}"
        lines.append(f"| `{key}` requested vs achieved: MAE ({r['unit'] or 'units'}) | {r['mae']:.4f} (of {r['n_scored']} valid, "
                     f"{r['n_requested']} requested; shuffled requests: {r['shuffled_mae']:.4f}; within {tolerance}: "
                     f"{r['within_tolerance']:.4f}, shuffled {r['shuffled_within_tolerance']:.4f}; predictor: {r['predictor']}, {error}) |")
    if fe := result.get("formation_energy_conditioning"):
        lines.append(f"| `formation_energy` requested vs achieved: MAE (eV/atom) | {fe['mae']:.4f} (of {fe['n_scored']} relaxed, "
                     f"{fe['n_requested']} requested; within 0.1: {fe['within_0.1']:.4f}; achieved = {fe['achieved_by']}) |")
    if result.get("by_dim"):
        split = result["by_dim"]
        keys = [k for k in split["bulk"] if k in split["2d"]]
        lines += ["", "Bulk and monolayer samples separately (rates within each):", "", "| metric | bulk | 2D |", "|---|---|---|"]
        for key in keys:
            cells = [split[d][key] for d in ("bulk", "2d")]
            lines.append(f"| {key} | " + " | ".join("—" if c is None else f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    n = result["n_samples"]
    lines += ["", "Denominators: every rate is over all {n} samples (unparseable ones included) unless said otherwise.".format(n=n)]
    if result.get("coverage"):
        c = result["coverage"]
        lines.append(f"Coverage follows CDVAE's `compute_cov` (what published MP-20 figures use): COV-R is over the "
                     f"{c['n_reference_fingerprinted']} reference crystals with a fingerprint; COV-P counts the {c['n_fingerprinted']} "
                     f"samples with a fingerprint, valid or not, and divides by all {n} samples. `cov_*_valid`: the same with only the "
                     f"{c['valid_only']['n_fingerprinted']} valid samples counted. Cutoffs: structure {c['struct_cutoff']}, "
                     f"composition {c['comp_cutoff']} ({c['cutoffs']}).")
    if "n_2d" in result:
        lines.append(f"2D rates (`*_2d`, layer checks) are over the {result['n_2d']} samples that claim to be monolayers; "
                     "2D samples are matched against 2D references only (both at 15 Å vacuum).")
    if result.get("n_relaxed") is not None:
        lines.append(f"Stability: {result['n_relaxed']} of {result['n_valid']} valid samples relaxed with {result['mlff']} "
                     f"(FIRE, FrechetCellFilter, <= {result['stability_relax_steps']} steps); stable: E_hull <= 0, metastable: <= 0.1 eV/atom; "
                     f"stable/metastable/S.U.N./M.S.U.N. rates are over all {n} samples (invalid samples count as unstable; "
                     "the relaxed share stands for all valid samples); unique and novel are judged on the generated (unrelaxed) "
                     f"structures; {result['n_relax_failed']} relaxations failed (reasons in stability.csv).")
        if result.get("hull_binary_coverage") is not None:
            lines.append(f"Hull: {result['hull_entries']} entries; {result['hull_chemsys_coverage']:.1%} of the relaxed samples' chemical "
                         f"systems have a known crystal of their own, and {result['hull_binary_coverage']:.1%} of their element pairs "
                         f"have a binary compound in the hull; {result['n_far_below_hull']} relaxed samples lie more than "
                         "0.1 eV/atom below the hull, which points at missing known phases (or an MLFF artefact) rather than at a "
                         "discovery: with a sparse hull the stable rates are upper bounds.")
    if result.get("mean_2d_energy_per_atom") is not None:
        lines.append(f"`mean_2d_energy_per_atom`: single-point {result['mlff']} energy (raw, uncorrected) of {result['n_2d_energy']} valid monolayers.")
    inputs = result.get("inputs") or {}
    skipped = (inputs.get("samples_skipped") or {}).get("n_skipped", 0)
    if skipped or inputs.get("reference_unreadable") or inputs.get("n_parsed_but_unreadable_cif"):
        lines.append(f"Inputs: {skipped} sample line(s) could not be read (torn, not JSON, no id; listed in metrics.json "
                     f"`inputs`), {inputs.get('n_parsed_but_unreadable_cif', 0)} parsed sample(s) have a CIF pymatgen cannot read "
                     f"(counted as unparsed), {inputs.get('reference_unreadable', 0)} of {inputs.get('reference_rows')} reference "
                     "rows are unreadable (left out of the reference).")
    if result.get("not_computed"):
        lines += ["", "Not computed:", ""] + [f"- `{k}`: {v}" for k, v in result["not_computed"].items()]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
