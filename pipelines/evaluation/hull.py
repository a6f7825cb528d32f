"""`xtallm hull build`: MLFF energies of known crystals, the reference hull for e_above_hull.

Every known structure is relaxed (or single-pointed, `steps=0`) with the SAME potential that
will relax the samples, its energy put on that potential's correction scheme (see
`pipelines.stability`), and one row appended to the output CSV at once (a killed run resumes
where it stopped: rows whose id is already there are skipped). Elements that appear in the
known structures but have no elemental structure among them get a terminal entry from ASE's
reference crystal (or a dimer in a box for gases), relaxed the same way.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
from pymatgen.core import Structure

from xtallm.configs.recipe import option

from ..parallel import RAY_HELP, check_address
from ..samples import ReadReport
from . import stability as S

COLUMNS = ["id", "source", "formula", "n_atoms", "energy", "energy_per_atom", "energy_corrected",
           "energy_corrected_per_atom", "mlff", "scheme", "steps", "converged", "error"]
ID_COLUMNS = ("material_id", "id", "mc2d_structure_label")


@dataclass
class HullOptions:
    """Settings of `xtallm hull build`, declared once."""

    mlff: str = option("sevennet", "potential (the samples must be relaxed with the same one)", choices=tuple(S.MLFFS))
    steps: int = option(S.MAX_STEPS, "FIRE steps at most per structure (0: single points)")
    fmax: float = option(S.DEFAULT_FMAX, "force convergence, eV/Å")
    limit: int | None = option(None, "first N rows of each table")
    device: str | None = option(None, "cpu, cuda (default: a GPU when present)")
    elements: bool = option(True, "add ASE elemental references for elements without an elemental structure")
    workers: int = option(1, "parallel relaxations, each with its own potential (engine ase)")
    engine: str = option("auto", "auto: batched FIRE for SevenNet, ASE per crystal otherwise", choices=("auto", "batched", "ase"))
    ray: str | None = option(None, RAY_HELP + "; one task per structure (--workers is then the cluster's CPUs)", metavar="ADDRESS")

    def check(self) -> None:
        if self.steps < 0 or self.fmax <= 0 or self.workers < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("steps must be >= 0, fmax > 0, workers >= 1, limit >= 1")
        check_address(self.ray)


HULL = "hull.csv"


@dataclass
class HullJob:
    structures: list[str]
    out: str  # a folder: hull.csv in it, appended to
    options: HullOptions = field(default_factory=HullOptions)


def _known(paths: list[str], limit: int | None, skip: set[str] = frozenset(),
           report: ReadReport | None = None) -> Iterator[tuple[str, str, Structure]]:
    """(id, source, structure) of every readable known crystal; ids in `skip` are not parsed at all, an
    unreadable CIF is no reference (counted in `report`)."""
    from xtallm.tokenization.formats import parse_cif

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such table of known structures")
        table = pd.read_csv(path)
        column = "cif" if "cif" in table.columns else "cif_layer_std" if "cif_layer_std" in table.columns else None
        if column is None:
            raise ValueError(f"{path}: no 'cif' column with known structures")
        if limit is not None:
            table = table.head(limit)
        ids = next((table[c].astype(str) for c in ID_COLUMNS if c in table.columns), None)
        sources = table["source"].astype(str) if "source" in table.columns else None
        for i, cif in enumerate(table[column]):
            sid = ids.iloc[i] if ids is not None else f"{Path(path).name}:{i}"
            if sid in skip:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    yield sid, sources.iloc[i] if sources is not None else Path(path).name, parse_cif(cif)
            except ValueError as exc:
                if report is not None:
                    report.add(f"{Path(path).name} line {i + 2}", f"unreadable CIF ({str(exc)[:80]})")


def _done(out: Path) -> set[str]:
    if not out.exists() or out.stat().st_size == 0:
        return set()
    return set(pd.read_csv(out)["id"].astype(str))


def build_hull(job: HullJob) -> dict:
    """Run (or resume) a hull build; returns counts for the CLI."""
    o = job.options
    S.check_mlff(o.mlff)
    from ..samples import output_folder

    out = output_folder(job.out, HULL) / HULL
    if out.exists() and out.stat().st_size > 0:
        previous = pd.read_csv(out)
        used = set(zip(previous["mlff"], previous["scheme"]))
        if used and used != {(o.mlff, S.MLFFS[o.mlff])}:
            raise S.MixedEnergyScalesError(f"{out} holds energies of {sorted(used)}; resuming it with {o.mlff} would mix potentials")
    done = _done(out)
    report = ReadReport()
    todo = list(_known(job.structures, o.limit, skip=done, report=report))
    if not todo and not done:
        raise ValueError(f"no readable structures in {job.structures}")
    if o.elements:
        previous = pd.read_csv(out) if done else pd.DataFrame({"formula": []})
        from pymatgen.core import Composition

        formulas = [s.composition for _, _, s in todo] + [Composition(f) for f in previous["formula"]]
        elements = sorted({e.symbol for c in formulas for e in c.elements})
        have = {c.elements[0].symbol for c in formulas if len(c.elements) == 1}
        todo += [(f"element:{el}", "ase-reference", S.elemental_reference(el)) for el in elements
                 if el not in have and f"element:{el}" not in done]
    from .relax import relax_many

    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.exists() or out.stat().st_size == 0
    failed = 0
    items = [((sid, src), structure, 3) for sid, src, structure in todo]
    formula = {sid: (structure.composition.formula.replace(" ", ""), len(structure)) for sid, _, structure in todo}
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        for (sid, src), r in relax_many(items, o.mlff, o.steps, o.fmax, o.device, o.workers, desc="hull", engine=o.engine, ray=o.ray):
            corrected, reason = (None, r.error)
            if r.energy is not None:
                corrected, reason = S.corrected_energy(o.mlff, r.structure, r.energy)
            failed += corrected is None
            name, n_atoms = formula[sid]
            writer.writerow({
                "id": sid, "source": src, "formula": name,
                "n_atoms": n_atoms, "energy": r.energy, "energy_per_atom": r.energy_per_atom,
                "energy_corrected": corrected, "energy_corrected_per_atom": corrected / n_atoms if corrected is not None else None,
                "mlff": o.mlff, "scheme": S.MLFFS[o.mlff], "steps": r.steps, "converged": r.converged, "error": reason,
            })
            f.flush()
            os.fsync(f.fileno())
    total = len(pd.read_csv(out))
    return {"rows": total, "computed_now": len(todo), "failed_now": failed, "skipped_done": len(done), "unreadable": report.summary()}
