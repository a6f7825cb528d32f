"""Generation metrics, following the pinned protocol (docs: ../shared/DESIGN.md, "Evaluation").

Every function takes *all* samples, parsed or not (None for an unparseable one), so an
unparseable sample counts in every denominator and is never silently dropped.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    import pandas as pd

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from ..parallel import as_workers, map_ordered

if TYPE_CHECKING:
    from ..parallel import Workers

MIN_DISTANCE = 0.5  # Å, CDVAE's structural validity
MIN_VOLUME = 0.1  # Å^3


def matcher() -> StructureMatcher:
    """The pinned matcher for uniqueness and novelty."""
    return StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)


def structurally_valid(structure: Structure | None) -> bool:
    """All interatomic distances (periodic) >= 0.5 Å and volume >= 0.1 Å^3."""
    if structure is None or structure.volume < MIN_VOLUME:
        return False
    if len(structure) == 1:
        return min(structure.lattice.abc) >= MIN_DISTANCE
    dist = structure.distance_matrix
    dist = dist + np.eye(len(structure)) * 1e9
    if dist.min() < MIN_DISTANCE:
        return False
    # an atom must not sit closer than 0.5 Å to its own periodic image either
    return min(structure.lattice.abc) >= MIN_DISTANCE


def validity(structure: Structure | None) -> tuple[bool, str | None]:
    """A refined row's verdict: (True, None), or (False, every failed check joined by "; ").

    Checks: the protocol's structural validity (0.5 Å, 0.1 Å^3), the per-species-pair rule (no
    pair closer than pyxtal's atomic tolerance, refiner/clash.py) and SMACT. The first is the figure
    that compares with the literature; the rule is stricter for most pairs (0.5 x the covalent sum)."""
    if structure is None:
        return False, "no structure"
    from xtallm.refiner.clash import CLASH_FACTOR, closest_pair

    problems = []
    if not structurally_valid(structure):
        problems.append(f"atoms closer than {MIN_DISTANCE} Å (or volume < {MIN_VOLUME} Å^3)")
    ratio, pair = closest_pair(structure, CLASH_FACTOR)
    if ratio < 1.0:
        problems.append(f"pair rule: {pair}")
    if not compositionally_valid(structure.composition):
        problems.append(f"SMACT: {structure.composition.reduced_formula} not charge-balanced")
    return (not problems), ("; ".join(problems) or None)


def compositionally_valid(composition: Composition | None) -> bool:
    """CDVAE's SMACT charge-neutrality + electronegativity test, with smact 4's smact14 set.

    It agrees with CDVAE's own smact 2.2.1 on 99.85% of MP-20 test compositions, not all: the two
    releases' data differ for Ir and Pm (smact 4's default ICSD24 set would disagree on ~11%)."""
    if composition is None:
        return False
    from smact.screening import smact_validity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(smact_validity(composition, use_pauling_test=True, include_alloys=True, oxidation_states_set="smact14"))
        except (ValueError, KeyError, TypeError):
            return False


def unique_indices(structures: Sequence[Structure | None], workers: "Workers | int | None" = None) -> list[int]:
    """Index of one representative per group of matching structures (parsed ones only).

    Only structures of one reduced formula can match, so each formula's bucket is one unit of work."""
    by_formula: dict[str, list[int]] = {}
    for i, s in enumerate(structures):
        if s is not None:
            by_formula.setdefault(s.composition.reduced_formula, []).append(i)
    keep = [indices[0] for indices in by_formula.values() if len(indices) == 1]
    buckets = sorted((indices for indices in by_formula.values() if len(indices) > 1), key=len, reverse=True)
    found = map_ordered(representatives, [[structures[i] for i in indices] for indices in buckets], as_workers(workers),
                        "uniqueness", chunksize=4)
    for indices, local in zip(buckets, found):
        keep += [indices[j] for j in local]
    return sorted(keep)


def representatives(structures: list[Structure]) -> list[int]:
    """Positions of the first structure of each matching group, in the matcher's order."""
    position = {id(s): j for j, s in enumerate(structures)}
    return [position[id(group[0])] for group in matcher().group_structures(structures)]


class ReferenceIndex:
    """Known structures indexed by reduced formula: a sample is only matched against its own formula."""

    def __init__(self, structures: Iterable[Structure]):
        self.by_formula: dict[str, list[Structure]] = {}
        for s in structures:
            self.by_formula.setdefault(s.composition.reduced_formula, []).append(s)
        self.matcher = matcher()
        self._primitive_sizes: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_formula.values())

    def primitive_sizes(self, formula: str) -> list[int]:
        """Sites in each reference's primitive cell, computed once per formula bucket when first asked."""
        if formula not in self._primitive_sizes:
            self._primitive_sizes[formula] = [len(ref.get_primitive_structure()) for ref in self.by_formula[formula]]
        return self._primitive_sizes[formula]

    def contains(self, structure: Structure) -> bool:
        formula = structure.composition.reduced_formula
        candidates = self.by_formula.get(formula, [])
        if len(candidates) > 4:
            # The matcher reduces both structures to primitive cells (same reduction, same tolerance) and
            # never matches cells of different sizes without supercells, so only equal sizes can fit: an
            # exact filter that spares re-reducing every reference of a big bucket (e.g. 2,000 carbons) per sample.
            n = len(structure.get_primitive_structure())
            candidates = [ref for ref, size in zip(candidates, self.primitive_sizes(formula)) if size == n]
        return any(self.matcher.fit(structure, ref) for ref in candidates)


class LatticeIndex:
    """Known crystals given only as formula + cell (no positions), e.g. MP-20 train metadata.

    A sample matches when its reduced formula and atoms per formula unit agree and the
    Niggli-reduced cells agree within the matcher's tolerances (lengths 30%, angles 10 deg):
    the same question StructureMatcher asks first, without the positions it cannot check.
    """

    def __init__(self, table: "pd.DataFrame", ltol: float = 0.3, angle_tol: float = 10.0):
        self.ltol, self.angle_tol = ltol, angle_tol
        # cell parameters per (reduced formula, formula units); Niggli-reduced only for the keys a sample asks about
        self._cells: dict[tuple[str, int], list[tuple[float, ...]]] = {}
        self._reduced: dict[tuple[str, int], np.ndarray] = {}
        for row in table.itertuples(index=False):
            # `species` (one symbol per atom) gives the cell's composition; `formula` may be reduced
            species = getattr(row, "species", None)
            comp = Composition(Counter(str(species).split())) if isinstance(species, str) else Composition(row.formula)
            reduced, factor = comp.get_reduced_composition_and_factor()
            key = (reduced.reduced_formula, int(round(factor)))
            self._cells.setdefault(key, []).append((row.a, row.b, row.c, row.alpha, row.beta, row.gamma))

    def __len__(self) -> int:
        return sum(len(v) for v in self._cells.values())

    @property
    def formulas(self) -> set[str]:
        return {formula for formula, _ in self._cells}

    def subset(self, formula: str) -> "LatticeIndex":
        """The known cells of one reduced formula (a formula bucket's unit of work, cheap to send to a worker)."""
        part = LatticeIndex.__new__(LatticeIndex)
        part.ltol, part.angle_tol = self.ltol, self.angle_tol
        part._cells = {key: cells for key, cells in self._cells.items() if key[0] == formula}
        part._reduced = {}
        return part

    def niggli_cells(self, key: tuple[str, int]) -> np.ndarray:
        """(n, 6) Niggli-reduced cell parameters of the known crystals with this key, computed on first use."""
        from pymatgen.core import Lattice

        if key not in self._reduced:
            cells = self._cells.get(key, [])
            self._reduced[key] = np.array([_niggli_parameters(Lattice.from_parameters(*c)) for c in cells]).reshape(-1, 6)
        return self._reduced[key]

    def contains(self, structure: Structure) -> bool:
        primitive = structure.get_primitive_structure()
        reduced, factor = primitive.composition.get_reduced_composition_and_factor()
        key = (reduced.reduced_formula, int(round(factor)))
        if key not in self._cells:
            return False
        candidates = self.niggli_cells(key)
        mine = _niggli_parameters(primitive.lattice)
        for ref in candidates:
            lengths_ok = np.all(np.abs(mine[:3] / ref[:3] - 1) <= self.ltol)
            if lengths_ok and np.all(np.abs(mine[3:] - ref[3:]) <= self.angle_tol):
                return True
        return False


def _niggli_parameters(lattice) -> np.ndarray:
    reduced = lattice.get_niggli_reduced_lattice()
    return np.array([*reduced.abc, *reduced.angles])


def novelty_flags(structures: Sequence[Structure | None], reference: ReferenceIndex, lattices: LatticeIndex | None = None,
                  workers: "Workers | int | None" = None) -> list[bool]:
    """True for a parsed sample that matches no reference structure (nor cell); False for unparseable ones.
    One unit of work per formula bucket: the bucket's samples against its references and known cells."""
    cell_formulas = lattices.formulas if lattices is not None else set()
    by_formula: dict[str, list[int]] = {}
    for i, s in enumerate(structures):
        if s is not None and ((formula := s.composition.reduced_formula) in reference.by_formula or formula in cell_formulas):
            by_formula.setdefault(formula, []).append(i)
    buckets = sorted(by_formula.items(), key=lambda item: len(item[1]) * (1 + len(reference.by_formula.get(item[0], []))),
                     reverse=True)
    jobs = [([structures[i] for i in indices], reference.by_formula.get(formula, []),
             lattices.subset(formula) if formula in cell_formulas else None) for formula, indices in buckets]
    known = [False] * len(structures)
    for (_, indices), found in zip(buckets, map_ordered(known_in_bucket, jobs, as_workers(workers), "novelty", chunksize=4)):
        for i, k in zip(indices, found):
            known[i] = k
    return [s is not None and not k for s, k in zip(structures, known)]


def known_in_bucket(job: tuple[list[Structure], list[Structure], LatticeIndex | None]) -> list[bool]:
    """(samples, references, known cells) of one formula: which samples match a reference structure or cell."""
    samples, references, cells = job
    index = ReferenceIndex(references)
    return [index.contains(s) or (cells is not None and cells.contains(s)) for s in samples]


def distribution_jsd(samples: Iterable, reference: Iterable, support: Iterable | None = None) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two categorical distributions."""
    a, b = Counter(samples), Counter(reference)
    keys = sorted(set(a) | set(b) | set(support or []), key=str)
    p = np.array([a.get(k, 0) for k in keys], dtype=float)
    q = np.array([b.get(k, 0) for k in keys], dtype=float)
    if p.sum() == 0 or q.sum() == 0:
        return 1.0
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


def wdist(samples: Sequence[float], reference: Sequence[float]) -> float | None:
    samples = [x for x in samples if x is not None and math.isfinite(x)]
    if not samples or not reference:
        return None
    return float(wasserstein_distance(samples, reference))


def wyckoff_labels(record) -> list[str]:
    """`group:label` of every orbit of a record, e.g. ["225:4a", "225:8c"]."""
    return [f"{record.kind}{record.group}:{site.label}" for site in record.sites]


def condition_accuracy(requested: dict, structure: Structure, group: int | None) -> dict[str, bool]:
    """Which requested conditions a parsed sample honours (those a structure alone can decide)."""
    from xtallm.tokenization.conditions import _elements, plain_formula

    out: dict[str, bool] = {}
    comp = structure.composition
    for key, value in requested.items():
        if key in ("sg", "lg"):
            out[key] = group == value
        elif key == "formula":
            out[key] = plain_formula(comp) == value
        elif key == "elements":
            out[key] = _elements([e.symbol for e in comp.elements]) == value
        elif key == "n_atoms":
            out[key] = len(structure) == value
        elif key == "density":
            out[key] = abs(structure.density - value) <= 0.1 * value
    return out


def layer_geometry(structure: Structure, max_bond_gap: float = 3.5, min_vacuum: float = 5.0) -> dict[str, float | bool]:
    """Thickness, and whether a monolayer is one contiguous slab with real vacuum around it.

    Along the layer normal, the largest empty gap is the vacuum; any other gap wider than
    `max_bond_gap` Å means atoms float apart from the slab.
    """
    from xtallm.tokenization.record import layer_cell

    layer = layer_cell(structure)
    z = np.sort(layer.cart_coords[:, 2])
    c = layer.lattice.c
    gaps = np.diff(z)
    vacuum = c - (z[-1] - z[0])
    return {
        "thickness": float(z[-1] - z[0]),
        "contiguous": bool(len(gaps) == 0 or gaps.max() <= max_bond_gap),
        "vacuum_ok": bool(vacuum >= min_vacuum),
    }


def with_vacuum(structure: Structure, vacuum: float = 15.0) -> Structure:
    """The same monolayer with c perpendicular and `vacuum` Å of empty space.

    Layers from different sources carry different vacuum; StructureMatcher compares cell
    lengths (ltol), so 2D samples and 2D references are brought to one vacuum before matching.
    """
    from pymatgen.core import Lattice

    from xtallm.tokenization.record import layer_cell

    layer = layer_cell(structure)
    cart = layer.cart_coords
    z = cart[:, 2]
    thickness = float(z.max() - z.min())
    a, b, gamma = layer.lattice.a, layer.lattice.b, layer.lattice.gamma
    lattice = Lattice.from_parameters(a, b, thickness + vacuum, 90.0, 90.0, gamma)
    cart = cart.copy()
    cart[:, 2] += (thickness + vacuum) / 2 - (z.max() + z.min()) / 2
    return Structure(lattice, layer.species, cart, coords_are_cartesian=True)
