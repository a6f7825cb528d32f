"""MLFF relaxation and energies for the stability metrics (SevenNet-0 or CHGNet, both offline).

Energy scales (never mix them, never correct twice):
- SevenNet-0 (`sevenn`, weights inside the wheel) predicts raw PBE(+U) energies: they are put on
  the Materials Project 2020 scale with `MaterialsProject2020Compatibility` (anion and GGA/GGA+U
  mixing corrections, U values of MPRelaxSet), scheme "MP2020".
- CHGNet 0.3.0 (`chgnet`, weights inside the wheel) was trained on MPtrj energies that ALREADY carry
  the MP2020 corrections: used as predicted, scheme "chgnet-native-MP2020".
The (mlff, scheme) pair is written next to every hull energy and checked before any comparison.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure

MLFFS: dict[str, str] = {"sevennet": "MP2020", "chgnet": "chgnet-native-MP2020"}
DEFAULT_FMAX = 0.05  # eV/Å
# Raw (PBE-scale) energies of real crystals lie above about -13 eV/atom (W, Re, Os); an MLFF that drives
# atoms into each other can return hundreds or thousands of eV/atom below that, which would read as
# "very stable". Anything below this floor is a failed relaxation.
MIN_ENERGY_PER_ATOM = -15.0
# Real crystals lie below about 0 eV/atom on this scale (noble gases near 0); a single point of atoms pushed
# together can return millions of eV/atom (seen: +6.5e6 for a generated structure), which would swamp any mean.
MAX_ENERGY_PER_ATOM = 5.0
MAX_STEPS = 1500  # the protocol's cap on FIRE steps
BATCH_ATOMS = 4096  # atoms per model call of the batched relaxer (batch_relax.py); ~7 MB of GPU memory each


class MixedEnergyScalesError(ValueError):
    """A hull made with one potential/correction scheme used with energies of another."""


def check_mlff(name: str) -> str:
    if name not in MLFFS:
        raise ValueError(f"unknown MLFF {name!r}: use one of {sorted(MLFFS)} (both load offline)")
    return name


def default_device() -> str:
    from xtallm.configs.training import default_device as decide  # imported late: torch loads only when asked

    return decide()


def load_calculator(name: str, device: str | None = None):
    """ASE calculator of a universal MLFF whose weights ship inside its wheel (no download)."""
    check_mlff(name)
    device = device or default_device()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "sevennet":
            from sevenn.calculator import SevenNetCalculator

            return SevenNetCalculator("7net-0", device=device)
        from chgnet.model import CHGNet, CHGNetCalculator

        return CHGNetCalculator(CHGNet.load(model_name="0.3.0", use_device=device, verbose=False), use_device=device, on_isolated_atoms="ignore")


@dataclass
class Relaxation:
    """Outcome of one relaxation (or single point); `error` says why there is no energy."""

    energy: float | None = None  # eV, total, on the MLFF's raw scale
    energy_per_atom: float | None = None
    structure: Structure | None = None
    steps: int = 0
    converged: bool = False
    error: str | None = None

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("structure")
        return d


def unphysical_energy(energy_per_atom: float | None) -> str | None:
    """Why an MLFF energy cannot be a crystal's (None when it can)."""
    if energy_per_atom is not None and energy_per_atom < MIN_ENERGY_PER_ATOM:
        return f"exploded: {energy_per_atom:.1f} eV/atom is below any real crystal's ({MIN_ENERGY_PER_ATOM} eV/atom), an MLFF artefact"
    if energy_per_atom is not None and energy_per_atom > MAX_ENERGY_PER_ATOM:
        return f"exploded: {energy_per_atom:.4g} eV/atom is above any real crystal's ({MAX_ENERGY_PER_ATOM} eV/atom), an MLFF artefact"
    return None


def _min_distance(structure: Structure) -> float:
    if len(structure) == 1:
        return min(structure.lattice.abc)
    d = structure.distance_matrix + np.eye(len(structure)) * 1e9
    return float(min(d.min(), *structure.lattice.abc))


def relax(structure: Structure, calculator, steps: int = MAX_STEPS, fmax: float = DEFAULT_FMAX,
          dim: int = 3) -> Relaxation:
    """FIRE + FrechetCellFilter relaxation (steps=0: single point). Never raises for a bad crystal.

    A monolayer (dim=2) keeps its out-of-plane cell vector: only the in-plane cell relaxes, so the
    vacuum stays. A relaxation that ends with non-finite energy, atoms closer than 0.5 Å or a cell
    that grew/shrank more than 5x counts as exploded.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calculator
        volume0 = atoms.get_volume()
        converged, done = fire(atoms, steps, fmax, dim) if steps > 0 else (True, 0)
        energy = float(atoms.get_potential_energy())
        relaxed = atoms_structure(atoms)
    except Exception as exc:  # a crystal the potential cannot handle must not stop the batch
        return Relaxation(error=f"{type(exc).__name__}: {exc}"[:300])
    return checked_relaxation(energy, relaxed, volume0, done, converged)


LAYER_MASK = [True, True, False, False, False, True]  # Voigt xx yy zz yz xz xy: a monolayer's in-plane cell only


def fire(atoms, steps: int, fmax: float, dim: int = 3) -> tuple[bool, int]:
    """FIRE + FrechetCellFilter on `atoms` in place: (converged, steps taken). A monolayer (dim=2) keeps its
    out-of-plane cell vector, so the vacuum stays."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = FIRE(FrechetCellFilter(atoms, mask=LAYER_MASK if dim == 2 else None), logfile=None)
        converged = bool(optimizer.run(fmax=fmax, steps=steps))
    return converged, int(optimizer.nsteps)


def atoms_structure(atoms) -> Structure:
    """A pymatgen Structure of ASE atoms, without the calculator pymatgen would attach."""
    from pymatgen.io.ase import AseAtomsAdaptor

    relaxed = AseAtomsAdaptor.get_structure(atoms)
    return Structure(relaxed.lattice, relaxed.species, relaxed.frac_coords)


def checked_relaxation(energy: float, relaxed: Structure, volume0: float, steps: int, converged: bool) -> Relaxation:
    """The outcome, unless it exploded: non-finite or unphysical energy, volume changed > 5x, atoms < 0.5 Å apart."""
    n = len(relaxed)
    if not math.isfinite(energy):
        return Relaxation(steps=steps, error="non-finite energy")
    if reason := unphysical_energy(energy / n):
        return Relaxation(steps=steps, error=reason)
    ratio = relaxed.volume / volume0 if volume0 > 0 else float("inf")
    if not 0.2 <= ratio <= 5.0:
        return Relaxation(steps=steps, error=f"exploded: volume changed {ratio:.2f}x")
    if _min_distance(relaxed) < 0.5:
        return Relaxation(steps=steps, error="exploded: atoms closer than 0.5 Å")
    return Relaxation(energy, energy / n, relaxed, steps, converged)


def mp2020_parameters(composition: Composition) -> dict[str, Any]:
    """Run type and U values Materials Project would have used (MPRelaxSet), for the MP2020 scheme."""
    from pymatgen.io.vasp.sets import MPRelaxSet

    u_table = MPRelaxSet.CONFIG["INCAR"]["LDAUU"]
    symbols = {e.symbol for e in composition.elements}
    anions = [a for a in ("F", "O") if a in symbols and a in u_table]  # MP picks the most electronegative
    hubbards = {s: float(u_table[anions[0]].get(s, 0.0)) for s in symbols} if anions else {}
    run_type = "GGA+U" if any(v > 0 for v in hubbards.values()) else "GGA"
    return {"run_type": run_type, "hubbards": hubbards if run_type == "GGA+U" else {}}


def corrected_energy(mlff: str, structure: Structure, energy: float) -> tuple[float | None, str | None]:
    """Total energy on the MP2020 scale for this MLFF (None + reason if the scheme rejects it)."""
    if MLFFS[check_mlff(mlff)] != "MP2020":
        return energy, None  # CHGNet: already on the corrected scale
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    entry = ComputedStructureEntry(structure, energy, parameters=mp2020_parameters(structure.composition))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processed = MaterialsProject2020Compatibility(check_potcar=False).process_entry(entry)
    if processed is None:
        return None, "MaterialsProject2020Compatibility rejected the entry"
    return float(processed.energy), None


class Hull:
    """Reference energies from `xtallm hull build` and per-chemical-system phase diagrams.

    Candidates are never added to a diagram: `get_e_above_hull(entry, allow_negative=True)`.
    """

    def __init__(self, path, mlff: str | None = None, anchor: str | None = None):
        """`anchor`: a table of known materials' own e_above_hull (`material_id`, `energy_above_hull_eV_per_atom_MP`):
        each reference with an id there is moved down by its MP e_above_hull, so the diagram estimates MP's
        own hull energy at its composition from the MLFF energy of the known phase (the matbench-discovery
        style variant); references without an MP value are left out, elemental references kept."""
        import pandas as pd

        if Path(path).is_dir():  # `xtallm hull build`'s output folder
            path = Path(path) / "hull.csv"
        table = pd.read_csv(path)
        need = {"formula", "energy_corrected", "mlff", "scheme"}
        if missing := need - set(table.columns):
            raise ValueError(f"{path}: not a hull file from `xtallm hull build` (missing columns {sorted(missing)})")
        table = table[table["energy_corrected"].notna()]
        if table.empty:
            raise ValueError(f"{path}: no reference energies")
        pairs = set(zip(table["mlff"], table["scheme"]))
        if len(pairs) != 1:
            raise MixedEnergyScalesError(f"{path} mixes potentials/correction schemes {sorted(pairs)}: rebuild it with one MLFF")
        self.mlff, self.scheme = pairs.pop()
        if mlff is not None and (mlff != self.mlff or MLFFS[check_mlff(mlff)] != self.scheme):
            raise MixedEnergyScalesError(
                f"{path} was built with {self.mlff} ({self.scheme} scale) but the samples are relaxed with {mlff} "
                f"({MLFFS[mlff]} scale): energies of different potentials/schemes are not comparable "
                f"(use --mlff {self.mlff}, or build a hull with --mlff {mlff})")
        self.anchor = None
        if anchor is not None:
            table = self._anchored(table, anchor)
        from pymatgen.entries.computed_entries import ComputedEntry

        self.entries = [ComputedEntry(Composition(f), float(e), entry_id=str(i))
                        for f, e, i in zip(table["formula"], table["energy_corrected"], table.get("id", table.index))]
        self.elements = {e.symbol for entry in self.entries if len(entry.composition.elements) == 1 for e in entry.composition.elements}
        self._diagrams: dict[frozenset[str], Any] = {}

    def _anchored(self, table, anchor: str):
        import pandas as pd

        mp = pd.read_csv(anchor, usecols=["material_id", "energy_above_hull_eV_per_atom_MP"]).dropna()
        e_hull = dict(zip(mp["material_id"].astype(str), mp["energy_above_hull_eV_per_atom_MP"].astype(float)))
        ids = table["id"].astype(str)
        known = ids.map(e_hull)
        keep = known.notna() | ids.str.startswith("element:")
        table = table[keep].copy()
        table["energy_corrected"] = table["energy_corrected"] - known[keep].fillna(0.0) * table["n_atoms"]
        self.anchor = {"table": str(anchor), "references_anchored": int(known.notna().sum()), "references_left_out": int((~keep).sum())}
        return table

    def __len__(self) -> int:
        return len(self.entries)

    def chemical_systems_covered(self, compositions) -> float:
        """Share of compositions whose every element, and whose whole chemical system, has a reference entry."""
        systems = {frozenset(e.symbol for e in entry.composition.elements) for entry in self.entries}
        hits = 0
        comps = list(compositions)
        for comp in comps:
            chemsys = frozenset(e.symbol for e in comp.elements)
            hits += chemsys <= self.elements and chemsys in systems
        return hits / len(comps) if comps else 0.0

    def binary_systems_covered(self, compositions) -> float:
        """Mean share of each composition's element pairs that have a binary compound in the hull.

        A hull without the binaries of a system (no BaF2, HoF3, ScF3 for Ba-Ho-Sc-F) puts a new compound of
        that system far below it: a low share means low E_hull values say more about the hull than the sample."""
        from itertools import combinations

        if not hasattr(self, "_pairs"):
            self._pairs = {frozenset(e.symbol for e in entry.composition.elements) for entry in self.entries
                           if len(entry.composition.elements) == 2}
        shares = []
        for comp in compositions:
            pairs = list(combinations(sorted(e.symbol for e in comp.elements), 2))
            if pairs:
                shares.append(sum(frozenset(p) in self._pairs for p in pairs) / len(pairs))
        return float(np.mean(shares)) if shares else 0.0

    def diagram(self, chemsys: frozenset[str]):
        if chemsys not in self._diagrams:
            from pymatgen.analysis.phase_diagram import PhaseDiagram

            entries = [e for e in self.entries if {el.symbol for el in e.composition.elements} <= chemsys]
            self._diagrams[chemsys] = PhaseDiagram(entries)
        return self._diagrams[chemsys]

    def formation_energy(self, composition: Composition, energy_corrected: float) -> float | None:
        """eV/atom relative to the lowest elemental references of the same potential (None without them)."""
        if not hasattr(self, "_mu"):
            self._mu: dict[str, float] = {}
            for entry in self.entries:
                if len(entry.composition.elements) == 1:
                    el = entry.composition.elements[0].symbol
                    self._mu[el] = min(self._mu.get(el, float("inf")), entry.energy_per_atom)
        amounts = composition.get_el_amt_dict()
        if any(el not in self._mu for el in amounts):
            return None
        return (energy_corrected - sum(n * self._mu[el] for el, n in amounts.items())) / composition.num_atoms

    def e_above_hull(self, composition: Composition, energy_corrected: float) -> tuple[float | None, str | None]:
        """eV/atom above the reference hull (negative: below it); None + reason without terminal entries."""
        from pymatgen.entries.computed_entries import ComputedEntry

        chemsys = frozenset(e.symbol for e in composition.elements)
        if missing := chemsys - self.elements:
            return None, f"hull has no terminal entry for {', '.join(sorted(missing))}"
        entry = ComputedEntry(composition, energy_corrected)
        return float(self.diagram(chemsys).get_e_above_hull(entry, allow_negative=True)), None


def elemental_reference(symbol: str) -> Structure:
    """A starting structure for an element's terminal entry: ASE's reference crystal, else a dimer/atom in a box."""
    from ase import Atoms
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states
    from pymatgen.io.ase import AseAtomsAdaptor

    state = reference_states[atomic_numbers[symbol]] or {}
    try:
        atoms = bulk(symbol)
    except Exception:  # no simple crystal in ASE (diatomic gases, complex structures)
        d = state.get("d", 2.0) if state.get("symmetry") == "diatom" else 2.5
        atoms = Atoms(f"{symbol}2", positions=[[5.0, 5.0, 5.0], [5.0 + d, 5.1, 5.2]], cell=[10.0, 10.5, 11.0], pbc=True)
    return AseAtomsAdaptor.get_structure(atoms)


# ---------------------------------------------------------------------------- the evaluation's stability metrics


@dataclass
class StabilityJob:
    """What the stability metrics need, checked before any expensive work (no mixed energy scales)."""

    hull: Hull | None
    mlff: str
    relaxed: dict[str, dict[str, Any]] | None  # `xtallm relax` rows by sample id: read, not recomputed
    anchored: Hull | None = None  # the same references on MP's own e_above_hull (matbench-discovery style)
    subsample: int | None = None
    steps: int = MAX_STEPS
    fmax: float = DEFAULT_FMAX
    device: str | None = None
    seed: int = 0

    @classmethod
    def prepare(cls, hull: str | None, mlff: str | None, relaxed: str | None, anchor: str | None = None,
                **settings: Any) -> "StabilityJob | None":
        if hull is None and mlff is None:
            if relaxed is not None:
                raise ValueError("--relaxed needs --hull (the relaxations are scored against it)")
            return None
        if mlff is not None:
            check_mlff(mlff)
        hull_obj = Hull(hull, mlff) if hull is not None else None
        potential = mlff or hull_obj.mlff  # type: ignore[union-attr]
        cache = None
        if relaxed is not None:
            from .relax import done_ids

            cache = done_ids(relaxed)
            if not cache:
                raise ValueError(f"{relaxed}: no relaxations (write them with `xtallm relax`)")
            if used := {r.get("mlff") for r in cache.values()} - {potential}:
                raise MixedEnergyScalesError(f"{relaxed} holds relaxations with {sorted(used)}, the hull/--mlff is {potential}")
        if anchor is not None and hull is None:
            raise ValueError("--hull-anchor needs --hull (the MLFF energies it anchors)")
        anchored = Hull(hull, mlff, anchor=anchor) if anchor is not None else None
        return cls(hull_obj, potential, cache, anchored, **settings)

    def relaxation(self, sample_id: str, structure: Structure, calculator, dim: int) -> Relaxation:
        if self.relaxed is not None:
            from .relax import cached_relaxation

            return cached_relaxation(self.relaxed[sample_id])
        return relax(structure, calculator, steps=self.steps, fmax=self.fmax, dim=dim)

    @property
    def max_steps(self) -> int:
        """The FIRE cap the relaxations used (the one `xtallm relax` wrote when they were read)."""
        if self.relaxed:
            caps = {r.get("max_steps") for r in self.relaxed.values()}
            if len(caps) == 1 and None not in caps:
                return int(caps.pop())
        return self.steps


FAR_BELOW_HULL = -0.1  # eV/atom: a relaxed sample this far below every known phase points at a hull gap or an MLFF artefact


def stability_metrics(ctx) -> dict[str, Any]:
    """Relax valid samples with the MLFF, e_above_hull against the hull; rates estimated over ALL samples.

    With a subsample of the valid samples, a rate is (share among the relaxed) x (valid / all): the
    invalid samples count as unstable, the subsample stands for the valid ones.
    """
    job: StabilityJob | None = ctx.stability
    keys = ("stable_rate", "metastable_rate", "sun_rate", "msun_rate")
    if job is None:
        ctx.not_computed.update({k: "no --hull given (build one with `xtallm hull build`)" for k in keys})
        return {}
    n = ctx.n
    valid_idx = [i for i, ok in enumerate(ctx.valid) if ok]
    pool = valid_idx if job.relaxed is None else [i for i in valid_idx if ctx.samples[i].id in job.relaxed]
    rng = np.random.default_rng(job.seed)
    chosen = sorted(rng.choice(pool, job.subsample, replace=False).tolist()) if job.subsample and job.subsample < len(pool) else pool
    out: dict[str, Any] = {"mlff": job.mlff, "stability_relax_steps": job.max_steps}
    if job.relaxed is not None:
        out["stability_relaxations"] = "read from `xtallm relax` output (valid samples found there form the subsample)"
    layer_valid = [i for i in valid_idx if ctx.layer[i]]
    need_calc = bool(layer_valid)
    calc = load_calculator(job.mlff, job.device) if need_calc else None
    out.update(_monolayer_energies(ctx, layer_valid[: job.subsample or None], calc))
    if job.hull is None:
        ctx.not_computed.update({k: "no --hull given (build one with `xtallm hull build`)" for k in keys})
        return out
    details = []
    if job.relaxed is not None:
        relaxations = {i: job.relaxation(ctx.samples[i].id, ctx.structures[i], calc, 2 if ctx.layer[i] else 3) for i in chosen}
    else:
        from .relax import relax_many

        items = [(i, ctx.structures[i], 2 if ctx.layer[i] else 3) for i in chosen]
        relaxations = dict(relax_many(items, job.mlff, job.steps, job.fmax, job.device, desc="relaxing", ray=ctx.options.ray))
    for i in chosen:
        r = relaxations[i]
        e_hull, e_anchored, reason, corrected = None, None, r.error, None
        if r.energy is not None:
            corrected, reason = corrected_energy(job.mlff, r.structure, r.energy)
            if corrected is not None:
                e_hull, reason = job.hull.e_above_hull(r.structure.composition, corrected)
                if job.anchored is not None:
                    e_anchored = job.anchored.e_above_hull(r.structure.composition, corrected)[0]
        details.append({"id": ctx.samples[i].id, "index": i, "e_above_hull": e_hull, "e_above_hull_mp_anchored": e_anchored,
                        "energy_per_atom": r.energy_per_atom, "energy_corrected_per_atom": corrected / len(r.structure) if corrected is not None else None,
                        "formation_energy_per_atom": job.hull.formation_energy(r.structure.composition, corrected) if corrected is not None else None,
                        "steps": r.steps, "converged": r.converged, "error": reason, "unique": i in ctx.unique,
                        "novel": None if ctx.novel is None else bool(ctx.novel[i])})
    scale = len(valid_idx) / n / len(chosen) if chosen else 0.0
    out.update(_rates(ctx, details, scale))
    if job.anchored is not None:
        anchored = _rates(ctx, [{**d, "e_above_hull": d["e_above_hull_mp_anchored"]} for d in details], scale)
        out.update({f"{k}_mp_anchored": v for k, v in anchored.items()})
        out["hull_mp_anchored"] = {"entries": len(job.anchored), **job.anchored.anchor}
    out["hull_entries"] = len(job.hull)
    out["hull_chemsys_coverage"] = job.hull.chemical_systems_covered(ctx.structures[i].composition for i in chosen)
    out["hull_binary_coverage"] = job.hull.binary_systems_covered(ctx.structures[i].composition for i in chosen)
    scored = [d["e_above_hull"] for d in details if d["e_above_hull"] is not None]
    out["n_far_below_hull"] = sum(e < FAR_BELOW_HULL for e in scored)  # hull gaps or MLFF artefacts, not discoveries
    out.update(n_relaxed=len(chosen), n_valid=len(valid_idx), n_relax_failed=sum(d["e_above_hull"] is None for d in details),
               stability_denominator="all samples (invalid ones count as unstable; a subsample of the valid ones stands for all of them)")
    if not chosen:
        ctx.not_computed["stable_rate"] = "no valid sample to relax"
    ctx.plots["e_above_hull"] = [d["e_above_hull"] for d in details if d["e_above_hull"] is not None]
    out["_stability_details"] = details
    return out


def _monolayer_energies(ctx, indices: list[int], calc) -> dict[str, Any]:
    """Single-point energies of valid monolayers (no 2D hull here: reported, not rated)."""
    if not any(ctx.layer):
        return {}
    energies = [r.energy_per_atom for r in (relax(ctx.structures[i], calc, steps=0, dim=2) for i in indices)
                if r.energy_per_atom is not None]
    return {"mean_2d_energy_per_atom": float(np.mean(energies)) if energies else None, "n_2d_energy": len(energies)}


def _rates(ctx, details: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    stable = [d["e_above_hull"] is not None and d["e_above_hull"] <= 0.0 for d in details]
    meta = [d["e_above_hull"] is not None and d["e_above_hull"] <= 0.1 for d in details]
    out = {"stable_rate": sum(stable) * scale, "metastable_rate": sum(meta) * scale}
    if ctx.novel is None:
        ctx.not_computed["sun_rate"] = ctx.not_computed["msun_rate"] = "S.U.N. needs novelty: give --train / --train-meta"
        return out
    out["sun_rate"] = sum(s and d["unique"] and d["novel"] for s, d in zip(stable, details)) * scale
    out["msun_rate"] = sum(s and d["unique"] and d["novel"] for s, d in zip(meta, details)) * scale
    return out
