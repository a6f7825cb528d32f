"""`xtallm evaluate`: metrics of a set of samples against reference and training crystals.

Samples: the sampler's/refiner's samples.jsonl, or a folder of CIFs. Reference: a CSV with a
`cif` column (e.g. the held-out split). Train: CSVs novelty is checked against.
Writes `metrics.json` (stable keys, rates as fractions of ALL samples; null where a metric was
not computed, with the reason under `not_computed`) and `summary.md`. The metrics themselves
are the functions of `suite.METRICS`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from xtallm.configs.recipe import NUM_PROC_HELP, default_num_proc, option

from ..parallel import RAY_HELP, Workers, check_address

from ..samples import ReadReport, load_samples
from .context import CrystalTable, EvalContext, parse_many

METRIC_KEYS = (
    "n_samples", "parse_rate", "struct_validity", "comp_validity", "validity", "uniqueness", "novelty",
    "cov_recall", "cov_precision", "cov_recall_valid", "cov_precision_valid", "wdist_density", "wdist_n_elements", "sg_jsd", "p1_rate", "wyckoff_jsd",
    "stable_rate", "metastable_rate", "sun_rate", "msun_rate",
)


@dataclass
class EvaluateOptions:
    """Every setting of `xtallm evaluate`, declared once (the CLI flags come from here)."""

    num_proc: int | None = option(None, NUM_PROC_HELP)
    coverage: bool = option(True, "COV-R/COV-P (CrystalNN fingerprints; the slow part on CPU)")
    coverage_cutoffs: str = option("mp20", "CDVAE cutoffs: mp20, carbon, perovskite or STRUCT,COMP")
    hull: str | None = option(None, "reference energies: `xtallm hull build`'s output folder or its hull.csv (enables stability, S.U.N.)")
    mlff: str | None = option(None, "potential for relaxations (default: the hull's; must match it); alone: monolayer energies only",
                              choices=("sevennet", "chgnet"))
    hull_anchor: str | None = option(None, "known materials' own e_above_hull (shared/data/hull/mp_153k_ehull.csv.xz): also report "
                                            "rates against MP's hull as the MLFF sees its known phases (matbench-discovery style)")
    subsample: int | None = option(None, "relax a random N of the valid samples for stability (--seed); the other metrics use all")
    relax_steps: int = option(1500, "FIRE steps at most (FrechetCellFilter)")
    fmax: float = option(0.05, "force convergence, eV/Å")
    device: str | None = option(None, "cpu, cuda (default: a GPU when present)")
    seed: int = option(0, "seed of the subsample")
    relaxed: str | None = option(None, "`xtallm relax` output (its folder or relaxed.jsonl) for these samples: read, not recomputed")
    use_cache: bool = option(True, "cache reference fingerprints, symmetry and parsed structures under $XTALLM_CACHE", flag=False)
    ray: str | None = option(None, RAY_HELP + " (per-sample work, formula buckets and relaxations as tasks)", metavar="ADDRESS")

    def check(self) -> None:
        if (self.num_proc is not None and self.num_proc < 1) or self.relax_steps < 0 or self.fmax <= 0:
            raise ValueError("num_proc must be >= 1, relax_steps >= 0, fmax > 0")
        if self.subsample is not None and self.subsample < 1:
            raise ValueError(f"--subsample must be >= 1, got {self.subsample}")
        check_address(self.ray)

    @property
    def coverage_cutoffs_value(self) -> str | tuple[float, float]:
        if "," in self.coverage_cutoffs:
            try:
                struct, comp = (float(x) for x in self.coverage_cutoffs.split(","))
            except ValueError:
                raise ValueError(f"--coverage-cutoffs {self.coverage_cutoffs!r}: expected a name or STRUCT,COMP") from None
            return struct, comp
        return self.coverage_cutoffs


def evaluate(
    samples: str | Path,
    reference: str | Path,
    train: list[str | Path] | None = None,
    num_proc: int | None = None,
    train_meta: list[str | Path] | None = None,
    options: EvaluateOptions | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """All metrics of `suite.METRICS`; `train_meta` are formula + cell tables (no positions) that also count as known.

    Train tables with a `cif_layer_std` column (or `dim` = 2 rows) are 2D references: monolayer
    samples are matched against those (both at the same vacuum), bulk samples against the bulk
    tables. `settings` are EvaluateOptions fields (`coverage=False`, `hull=...`)."""
    from . import stability as S
    from .suite import METRICS

    known = {f.name for f in fields(EvaluateOptions)}
    if unknown := set(settings) - known:
        raise TypeError(f"evaluate: unknown setting(s) {sorted(unknown)}")
    o = replace(options or EvaluateOptions(), num_proc=num_proc or default_num_proc(), **settings)
    o.check()
    o.coverage_cutoffs_value  # a bad cutoff spec fails now, not after the slow part
    stability = S.StabilityJob.prepare(o.hull, o.mlff, o.relaxed, o.hull_anchor, subsample=o.subsample, steps=o.relax_steps,
                                       fmax=o.fmax, device=o.device, seed=o.seed)  # mixed scales refused before any work
    for path in [*(train or []), *(train_meta or [])]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such training table")
    started = time.perf_counter()
    report = ReadReport()
    rows = load_samples(samples, report)
    workers = Workers(o.num_proc, o.ray)
    structures = parse_many([r.cif if r.ok else None for r in rows], workers, "reading samples")
    ctx = EvalContext(rows, structures, CrystalTable.read(reference, workers, o.use_cache), o, [str(t) for t in train or []],
                      [str(t) for t in train_meta or []], stability=stability)
    result: dict[str, Any] = ctx.result
    result.update({k: None for k in METRIC_KEYS})
    seconds = {"reading": time.perf_counter() - started}
    for metric in METRICS:
        t = time.perf_counter()
        result.update(metric(ctx))
        seconds[metric.__name__] = time.perf_counter() - t  # with the shared pieces it was first to ask for
    result["inputs"] = {"samples_skipped": report.summary(), "n_parsed_but_unreadable_cif": sum(
        r.ok and s is None for r, s in zip(rows, structures)), "reference_rows": ctx.reference.n_rows,
        "reference_unreadable": ctx.reference.n_unreadable}
    result["_plots"] = ctx.plots
    result["not_computed"] = ctx.not_computed
    result["seconds"] = seconds
    return result
