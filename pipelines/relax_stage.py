"""Optional relaxation stage after refinement: `xtallm refine --relax`, `refine.relax: true` in a recipe.

The refiner fixes a crystal in its group but does not minimise its energy. This stage relaxes each
refined crystal with SevenNet-0 or CHGNet through ASE (FIRE + FrechetCellFilter, capped steps) under
`FixSymmetry`, after symmetrizing it into its row's group, so the group comes out exactly as it went
in. A monolayer relaxes in-plane only: c (and with it the vacuum) is fixed and pbc is (True, True, False).

Reads DIR/samples.jsonl (the refiner's rows) and writes DIR/relaxed/samples.jsonl with the same ids and
schema: the relaxed crystal in `cif`, this stage's input (the refined crystal) in `raw_cif`, the group
detected afterwards in `detected_group`, and what the relaxation did under `relax` (potential, steps,
converged, energy per atom on the potential's own scale, or why the row passed through unchanged);
plus DIR/relaxed/summary.json and DIR/relaxed/cif/. A re-run relaxes only the ids not yet written.
Post-processing only: the refiner's figures (DIR/summary.json, README) never include it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from xtallm.refiner.clash import closest_pair
from xtallm.tokenization.record import detect_group, layer_cell
from xtallm.tokenization.symmetry import GroupId

from .evaluation import stability as S
from .evaluation.metrics import validity
from .evaluation.relax import RelaxOptions
from .samples import Sample, SampleWriter, read_cif, read_jsonl, read_samples, structure_cif

if TYPE_CHECKING:
    from .refine import RefineSettings

# Tolerances tried, tightest first, to find the row's group before symmetrizing: a refined crystal is
# exact at the first; a hand-made or passed-through one may need a looser one.
SYMPRECS = (1e-3, 0.01, 0.05, 0.1)
CHECK_SYMPREC = 0.01  # the refiner's own group check (`detected_group`)
WRITE_EVERY = (4, 10.0)  # append every 4 crystals or 10 s, whichever comes first (a killed run loses at most that)


def relax_options(settings: "RefineSettings") -> RelaxOptions:
    """The stage's settings as `xtallm relax` options, checked with its rules (one ValueError naming the flag)."""
    options = RelaxOptions(mlff=settings.relax_mlff, steps=settings.relax_steps, fmax=settings.relax_fmax,
                           device=settings.device, engine="ase")  # per crystal: FixSymmetry is an ASE constraint
    S.check_mlff(options.mlff)
    try:
        options.check()
    except ValueError as exc:  # `xtallm relax` calls it --fmax; here it is --relax-fmax
        raise ValueError(str(exc).replace("--fmax", "--relax-fmax")) from None
    return options


class NotInGroupError(ValueError):
    """The crystal is not in the group its row states, at any tolerance tried: nothing exact to keep."""


@dataclass
class GroupRelaxation:
    """One crystal relaxed in its group: the checked outcome plus what the note and summary report."""

    result: S.Relaxation
    energy_per_atom_start: float | None
    symprec: float
    detected_group: int | None
    closest_pair: float | None  # after relaxing: min over pairs of d / the pair rule's distance (< 1: a clash)


def relax_in_group(structure: Structure, group: GroupId, calculator, steps: int, fmax: float) -> GroupRelaxation:
    """Symmetrize into `group`, relax under FixSymmetry, re-detect the group. Raises NotInGroupError when
    the crystal is not in its group at any tolerance of SYMPRECS (there would be nothing exact to keep)."""
    from ase.constraints import FixSymmetry
    from ase.spacegroup.symmetrize import refine_symmetry
    from pymatgen.io.ase import AseAtomsAdaptor

    dim = group.dim
    if dim == 2:
        structure = layer_cell(structure)  # c perpendicular, slab centred: no atom wrapped across the vacuum
    symprec = next((s for s in SYMPRECS if detect_group(structure, dim, s) == group.number), None)
    if symprec is None:
        found = detect_group(structure, dim, CHECK_SYMPREC)
        raise NotInGroupError(f"not in its group: {group} not found at symprec <= {SYMPRECS[-1]} "
                              f"(detected {found} at {CHECK_SYMPREC}), not relaxed")
    before, _ = closest_pair(structure)
    atoms = AseAtomsAdaptor.get_atoms(structure)
    refine_symmetry(atoms, symprec)  # FixSymmetry keeps the symmetry it finds: make it exact first
    if dim == 2:
        atoms.pbc = (True, True, False)
    atoms.calc = calculator
    start = float(atoms.get_potential_energy()) / len(atoms)  # cached: FIRE's first step reuses it
    atoms.set_constraint(FixSymmetry(atoms, symprec=symprec))
    volume0 = atoms.get_volume()
    converged, done = S.fire(atoms, steps, fmax, dim)
    energy = float(atoms.get_potential_energy())
    atoms.set_constraint()
    atoms.pbc = True
    relaxed = S.atoms_structure(atoms)
    result = S.checked_relaxation(energy, relaxed, volume0, done, converged)
    after = None
    if result.structure is not None:
        after, pair = closest_pair(relaxed)
        if after < 1.0 and after < before:  # a clash closed instead of opened (MLFFs have spurious short-range basins)
            result = S.Relaxation(steps=result.steps, error=f"collapsed: {pair} (pair rule; {before:.2f}x the rule's "
                                  f"distance before, {after:.2f}x after)")
    detected = detect_group(relaxed, dim, CHECK_SYMPREC) if result.structure is not None else None
    return GroupRelaxation(result, start, symprec, detected, after)


def relaxed_sample(sample: Sample, calculator, options: RelaxOptions) -> Sample:
    """The row after relaxing (or unchanged, with `relax.note` saying why); never raises for a bad crystal."""
    out = dataclasses.replace(sample, extra=dict(sample.extra))
    out.raw_cif = sample.cif
    info: dict[str, Any] = {"relaxed": False, "mlff": options.mlff, "max_steps": options.steps, "fmax": options.fmax}
    out.extra["relax"] = info
    structure = read_cif(sample.cif) if sample.ok and sample.cif else None
    if not (sample.ok and sample.cif):
        info["note"] = f"no crystal: {sample.error or 'no cif'}"
    elif sample.group is None:
        info["note"] = "no group stated: nothing to keep fixed"
    elif structure is None:
        info["note"] = "CIF does not parse"
    if "note" in info:
        return out
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            done = relax_in_group(structure, sample.group, calculator, options.steps, options.fmax)
    except NotInGroupError as exc:
        info["note"] = str(exc)
        return out
    except Exception as exc:  # one crystal the potential or the symmetry search cannot handle never stops the batch
        info["note"] = f"{type(exc).__name__}: {exc}"[:300]
        return out
    r = done.result
    info.update(steps=r.steps, seconds=round(time.perf_counter() - started, 2), symprec=done.symprec,
                energy_per_atom_start=done.energy_per_atom_start)
    if r.error is not None:
        info["note"] = f"{r.error}; kept the refined crystal"
        return out
    out.cif = structure_cif(r.structure, sample.group)
    out.detected_group, out.group_checked = done.detected_group, True
    kept = done.detected_group == sample.group.number
    out.valid, out.invalid_reason = validity(r.structure)  # the refiner's verdict, for the relaxed crystal
    info.update(relaxed=True, converged=r.converged, energy_per_atom=r.energy_per_atom, group_kept=kept,
                closest_pair=done.closest_pair if done.closest_pair is None or np.isfinite(done.closest_pair) else None)
    info["note"] = (f"{options.mlff}: {r.steps} of <= {options.steps} FIRE steps, "
                    f"{'converged' if r.converged else f'not converged (fmax {options.fmax})'}, "
                    f"{r.energy_per_atom:.4f} eV/atom (from {done.energy_per_atom_start:.4f})"
                    + ("" if kept else f"; group now {done.detected_group}"))
    return out


def run_relax_stage(out: str | Path, settings: "RefineSettings") -> dict[str, Any]:
    """Relax every row of out/samples.jsonl not yet in out/relaxed/samples.jsonl; returns (and writes) the summary."""
    from .refine import _count, write_sample_files

    options = relax_options(settings)
    out = Path(out)
    rows = list(read_samples(out / "samples.jsonl"))
    folder = out / "relaxed"
    path = folder / "samples.jsonl"
    previous = list(read_jsonl(path))
    used = {(row.get("relax") or {}).get("mlff") for row in previous} - {None, options.mlff}
    if used:
        raise S.MixedEnergyScalesError(f"{path} holds relaxations with {sorted(used)}; not resuming it with "
                                       f"--relax-mlff {options.mlff} (use that potential or another --out)")
    writer = SampleWriter(path)  # locked: no other run appends while changed rows are dropped
    redone = _drop_changed(path, previous, {r.id: r.cif for r in rows})
    if redone:
        writer.close()
        writer = SampleWriter(path)
    device = options.device or S.default_device()
    todo = [r for r in rows if r.id not in writer.done]
    started = last = time.perf_counter()
    pending: list[Sample] = []
    try:
        if todo:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # CHGNet prints as it loads
                warnings.simplefilter("ignore")
                calculator = S.load_calculator(options.mlff, device)
            if settings.write_cifs:
                (folder / "cif").mkdir(parents=True, exist_ok=True)
            with tqdm(total=len(todo), desc=f"relaxing ({options.mlff}, <= {options.steps} steps, {device})") as bar:
                for sample in todo:
                    pending.append(relaxed_sample(sample, calculator, options))
                    bar.update()
                    if len(pending) >= WRITE_EVERY[0] or time.perf_counter() - last >= WRITE_EVERY[1]:
                        _write(writer, pending, folder, settings.write_cifs, write_sample_files)
                        pending, last = [], time.perf_counter()
    finally:  # the crystals finished before a Ctrl-C or an error are kept
        _write(writer, pending, folder, settings.write_cifs, write_sample_files)
        writer.close()
    elapsed = time.perf_counter() - started
    ids = {r.id for r in rows}
    done = [r for r in read_samples(path) if r.id in ids]
    infos = [r.extra.get("relax") or {} for r in done]
    relaxed = [i for i in infos if i.get("relaxed")]
    drops = [i["energy_per_atom_start"] - i["energy_per_atom"] for i in relaxed]
    summary = {
        "samples": len(done),
        "relaxed": len(relaxed),
        "passed_through": len(done) - len(relaxed),
        "relaxed_now": len(todo),
        "seconds": elapsed,
        "seconds_per_crystal": elapsed / len(todo) if todo else None,
        "mlff": options.mlff,
        "energy_scale": "raw PBE (MP2020 corrections not applied)" if options.mlff == "sevennet" else "MP2020-corrected (CHGNet's own)",
        "max_steps": options.steps,
        "fmax": options.fmax,
        "device": device,
        "converged_rate": sum(bool(i.get("converged")) for i in relaxed) / len(relaxed) if relaxed else None,
        "group_kept_rate": sum(bool(i.get("group_kept")) for i in relaxed) / len(relaxed) if relaxed else None,
        "mean_energy_drop_per_atom": float(np.mean(drops)) if drops else None,
        "pass_reasons": _count(i.get("note") for i in infos if not i.get("relaxed")),
        "redone_changed": redone,
        "note": "optional post-processing: never part of the refiner's figures",
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _drop_changed(path: Path, previous: list[dict[str, Any]], current: dict[str, str | None]) -> int:
    """Forget relaxations whose input crystal is no longer the row's (e.g. `generate --redraw-invalid` replaced
    it under the same id), so they are redone instead of kept under the wrong crystal; returns how many."""
    keep = [row for row in previous if str(row.get("id")) not in current or row.get("raw_cif") == current[str(row["id"])]]
    if len(keep) == len(previous):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in keep))
    tmp.replace(path)
    return len(previous) - len(keep)


def _write(writer: SampleWriter, rows: list[Sample], folder: Path, cifs: bool, write_files) -> None:
    if not rows:
        return
    if cifs:
        write_files(rows, folder / "cif")
    writer.write(rows)


__all__ = ["GroupRelaxation", "NotInGroupError", "relax_in_group", "relax_options", "relaxed_sample", "run_relax_stage"]
