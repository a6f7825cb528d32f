"""The metrics of `xtallm evaluate`, one function each, run in the order of `METRICS`.

A metric takes the `EvalContext` and returns the keys it adds to metrics.json (rates over ALL
samples unless its name says otherwise); it records what it could not compute in
`ctx.not_computed` and what is worth a plot in `ctx.plots`. A new metric is one function here
plus one line in `METRICS`.
"""

from __future__ import annotations

from typing import Any, Callable

from xtallm.tokenization.conditions import PROPERTY_COLUMNS
from xtallm.tokenization.record import detect_group

from . import metrics as M
from .context import EvalContext

PROPERTY_CONDITIONS = (*PROPERTY_COLUMNS, "hhi")  # requests scored by a predictor (properties.py), not by the text
SHUFFLES = 50  # permutations of the requests behind the no-signal floor


def parse_rate(ctx: EvalContext) -> dict[str, Any]:
    return {"n_samples": ctx.n, "parse_rate": sum(s is not None for s in ctx.structures) / ctx.n}


def validity(ctx: EvalContext) -> dict[str, Any]:
    """Structural (distances >= 0.5 Å, volume >= 0.1 Å^3) and SMACT compositional validity (CDVAE)."""
    return {"struct_validity": sum(ctx.struct_ok) / ctx.n, "comp_validity": sum(ctx.comp_ok) / ctx.n,
            "validity": sum(ctx.valid) / ctx.n}


def uniqueness(ctx: EvalContext) -> dict[str, Any]:
    return {"uniqueness": len(ctx.unique) / ctx.n}


def novelty(ctx: EvalContext) -> dict[str, Any]:
    if ctx.novel is None:
        ctx.not_computed["novelty"] = "no --train / --train-meta sets given"
        return {}
    sizes = ctx.train_sizes
    out = {"novelty": sum(ctx.novel) / ctx.n, "n_train_reference": sizes["bulk"] + sizes["2d"] + sizes["cells"]}
    if any(ctx.layer):
        out["n_train_reference_2d"] = sizes["2d"]
    return out


def distributions(ctx: EvalContext) -> dict[str, Any]:
    """Wasserstein distances of density and number of elements, valid samples vs the reference."""
    valid, ref = ctx.valid_structures, ctx.reference.structures
    ctx.plots.update(sample_density=[s.density for s in valid], reference_density=[s.density for s in ref],
                     sample_n_elements=[len(s.composition.elements) for s in valid],
                     reference_n_elements=[len(s.composition.elements) for s in ref])
    return {"wdist_density": M.wdist(ctx.plots["sample_density"], ctx.plots["reference_density"]),
            "wdist_n_elements": M.wdist(ctx.plots["sample_n_elements"], ctx.plots["reference_n_elements"])}


def coverage(ctx: EvalContext) -> dict[str, Any]:
    """COV-R / COV-P with CDVAE's fingerprints and cutoffs, under two protocols.

    `cov_recall` / `cov_precision`: CDVAE's `compute_cov`, which every published MP-20 figure uses:
    every generated crystal that has a fingerprint counts, valid or not (COV-P over all samples).
    `cov_recall_valid` / `cov_precision_valid`: only valid samples (structure + composition) count."""
    import numpy as np

    from . import coverage as C

    o = ctx.options
    if not o.coverage:
        for key in ("cov_recall", "cov_precision", "cov_recall_valid", "cov_precision_valid"):
            ctx.not_computed[key] = "coverage switched off (--no-coverage)"
        return {}
    cutoffs = C.cutoffs(o.coverage_cutoffs_value)
    ref = ctx.reference
    ref_struct, ref_comp = C.reference_fingerprints(ref.path, ref.cifs, ctx.workers, column=ref.column, use_cache=o.use_cache)
    parsed = [i for i, s in enumerate(ctx.structures) if s is not None]
    fp_struct, fp_comp = C.fingerprints([ctx.structures[i] for i in parsed], ctx.workers, desc="coverage fingerprints",
                                        keys=[ctx.samples[i].cif for i in parsed])  # a repeated crystal text: once
    valid = np.array([ctx.valid[i] for i in parsed], dtype=bool)
    cdvae = C.coverage(fp_struct, fp_comp, ref_struct, ref_comp, ctx.n, *cutoffs)
    only_valid = C.coverage(fp_struct[valid], fp_comp[valid], ref_struct, ref_comp, ctx.n, *cutoffs)
    name = o.coverage_cutoffs if "," not in o.coverage_cutoffs else "custom"
    return {"cov_recall": cdvae.pop("cov_recall"), "cov_precision": cdvae.pop("cov_precision"),
            "cov_recall_valid": only_valid.pop("cov_recall"), "cov_precision_valid": only_valid.pop("cov_precision"),
            "coverage": {**cdvae, "valid_only": only_valid, "struct_cutoff": cutoffs[0], "comp_cutoff": cutoffs[1], "cutoffs": name,
                         "protocol": {"cov_recall, cov_precision": "CDVAE compute_cov: every sample with a fingerprint, valid or not; "
                                      "COV-P divided by all samples",
                                      "cov_recall_valid, cov_precision_valid": "valid samples only; COV-P divided by all samples"}}}


def symmetry(ctx: EvalContext) -> dict[str, Any]:
    """Space-group JSD over bulk samples vs bulk references, layer-group JSD likewise for monolayers, P1 rate."""
    parsed = [g for g, s in zip(ctx.groups, ctx.structures) if s is not None]
    ref = [g for g in ctx.reference.groups if g is not None]
    bulk, bulk_ref = [g.number for g in parsed if g and g.dim == 3], [g.number for g in ref if g.dim == 3]
    layer, layer_ref = [g.number for g in parsed if g and g.dim == 2], [g.number for g in ref if g.dim == 2]
    ctx.plots.update(sample_groups=bulk, reference_groups=bulk_ref)
    out = {"sg_jsd": M.distribution_jsd(bulk, bulk_ref) if bulk and bulk_ref else None,
           "p1_rate": sum(g is not None and g.number == 1 for g in parsed) / ctx.n,
           "n_reference": len(ctx.reference.structures)}
    if bulk and not bulk_ref:
        ctx.not_computed["sg_jsd"] = "the reference holds no bulk crystals"
    if layer:
        out["lg_jsd"] = M.distribution_jsd(layer, layer_ref) if layer_ref else None
        if not layer_ref:
            ctx.not_computed["lg_jsd"] = "the reference holds no monolayers"
    return out


def wyckoff(ctx: EvalContext) -> dict[str, Any]:
    """JSD of `group:site` labels (the sample's own text when it is a Wyckoff record, else by analysis)."""
    mine = [x for labels in ctx.wyckoff for x in labels]
    ref = [x for labels in ctx.reference.wyckoff for x in labels]
    return {"wyckoff_jsd": M.distribution_jsd(mine, ref) if mine and ref else None}


def layers(ctx: EvalContext) -> dict[str, Any]:
    """Monolayer checks over the samples that claim dim=2 (rates over all of those samples)."""
    indices = [i for i, is2d in enumerate(ctx.layer) if is2d]
    if not indices:
        return {}
    n = len(indices)
    detected = contiguous = vacuum_ok = requested = matched = 0
    thickness = []
    for i in indices:
        sample, s = ctx.samples[i], ctx.structures[i]
        if s is None:
            continue
        lg = detect_group(s, 2, symprec=0.1)
        geometry = M.layer_geometry(s)
        detected += lg is not None
        contiguous += geometry["contiguous"]
        vacuum_ok += geometry["vacuum_ok"]
        thickness.append(geometry["thickness"])
        if (want := sample.conditions.get("lg")) is not None:
            requested += 1
            matched += lg == want
    novel = ctx.novel
    out = {"n_2d": n, "layer_group_detected_rate": detected / n, "slab_contiguous_rate": contiguous / n,
           "vacuum_ok_rate": vacuum_ok / n, "lg_match_rate": matched / requested if requested else None,
           "mean_thickness": float(sum(thickness) / len(thickness)) if thickness else None,
           "uniqueness_2d": sum(i in ctx.unique for i in indices) / n,
           "novelty_2d": sum(novel[i] for i in indices) / n if novel is not None else None, "wdist_thickness": None}
    ref_layers = [s for s, is2d in zip(ctx.reference.structures, ctx.reference.is_layer) if is2d]
    if ref_layers:
        ref_thickness = []
        for s in ref_layers:
            try:
                ref_thickness.append(M.layer_geometry(s)["thickness"])
            except Exception:  # a reference that is not a slab has no thickness
                continue
        out["wdist_thickness"] = M.wdist(thickness, ref_thickness)
        ctx.plots["sample_thickness"], ctx.plots["reference_thickness"] = thickness, ref_thickness
    return out


def conditions(ctx: EvalContext) -> dict[str, Any]:
    """Share of parsed samples honouring each requested condition that a structure alone decides."""
    hits: dict[str, list[bool]] = {}
    for sample, s, g in zip(ctx.samples, ctx.structures, ctx.groups):
        if s is None:
            continue
        for key, ok in M.condition_accuracy(sample.conditions, s, g.number if g else None).items():
            hits.setdefault(key, []).append(ok)
    return {"conditional_accuracy": {k: {"rate": sum(v) / len(v), "n": len(v)} for k, v in hits.items()}}


def property_requests(ctx: EvalContext) -> dict[str, Any]:
    """Requested vs achieved, for every property a prompt asked for that a predictor scores (properties.py), over
    the valid samples: MAE, share within the predictor's tolerance, the same against the requests shuffled among
    those samples (the floor a model that ignores the request reaches), and the predictor's own held-out error."""
    import numpy as np

    from . import properties as P

    asked = sorted({k for s in ctx.samples for k in s.conditions if k in PROPERTY_CONDITIONS or k in P.PREDICTORS})
    out, missing = {}, {}
    for key in asked:
        if not P.available(key):
            missing[key] = "no predictor (band_gap / formation_energy: pip install -e \".[properties]\")" if key in P.PREDICTORS else "no predictor"
            continue
        predictor = P.predictor(key)
        index = [i for i, s in enumerate(ctx.samples) if key in s.conditions and ctx.valid[i]]
        achieved = predictor.predict([ctx.structures[i] for i in index], [2 if ctx.layer[i] else 3 for i in index])
        rows = [(float(ctx.samples[i].conditions[key]), a) for i, a in zip(index, achieved) if a is not None]
        if not rows:
            missing[key] = "no valid sample asked for it has a prediction"
            continue
        requested, got = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        rng = np.random.default_rng(0)
        shuffled = [rng.permutation(requested) for _ in range(SHUFFLES)]
        within = lambda req: float(np.mean([predictor.within(a, b) for a, b in zip(req, got)]))  # noqa: E731
        out[key] = {
            "n_requested": sum(key in s.conditions for s in ctx.samples), "n_scored": len(rows), "unit": predictor.unit,
            "mae": float(np.abs(got - requested).mean()), "within_tolerance": within(requested), "tolerance": predictor.tolerance,
            "tolerance_relative": predictor.relative,
            "shuffled_mae": float(np.mean([np.abs(got - r).mean() for r in shuffled])),
            "shuffled_within_tolerance": float(np.mean([within(r) for r in shuffled])),
            "by_request": {f"{v:g}": {"n": int((requested == v).sum()), "mae": float(np.abs(got - v)[requested == v].mean()),
                                      "mean_achieved": float(got[requested == v].mean())} for v in sorted(set(requested))},
            "predictor": predictor.source, "predictor_heldout": predictor.validation(),
        }
        ctx.plots.setdefault("property_requests", {})[key] = (requested.tolist(), got.tolist(), predictor.unit)
    if missing:
        ctx.not_computed["property_requests"] = "; ".join(f"{k}: {v}" for k, v in missing.items())
    return {"property_requests": out} if out else {}


def stability(ctx: EvalContext) -> dict[str, Any]:
    from .stability import stability_metrics

    return stability_metrics(ctx)


def property_conditioning(ctx: EvalContext) -> dict[str, Any]:
    """Requested vs achieved formation energy (eV/atom) of the relaxed samples that asked for one.

    Achieved: the relaxed MLFF energy (on its correction scheme) minus the lowest elemental references
    of the same potential in the hull (`property_requests` scores the same requests with CGCNN, relaxed or not)."""
    details = {d["index"]: d for d in ctx.result.get("_stability_details") or []}
    pairs = [(float(s.conditions["formation_energy"]), details[i]["formation_energy_per_atom"])
             for i, s in enumerate(ctx.samples) if "formation_energy" in s.conditions and i in details
             and details[i].get("formation_energy_per_atom") is not None]
    asked = sum("formation_energy" in s.conditions for s in ctx.samples)
    if not asked:
        return {}
    if not pairs:
        ctx.not_computed["formation_energy_conditioning"] = "no relaxed sample with a formation_energy request (give --hull)"
        return {}
    errors = [abs(a - b) for a, b in pairs]
    return {"formation_energy_conditioning": {"n_requested": asked, "n_scored": len(pairs), "mae": sum(errors) / len(errors),
                                              "within_0.1": sum(e <= 0.1 for e in errors) / len(errors),
                                              "achieved_by": f"{ctx.stability.mlff} relaxed energy minus its elemental references"}}


def by_dim(ctx: EvalContext) -> dict[str, Any]:
    """The headline rates of bulk samples and of monolayers separately, when a set holds both (rates within each)."""
    groups = {"bulk": [i for i, is2d in enumerate(ctx.layer) if not is2d], "2d": [i for i, is2d in enumerate(ctx.layer) if is2d]}
    if not all(groups.values()):
        return {}
    details = {d["index"]: d for d in ctx.result.get("_stability_details") or []}
    out = {}
    for name, idx in groups.items():
        n = len(idx)
        row = {"n_samples": n, "parse_rate": sum(ctx.structures[i] is not None for i in idx) / n,
               "struct_validity": sum(ctx.struct_ok[i] for i in idx) / n, "comp_validity": sum(ctx.comp_ok[i] for i in idx) / n,
               "validity": sum(ctx.valid[i] for i in idx) / n, "uniqueness": sum(i in ctx.unique for i in idx) / n,
               "novelty": sum(ctx.novel[i] for i in idx) / n if ctx.novel is not None else None}
        relaxed = [details[i] for i in idx if i in details]
        if relaxed:  # share among the relaxed x share valid, as for the whole set
            scale = sum(ctx.valid[i] for i in idx) / n / len(relaxed)
            row["metastable_rate"] = sum(d["e_above_hull"] is not None and d["e_above_hull"] <= 0.1 for d in relaxed) * scale
            row["n_relaxed"] = len(relaxed)
        out[name] = row
    return {"by_dim": out}


METRICS: list[Callable[[EvalContext], dict[str, Any]]] = [
    parse_rate, validity, uniqueness, novelty, distributions, coverage, symmetry, layers, wyckoff, conditions, property_requests,
    stability, property_conditioning, by_dim,
]
