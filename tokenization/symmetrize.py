"""Put a coarse crystal into the group it declares: the Wyckoff record of that group, or a clear refusal.

LLM output (and any hand-made or rounded CIF) states a group but places its atoms only roughly.
Detecting the group at one tolerance then often lands on another one: too tight finds a subgroup
(often P1), too loose merges atoms or finds more symmetry than declared. `fit_to_group` scans
moyopy's distance tolerance from tight to loose and keeps the tightest one that finds the declared
group, or a supergroup of it (the structure is more symmetric than it says, or looks so at that
tolerance). In the second case the declared group's cell, origin and operations are found inside the
supergroup (moyopy's subgroup enumeration and group identification, so layer groups work the same
way) and the input atoms are projected onto the declared group there: distortions the declared group
allows (a c/a ratio, a free coordinate) are kept, not averaged away by the supergroup. The Wyckoff
tables are PyXtal's, as everywhere in xtallm.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import moyopy
import numpy as np
from pymatgen.core import Lattice, Structure

from .errors import EncodeError, XtallmError
from .record import (
    _ORIGIN_SHIFTS,
    CrystalRecord,
    _area_or_volume,
    _lattice_parameters,
    _reraise_interrupts,
    check_structure,
    detect_group,
    layer_cell,
    record_from_standard_cell,
)
from .symmetry import GroupId, GroupTable, get_group

TOLERANCES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # Å, moyopy's symprec, tried in this order
MAX_TOLERANCE = 0.5  # Å: what LLM-grade input needs (rounded coordinates, ~0.1 Å errors)
MAX_K_INDEX = 4  # largest cell enlargement tried for a supergroup with more translations (F -> P: 4)
LAYER_SEARCH_VACUUM = 5.0  # Å along c in the cell a layer's symmetry is searched in
_EXACT = 1e-3  # Å: symmetrized cells are exact up to rounding


@dataclass
class GroupFit:
    """A structure written in its declared group, and what that took."""

    record: CrystalRecord
    tolerance: float  # Å, the symprec the group (or a supergroup of it) was found at
    max_shift: float  # Å, largest move of an atom from the input to the symmetrized crystal
    rms_shift: float  # Å
    detected: int  # the group found at `tolerance`: the declared one or a supergroup of it
    note: str  # one line saying what was done (for a refine_note)


def fit_to_group(structure: Structure, dim: int, group: int | GroupId, max_tolerance: float = MAX_TOLERANCE) -> GroupFit:
    """`structure` symmetrized into `group` (space group for dim 3, layer group for dim 2).

    Raises EncodeError (one line naming the structure and the group) when no tolerance up to
    `max_tolerance` Å finds the group or a supergroup it can be written in, when atoms would merge,
    or when an atom would move more than `max_tolerance` Å. A rigid translation is not a move, and
    the lattice is symmetrized too (its change is not counted as a move).
    """
    if isinstance(group, GroupId):
        if group.dim != dim:
            raise EncodeError(f"{group} is a {'layer' if group.dim == 2 else 'space'} group, but dim={dim}")
        number = group.number
    else:
        number = int(group)
    try:
        target = GroupId(dim, number).table
    except ValueError as exc:
        raise EncodeError(str(exc)) from None
    if not max_tolerance > 0:
        raise EncodeError(f"max_tolerance must be > 0 Å, got {max_tolerance}")
    check_structure(structure)
    with _quiet_moyopy():
        return _scan(structure, dim, target, max_tolerance)


@contextmanager
def _quiet_moyopy():
    """moyopy logs a warning for each tolerance at which atoms move far: the scan tries such tolerances on purpose."""
    logger = logging.getLogger("moyo")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _scan(structure: Structure, dim: int, target: GroupTable, max_tolerance: float) -> GroupFit:
    """The tightest tolerance that finds the declared group or a supergroup it can be written in (fit_to_group)."""
    number = target.number
    cell = _search_cell(structure, max_tolerance) if dim == 2 else structure
    name = f"{structure.composition.reduced_formula} ({len(structure)} atoms)"
    tolerances = [t for t in TOLERANCES if t < max_tolerance] + [float(max_tolerance)]
    found: list[int] = []  # groups seen, in the order of the scan
    problems: list[str] = []
    for tolerance in tolerances:
        ds = _dataset(cell, dim, tolerance)
        if ds is None:
            continue
        detected = int(ds.number)
        found += [detected] if detected not in found else []
        if detected != number and not _may_contain(dim, detected, number):
            continue
        if _merged(cell, ds, dim):
            problems.append(f"atoms merge at symprec {tolerance:g} Å")
            continue
        fit = None
        if detected == number:
            fit = _encoded(cell, ds, dim, target, tolerance)
        if fit is None:  # a supergroup, or the encoder's own standardization failed: through the operations
            fit = _projected(cell, ds, dim, target, tolerance)
        if fit is None:
            if detected != number:
                problems.append(f"{target.kind} {detected} found at symprec {tolerance:g} Å does not contain {target.kind} {number} "
                                "(or only with a larger cell than the input's)")
            continue
        record, max_shift, rms_shift = fit
        if max_shift > max_tolerance:
            problems.append(f"an atom would move {max_shift:.2f} Å (> {max_tolerance:g} Å) at symprec {tolerance:g} Å")
            break
        return GroupFit(record, tolerance, max_shift, rms_shift, detected, _note(target, detected, tolerance, max_shift, rms_shift))
    if problems:
        problem = problems[-1]
    else:
        seen = ", ".join(f"{target.kind} {g}" for g in found) or "none (the search failed)"
        problem = (f"the groups found up to symprec {max_tolerance:g} Å are {seen}, "
                   f"none of them {target.kind} {number} or a supergroup of it")
    raise EncodeError(f"{name} does not fit {target.kind} {number} ({target.symbol}) within {max_tolerance:g} Å: {problem}")


def _note(target: GroupTable, detected: int, tolerance: float, max_shift: float, rms_shift: float) -> str:
    moved = f"max shift {max_shift:.2f} Å, RMS {rms_shift:.2f} Å"
    if detected == target.number:
        return f"symmetrized into {target.kind} {target.number} ({target.symbol}) at symprec {tolerance:g} Å ({moved})"
    other = get_group(target.dim, detected)
    return (f"symmetrized into {target.kind} {target.number} ({target.symbol}) at symprec {tolerance:g} Å, where the input looks "
            f"like its supergroup {target.kind} {detected} ({other.symbol}) ({moved})")


# ---------------------------------------------------------------------------- symmetry search


def _dataset(cell: Structure, dim: int, symprec: float):
    """moyopy's dataset of `cell` at `symprec` Å (standard setting), None when the search fails."""
    return _moyo(cell.lattice.matrix, cell.frac_coords, cell.atomic_numbers, dim, symprec)


def _search_cell(structure: Structure, max_tolerance: float) -> Structure:
    """The layer with c perpendicular and only LAYER_SEARCH_VACUUM Å of vacuum: moyopy's layer search misses
    symmetry of noisy layers in tall cells (held-out monolayers, 0.05 Å noise: the declared group is found
    at some tolerance for 281 of 297 in their own cells, 287 with 5 Å of vacuum)."""
    layer = layer_cell(structure)
    z = layer.cart_coords[:, 2]
    c = float(z.max() - z.min()) + max(LAYER_SEARCH_VACUUM, 4 * max_tolerance)
    a, b, _, alpha, beta, gamma = layer.lattice.parameters
    frac = layer.frac_coords.copy()
    frac[:, 2] = (z - (z.max() + z.min()) / 2) / c + 0.5
    return Structure(Lattice.from_parameters(a, b, c, alpha, beta, gamma), layer.species, frac)


def _moyo(basis, positions, numbers, dim: int, symprec: float):
    try:
        c = moyopy.Cell(np.asarray(basis, float).tolist(), np.asarray(positions, float).tolist(), [int(z) for z in numbers])
        if dim == 3:
            return moyopy.MoyoDataset(c, symprec=symprec, setting=moyopy.Setting.standard())
        return moyopy.MoyoLayerDataset(c, symprec=symprec)
    except BaseException as exc:  # moyopy raises plain exceptions, and Rust panics (a BaseException)
        _reraise_interrupts(exc)
        return None


def _merged(cell: Structure, ds, dim: int) -> bool:
    """The symmetrized cell holds fewer atoms per volume than the input: moyopy merged some."""
    prim = ds.prim_std_cell
    density = len(prim.numbers) / _area_or_volume(np.array(prim.basis, dtype=float), dim)
    return abs(density / (len(cell) / _area_or_volume(cell.lattice.matrix, dim)) - 1) > 0.01


def _moves(delta_frac: np.ndarray, lattice: np.ndarray) -> tuple[float, float]:
    """(max, RMS) Å of fractional moves in `lattice` (rows), less their mean (a rigid shift)."""
    moves = (delta_frac - np.round(delta_frac)) @ lattice
    moves -= moves.mean(axis=0)
    length = np.linalg.norm(moves, axis=1)
    return float(length.max()), float(np.sqrt((length**2).mean()))


@lru_cache(maxsize=None)
def _point_group_order(dim: int, number: int) -> int:
    ops = get_group(dim, number).wyckoffs[0].ops[:, :, :3]
    return len({tuple(np.round(r, 6).ravel()) for r in ops})


def _may_contain(dim: int, big: int, small: int) -> bool:
    """Cheap necessary condition for `small` to be a proper subgroup of `big`: its point group order divides."""
    return big != small and _point_group_order(dim, big) % _point_group_order(dim, small) == 0


def _reproduces(record: CrystalRecord, cell: Structure, dim: int) -> bool:
    """The record expands to a crystal of the input's composition and atom density, in its group or above."""
    try:
        built = record.to_structure()
    except XtallmError:
        return False
    density = len(built) / _area_or_volume(built.lattice.matrix, dim)
    density_in = len(cell) / _area_or_volume(cell.lattice.matrix, dim)
    if abs(density / density_in - 1) > 0.01 or built.composition.reduced_formula != cell.composition.reduced_formula:
        return False
    found = detect_group(built, dim, symprec=1e-3)
    return found is not None and (found == record.group or _may_contain(dim, found, record.group))


# ---------------------------------------------------------------------------- the declared group found


def _encoded(cell: Structure, ds, dim: int, target: GroupTable, tolerance: float):
    """(record, max, RMS shift) from the encoder at `tolerance`, where moyopy finds the declared group."""
    try:
        record = CrystalRecord.from_structure(cell, dim=dim, symprec=tolerance)
    except XtallmError:
        return None
    if record.group != target.number or not _reproduces(record, cell, dim):
        return None
    # moyopy: x_selected = inv(linear) @ (x_input - origin), then the positions are refined in place
    linear = np.array(ds.prim_std_linear, dtype=float)
    selected = np.linalg.solve(linear, (cell.frac_coords - np.array(ds.prim_std_origin_shift)).T).T
    prim = ds.prim_std_cell
    delta = selected - np.array(prim.positions, dtype=float)[np.asarray(ds.mapping_std_prim)]
    return (record, *_moves(delta, np.array(prim.basis, dtype=float)))


# ---------------------------------------------------------------------------- a supergroup found


def _projected(cell: Structure, ds, dim: int, target: GroupTable, tolerance: float):
    """(record, max, RMS shift) of the input projected onto the declared group H inside the group G found, or None.

    Every embedding of H in G comes from G's operations in the primitive cell: translationengleiche
    subgroups first, then klassengleiche ones of those (an enlarged cell). moyopy identifies each and
    gives the transformation to H's standard cell; there H's operations (PyXtal's tables, origin searched)
    average the input's atoms and lattice metric, and H's Wyckoff positions are assigned."""
    primitive = _primitive_std(ds, dim)
    if primitive is None:
        return None
    basis, frac, numbers, to_input = primitive
    exact = _moyo(basis, frac, numbers, dim, _EXACT)
    if exact is None or exact.number != ds.number or len(exact.operations) != _point_group_order(dim, int(ds.number)):
        return None
    rotations = tuple(tuple(tuple(int(v) for v in row) for row in r) for r in exact.operations.rotations)
    translations = tuple(tuple(round(float(v), 6) for v in t) for t in exact.operations.translations)
    for transformation, r, t in _embeddings(dim, rotations, translations, target.number, len(cell) / len(numbers)):
        found = _identify(dim, r, t, transformation.T @ basis)
        if found is None or found[0] != target.number:
            continue
        _, linear, origin, centring = found
        P = transformation @ linear @ centring  # primitive cell of G -> conventional cell of H
        shift = np.linalg.solve(linear @ centring, origin)
        conventional = _transform(frac, numbers, P, shift, dim)
        if conventional is None:
            continue
        for m in _reduced_settings(target, P.T @ basis):
            fit = _project_setting(cell, target, P @ m, shift, conventional, m, basis, to_input, tolerance)
            if fit is not None:
                return fit
    return None


def _primitive_std(ds, dim: int):
    """The symmetrized (refined) crystal of `ds` in a primitive cell: (basis rows, positions, numbers, (L, p)) with
    input fractional coordinates x = L @ u + p for a primitive-cell point u. Built from the conventional
    `std_cell`, which moyopy refines for layers too (its primitive layer cell is not)."""
    std = ds.std_cell
    entry = moyopy.HallSymbolEntry(ds.hall_number) if dim == 3 else moyopy.LayerHallSymbolEntry(ds.hall_number)
    centring = np.array(entry.centering.linear, dtype=float)  # conventional basis = primitive basis @ centring
    basis = np.linalg.inv(centring).T @ np.array(std.basis, dtype=float)
    frac = np.array(std.positions, dtype=float) @ centring.T
    frac[:, :dim] -= np.floor(frac[:, :dim])  # a layer stays whole along c (moyopy's layer search needs that)
    frac[:, :dim][np.isclose(frac[:, :dim], 1.0, atol=1e-8)] = 0.0
    numbers = np.array(std.numbers)
    keep: list[int] = []
    for i, x in enumerate(frac):
        if not any(numbers[j] == numbers[i] and np.abs((frac[j] - x) - np.round(frac[j] - x)).max() < 1e-6 for j in keep):
            keep.append(i)
    if len(keep) * round(abs(np.linalg.det(centring))) != len(frac):
        return None
    to_input = np.array(ds.std_linear, dtype=float) @ np.linalg.inv(centring), np.array(ds.std_origin_shift, dtype=float)
    return basis, frac[keep], numbers[keep], to_input


def _project_setting(cell: Structure, table: GroupTable, Pm: np.ndarray, shift: np.ndarray, conventional, m: np.ndarray,
                     basis: np.ndarray, to_input, tolerance: float):
    """The projection in one cell choice of H (conventional cell `Pm` of G's primitive one), origin searched."""
    frac, numbers = conventional
    positions = frac @ np.linalg.inv(m).T
    positions -= np.floor(positions)
    exact_lattice = Pm.T @ basis
    ops = table.wyckoffs[0].ops
    linear, origin = to_input
    for o in _ORIGIN_SHIFTS[table.dim]:
        exact = positions + o
        exact -= np.floor(exact)
        perms = _permutations(ops, exact, numbers, exact_lattice)
        if perms is None:
            continue
        # the H-cell point x is the G-primitive point Pm @ (x - o) + P @ shift, i.e. input point A @ x + b
        A = linear @ Pm
        b = linear @ (Pm @ (np.linalg.solve(m, shift) - o)) + origin
        delta = _input_offsets(cell, exact, numbers, A, b, max(2 * tolerance, 0.1))
        if delta is None:
            continue
        # Reynolds projection: the average of the displacement field over H's operations is H-invariant
        rotations = ops[:, :, :3]
        projected = np.zeros_like(delta)
        for perm, rot in zip(perms, rotations):
            projected[perm] += delta @ rot.T
        projected /= len(ops)
        metric = A.T @ cell.lattice.matrix @ cell.lattice.matrix.T @ A
        metric = np.mean([rot.T @ metric @ rot for rot in rotations], axis=0)
        lattice = _lattice_from_metric(metric)
        positions_h = exact + projected
        record = _record_from_cell(table, lattice, positions_h - np.floor(positions_h), numbers, perms.min(axis=0), tolerance)
        if record is None or not _reproduces(record, cell, table.dim):
            continue
        return (record, *_moves(projected - delta, lattice))
    return None


def _input_offsets(cell: Structure, exact: np.ndarray, numbers: np.ndarray, A: np.ndarray, b: np.ndarray, reach: float):
    """Fractional (H-cell) offset from every exact site to the nearest input atom of its element, None when
    one has none within `reach` Å."""
    sites = exact @ A.T + b  # input fractional coordinates
    delta = cell.frac_coords[None, :, :] - sites[:, None, :]
    delta -= np.round(delta)
    dist = np.linalg.norm(delta @ cell.lattice.matrix, axis=-1)
    dist[numbers[:, None] != np.array(cell.atomic_numbers)[None, :]] = np.inf
    nearest = np.argmin(dist, axis=1)
    rows = np.arange(len(exact))
    if not np.all(dist[rows, nearest] <= reach):
        return None
    return np.linalg.solve(A, delta[rows, nearest].T).T


def _lattice_from_metric(metric: np.ndarray) -> np.ndarray:
    lengths = np.sqrt(np.diag(metric))
    cosines = [metric[j, k] / lengths[j] / lengths[k] for j, k in ((1, 2), (0, 2), (0, 1))]
    angles = np.degrees(np.arccos(np.clip(cosines, -1, 1)))
    return Lattice.from_parameters(*lengths, *angles).matrix


def _embeddings(dim: int, rotations: tuple, translations: tuple, number: int, cells: float):
    """(sublattice T, rotations, translations) of candidate subgroups, cheapest first: the t-subgroups, then
    k-subgroups of index <= MAX_K_INDEX dividing `cells` (input atoms / primitive atoms) of the t-subgroups
    whose point group has the target's order (a k-subgroup keeps the point group)."""
    subgroups = _t_subgroups(rotations, translations)
    for r, t in subgroups:
        yield np.eye(3, dtype=int), r, t
    if abs(cells - round(cells)) > 1e-6:
        return
    order = _point_group_order(dim, number)
    for index in range(2, MAX_K_INDEX + 1):
        if round(cells) % index:
            continue
        for r, t in subgroups:
            if len(r) == order:
                yield from _k_subgroups(dim, r, t, index)


@lru_cache(maxsize=256)
def _t_subgroups(rotations: tuple, translations: tuple) -> tuple:
    """(rotations, translations) of one subgroup per conjugacy class of t-subgroups (G itself included)."""
    try:
        classes = moyopy.enumerate_translationengleiche_subgroups([list(map(list, r)) for r in rotations],
                                                                 [list(t) for t in translations])
    except BaseException as exc:
        _reraise_interrupts(exc)
        return ()
    out = []
    for c in classes:
        ops = c.representative.operations
        out.append((tuple(tuple(tuple(row) for row in r) for r in ops.rotations), tuple(tuple(t) for t in ops.translations)))
    return tuple(out)


@lru_cache(maxsize=256)
def _k_subgroups(dim: int, rotations: tuple, translations: tuple, index: int) -> tuple:
    """(sublattice basis T, rotations, translations in T's basis) of the k-subgroups of `index`: the same
    rotations, translations only from a sublattice the rotations keep (in-plane for layer groups), each
    rotation's translation picked among the sublattice's cosets for a generating set, kept when they close
    into a group. (moyopy's own enumeration takes seconds for the large cubic groups.)"""
    R = np.array(rotations, dtype=int)
    t = np.array(translations, dtype=float)
    generators = _generators(R)
    out = []
    for T in _sublattices(dim, index):
        inverse = np.linalg.inv(T)
        rot = np.einsum("ij,kjl,lm->kim", inverse, R, T)
        if not np.allclose(rot, np.round(rot)):
            continue  # the rotations do not keep this sublattice
        rot = np.rint(rot).astype(int)
        trans = t @ inverse.T
        cosets = [inverse @ np.array(v, dtype=float) for v in itertools.product(*(range(int(T[i, i])) for i in range(3)))]
        for choice in itertools.product(cosets, repeat=len(generators)):
            ops = _close({g: (trans[g] + c) % 1.0 for g, c in zip(generators, choice)}, rot)
            if ops is not None:
                out.append((T, tuple(tuple(map(tuple, r)) for r, _ in ops), tuple(tuple(float(x) for x in v) for _, v in ops)))
    return tuple(out)


def _generators(R: np.ndarray) -> list[int]:
    """Indices of rotations that generate the whole point group (greedy)."""
    keys = {r.tobytes(): i for i, r in enumerate(R)}
    chosen: list[int] = []
    group = {np.eye(3, dtype=R.dtype).tobytes()}
    for i, r in enumerate(R):
        if r.tobytes() in group:
            continue
        chosen.append(i)
        group = set()
        frontier = [np.eye(3, dtype=R.dtype)]
        while frontier:
            nxt = []
            for g in frontier:
                for j in chosen:
                    h = g @ R[j]
                    if h.tobytes() not in group:
                        group.add(h.tobytes())
                        nxt.append(h)
            frontier = nxt
        if len(group) == len(keys):
            break
    return chosen


def _close(generators: dict[int, np.ndarray], rot: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The space group (rotation, translation mod 1) generated by these operations; None when two products
    give one rotation with different translations (not a group with this lattice)."""
    identity = np.eye(3, dtype=int)
    found = {identity.tobytes(): (identity, np.zeros(3))}
    frontier = [(identity, np.zeros(3))]
    while frontier:
        nxt = []
        for r, v in frontier:
            for g, tg in generators.items():
                r2, v2 = r @ rot[g], (r @ tg + v) % 1.0
                key = r2.tobytes()
                if key in found:
                    d = found[key][1] - v2
                    if np.abs(d - np.round(d)).max() > 1e-6:
                        return None
                    continue
                found[key] = (r2, v2)
                nxt.append((r2, v2))
        frontier = nxt
    return list(found.values()) if len(found) == len(rot) else None


def _sublattices(dim: int, index: int):
    """Hermite normal forms (columns: the new basis) of the sublattices of `index`; layer groups keep c."""
    for a in range(1, index + 1):
        for d in range(1, index + 1):
            if index % (a * d) or (dim == 2 and a * d != index):
                continue
            f = index // (a * d)
            for b, c, e in itertools.product(range(a), range(a if dim == 3 else 1), range(d if dim == 3 else 1)):
                yield np.array([[a, b, c], [0, d, e], [0, 0, f]])


def _identify(dim: int, rotations: tuple, translations: tuple, basis: np.ndarray):
    """(number, linear, origin shift, centring) of the group of these primitive operations, standard setting:
    x_standard_primitive = inv(linear) @ (x - origin shift), conventional basis = primitive basis @ centring."""
    try:
        if dim == 3:
            g = moyopy.SpaceGroup([list(map(list, r)) for r in rotations], [list(t) for t in translations],
                                  basis=basis.tolist(), setting=moyopy.Setting.standard())
        else:
            g = moyopy.LayerGroup([list(map(list, r)) for r in rotations], [list(t) for t in translations],
                                  basis=basis.tolist(), setting=moyopy.LayerSetting.standard())
        entry = moyopy.HallSymbolEntry(g.hall_number) if dim == 3 else moyopy.LayerHallSymbolEntry(g.hall_number)
    except BaseException as exc:
        _reraise_interrupts(exc)
        return None
    centring = np.array(entry.centering.linear, dtype=float)
    return int(g.number), np.array(g.linear, dtype=float), np.array(g.origin_shift, dtype=float), centring


def _transform(frac: np.ndarray, numbers: np.ndarray, P: np.ndarray, shift: np.ndarray, dim: int):
    """Atoms of the cell with basis columns old @ P (integer, det >= 1), origin moved by `shift` (new coords);
    periodic along the first `dim` axes (a layer's c is kept by P and not wrapped)."""
    P = np.rint(P).astype(int)
    det = int(round(np.linalg.det(P)))
    if det < 1:
        return None
    inverse = np.linalg.inv(P)
    corners = np.array(list(itertools.product((0, 1), repeat=3))) @ P.T
    ranges = [range(int(np.floor(lo)), int(np.ceil(hi)) + 1) if k < dim else range(1)
              for k, (lo, hi) in enumerate(zip(corners.min(0), corners.max(0)))]
    grid = np.array(list(itertools.product(*ranges)), dtype=float)
    points = ((frac[None, :, :] + grid[:, None, :]) @ inverse.T).reshape(-1, 3)
    species = np.tile(numbers, len(grid))
    inside = np.all((points[:, :dim] > -1e-8) & (points[:, :dim] < 1 - 1e-8), axis=1)
    points, species = points[inside], species[inside]
    if len(points) != det * len(frac):
        return None
    points = points - shift
    points[:, :dim] -= np.floor(points[:, :dim])
    return points, species


def _reduced_settings(table: GroupTable, lattice: np.ndarray):
    """Unimodular changes of the cell to try, best first: the identity, except where the family leaves an
    angle free (triclinic, monoclinic, oblique): there shorter vectors and an obtuse angle first, since a
    subgroup's cell found from operations can be skewed. A change that breaks the setting fails later."""
    free = {"triclinic": (0, 1, 2), "monoclinic": (0, 2), "oblique": (0, 1)}.get(table.family)
    if free is None:
        yield np.eye(3, dtype=int)
        return
    if len(free) == 3:  # P1 and P-1 hold in any basis: the Niggli cell
        reduced = Lattice(lattice).get_niggli_reduced_lattice().matrix
        matrices = [np.rint(np.linalg.solve(lattice.T, reduced.T)).astype(int), np.eye(3, dtype=int)]
    else:
        i, j = free
        matrices = []
        for p, q, r, t in itertools.product(range(-2, 3), repeat=4):
            if p * t - q * r == 1:
                m = np.eye(3, dtype=int)
                m[i, i], m[i, j], m[j, i], m[j, j] = p, q, r, t
                matrices.append(m)
        if table.family == "monoclinic":  # -a, -b, c: beta becomes 180 - beta (in a plane the matrices above do it)
            matrices += [m @ np.diag([-1, -1, 1]) for m in matrices]

    def rank(m: np.ndarray) -> tuple:
        if len(free) == 3:
            return (0,)
        new = m.T @ lattice
        lengths = np.linalg.norm(new, axis=1)
        i, j = free
        angle = np.degrees(np.arccos(np.clip(new[i] @ new[j] / lengths[i] / lengths[j], -1, 1)))
        return (round(lengths[i] + lengths[j], 4), angle < 90 - 1e-6, round(abs(angle - 90), 4))

    seen = set()
    for m in sorted(matrices, key=rank):
        if m.tobytes() in seen or round(np.linalg.det(m)) != 1:
            continue
        seen.add(m.tobytes())
        yield m


def _permutations(ops: np.ndarray, frac: np.ndarray, numbers: np.ndarray, lattice: np.ndarray) -> np.ndarray | None:
    """perms[k, i]: the atom operation k maps atom i onto, or None if some operation is no symmetry here."""
    same = numbers[:, None] == numbers[None, :]
    perms = []
    for op in ops:
        images = frac @ op[:, :3].T + op[:, 3]
        delta = images[:, None, :] - frac[None, :, :]
        delta -= np.round(delta)  # periodic along c too: moyopy's cells are, and layer operations map the slab onto itself mod c
        dist = np.where(same, np.linalg.norm(delta @ lattice, axis=-1), np.inf)
        j = np.argmin(dist, axis=1)
        if dist[np.arange(len(frac)), j].max() > 10 * _EXACT:
            return None
        perms.append(j)
    return np.array(perms)


def _record_from_cell(table: GroupTable, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, orbits: np.ndarray,
                      tolerance: float) -> CrystalRecord | None:
    """The record of a conventional cell in the standard setting of `table`'s group, given each atom's orbit,
    when the cell has the family's shape (a hexagonal cell with gamma 60 is not the standard one)."""
    record = record_from_standard_cell(table, lattice, frac, numbers, orbits, [""] * len(numbers), tolerance)
    if record is None:
        return None
    c = float(np.linalg.norm(lattice[2]))
    if not np.allclose(record.full_lattice_parameters(c), _lattice_parameters(lattice), rtol=1e-3, atol=1e-2):
        return None
    return record
