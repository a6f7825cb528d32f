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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from . import stability as S

COLUMNS = ["id", "source", "formula", "n_atoms", "energy", "energy_per_atom", "energy_corrected",
           "energy_corrected_per_atom", "mlff", "scheme", "steps", "converged", "error"]
ID_COLUMNS = ("material_id", "id", "mc2d_structure_label")


@dataclass
class HullJob:
    structures: list[str]
    out: str
    mlff: str = "sevennet"
    steps: int = 200
    fmax: float = S.DEFAULT_FMAX
    limit: int | None = None
    device: str | None = None
    add_elements: bool = True
    workers: int = 1  # parallel relaxations (pipelines.relax)


def _known(paths: list[str], limit: int | None) -> Iterator[tuple[str, str, Structure]]:
    from tokenization.formats import parse_cif

    for path in paths:
        table = pd.read_csv(path)
        column = "cif" if "cif" in table.columns else "cif_layer_std" if "cif_layer_std" in table.columns else None
        if column is None:
            raise ValueError(f"{path}: no 'cif' column with known structures")
        ids = next((table[c].astype(str) for c in ID_COLUMNS if c in table.columns), None)
        if limit is not None:
            table = table.head(limit)
        for i, cif in enumerate(table[column]):
            sid = ids.iloc[i] if ids is not None else f"{Path(path).name}:{i}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    yield sid, Path(path).name, parse_cif(cif)
            except ValueError:
                continue  # an unreadable CIF is not a reference


def _done(out: Path) -> set[str]:
    if not out.exists() or out.stat().st_size == 0:
        return set()
    return set(pd.read_csv(out)["id"].astype(str))


def build_hull(job: HullJob) -> dict:
    """Run (or resume) a hull build; returns counts for the CLI."""
    S.check_mlff(job.mlff)
    out = Path(job.out)
    if out.exists() and out.stat().st_size > 0:
        previous = pd.read_csv(out)
        used = set(zip(previous["mlff"], previous["scheme"]))
        if used and used != {(job.mlff, S.MLFFS[job.mlff])}:
            raise S.MixedEnergyScalesError(f"{out} holds energies of {sorted(used)}; resuming it with {job.mlff} would mix potentials")
    done = _done(out)
    known = list(_known(job.structures, job.limit))
    if not known:
        raise ValueError(f"no readable structures in {job.structures}")
    todo = [(sid, src, s) for sid, src, s in known if sid not in done]
    if job.add_elements:
        elements = sorted({e.symbol for _, _, s in known for e in s.composition.elements})
        have = {s.composition.elements[0].symbol for _, _, s in known if len(s.composition.elements) == 1}
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
        for (sid, src), r in relax_many(items, job.mlff, job.steps, job.fmax, job.device, job.workers, desc="hull"):
            corrected, reason = (None, r.error)
            if r.energy is not None:
                corrected, reason = S.corrected_energy(job.mlff, r.structure, r.energy)
            failed += corrected is None
            name, n_atoms = formula[sid]
            writer.writerow({
                "id": sid, "source": src, "formula": name,
                "n_atoms": n_atoms, "energy": r.energy, "energy_per_atom": r.energy_per_atom,
                "energy_corrected": corrected, "energy_corrected_per_atom": corrected / n_atoms if corrected is not None else None,
                "mlff": job.mlff, "scheme": S.MLFFS[job.mlff], "steps": r.steps, "converged": r.converged, "error": reason,
            })
            f.flush()
            os.fsync(f.fileno())
    total = len(pd.read_csv(out))
    return {"rows": total, "computed_now": len(todo), "failed_now": failed, "skipped_done": len(done)}
