"""The symmetry-aware crystal record: group, free lattice parameters, one site per orbit.

A `CrystalRecord` is what every text format, the LLM and the refiner agree on. It holds
only what the group leaves free, so a record always expands to a crystal with at least
the record's symmetry (orbit expansion is exact), whatever numbers a model wrote into it.

Bulk (dim=3): space group 1..230, fractional free coordinates in [0, 1).
Layer (dim=2): layer group 1..80, periodic in a, b; the free z of a site is a Cartesian
offset in Å from the layer's mid-plane, and c (thickness + vacuum) is chosen on output.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, replace

import moyopy
import numpy as np
from pymatgen.core import Element, Lattice, Structure

from .errors import EncodeError, ParseError
from .symmetry import (
    ANGLES,
    LENGTHS,
    GroupId,
    GroupTable,
    WyckoffPosition,
    check_group,
    find_anchor,
    get_group,
    wrap_periodic,
)

DEFAULT_VACUUM = 15.0  # Å of vacuum along c for layers
MIN_ORBIT_SEPARATION = 1e-2  # Å: closer images of one orbit mean the site collapsed
MIN_ATOM_DISTANCE = 0.1  # Å: closer atoms in an input structure are a data error, not a crystal
MAX_LAYER_Z = 50.0  # Å from the mid-plane; the thickest training monolayer is 44 Å thick


@dataclass
class Site:
    element: str
    wyckoff: str  # letter, e.g. "e"
    multiplicity: int
    params: tuple[float, ...]  # free coordinates of the Wyckoff position (2D z in Å)

    @property
    def label(self) -> str:
        return f"{self.multiplicity}{self.wyckoff}"


@dataclass
class CrystalRecord:
    dim: int
    group: int
    lattice: dict[str, float]  # only the family's free parameters (Å, degrees)
    sites: list[Site] = field(default_factory=list)

    # ------------------------------------------------------------------ properties
    @property
    def table(self) -> GroupTable:
        return get_group(self.dim, self.group)

    @property
    def n_atoms(self) -> int:
        return sum(s.multiplicity for s in self.sites)

    @property
    def kind(self) -> str:
        return "sg" if self.dim == 3 else "lg"

    @property
    def group_id(self) -> GroupId:
        return GroupId(self.dim, self.group)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CrystalRecord":
        sites = [Site(s["element"], s["wyckoff"], int(s["multiplicity"]), tuple(s["params"])) for s in d["sites"]]
        return cls(int(d["dim"]), int(d["group"]), dict(d["lattice"]), sites)

    def permuted(self, rng: np.random.Generator) -> "CrystalRecord":
        """Same crystal, sites in random order (training augmentation)."""
        order = rng.permutation(len(self.sites))
        return replace(self, sites=[self.sites[i] for i in order])

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ParseError if the record cannot describe a crystal of its group."""
        try:
            check_group(self.dim, self.group)
        except ValueError as exc:
            raise ParseError(str(exc)) from None
        table = self.table
        expected = table.lattice_params
        if tuple(self.lattice) != expected:
            raise ParseError(
                f"{table.kind} {self.group} ({table.family}) takes lattice parameters "
                f"{' '.join(expected)}, got {' '.join(self.lattice) or 'none'}"
            )
        for name, value in self.lattice.items():
            if not math.isfinite(value):
                raise ParseError(f"lattice parameter {name} is not a finite number: {value}")
            if name in LENGTHS and not (0.5 <= value <= 500.0):
                raise ParseError(f"lattice length {name}={value} Å is outside 0.5..500 Å")
            if name in ANGLES and not (10.0 < value < 170.0):
                raise ParseError(f"lattice angle {name}={value}° is outside 10..170°")
        if not self.sites:
            raise ParseError("no sites")
        fixed_seen: dict[str, int] = {}
        for i, site in enumerate(self.sites, 1):
            try:
                Element(site.element)
            except ValueError:
                raise ParseError(f"site {i}: unknown element {site.element!r}", site=i) from None
            try:
                wp = table.wyckoff(site.wyckoff)
            except KeyError:
                letters = "".join(w.letter for w in reversed(table.wyckoffs))
                raise ParseError(
                    f"site {i}: Wyckoff letter {site.wyckoff!r} does not exist in "
                    f"{table.kind} {self.group} (letters: {letters})",
                    site=i,
                ) from None
            if site.multiplicity != wp.multiplicity:
                raise ParseError(
                    f"site {i}: Wyckoff position {site.wyckoff} of {table.kind} {self.group} "
                    f"has multiplicity {wp.multiplicity}, text says {site.multiplicity}",
                    site=i,
                )
            if len(site.params) != len(wp.free):
                raise ParseError(
                    f"site {i} ({site.element} {wp.label}): expected {len(wp.free)} free "
                    f"coordinate(s) ({_free_names(wp)}), got {len(site.params)}",
                    site=i,
                )
            if not wp.free:  # a position without free coordinates is one point (orbit): a second line stacks atoms on it
                if site.wyckoff in fixed_seen:
                    raise ParseError(f"site {i} ({site.element} {wp.label}): fixed position {wp.label} is used twice "
                                     f"(also by site {fixed_seen[site.wyckoff]}): two atoms on one point", site=i)
                fixed_seen[site.wyckoff] = i
            if not all(math.isfinite(p) for p in site.params):
                raise ParseError(f"site {i} ({site.element} {wp.label}): non-finite coordinate", site=i)
            if self.dim == 2 and 2 in wp.free and abs(site.params[wp.free.index(2)]) > MAX_LAYER_Z:
                z = site.params[wp.free.index(2)]
                raise ParseError(f"site {i} ({site.element} {wp.label}): z={z:g} Å is more than {MAX_LAYER_Z:g} Å "
                                 "from the layer's mid-plane", site=i)

    # ------------------------------------------------------------------ record -> structure
    def full_lattice_parameters(self, c: float | None = None) -> tuple[float, ...]:
        """(a, b, c, alpha, beta, gamma) with the family's constraints applied."""
        p = self.lattice
        fam = self.table.family
        a = p["a"]
        if self.dim == 2:
            b = a if fam in ("square", "hexagonal") else p["b"]
            gamma = {"oblique": p.get("gamma", 90.0), "rectangular": 90.0, "square": 90.0, "hexagonal": 120.0}[fam]
            return (a, b, float(c if c is not None else 1.0), 90.0, 90.0, gamma)
        if fam == "cubic":
            return (a, a, a, 90.0, 90.0, 90.0)
        if fam == "tetragonal":
            return (a, a, p["c"], 90.0, 90.0, 90.0)
        if fam in ("hexagonal", "trigonal"):
            return (a, a, p["c"], 90.0, 90.0, 120.0)
        if fam == "orthorhombic":
            return (a, p["b"], p["c"], 90.0, 90.0, 90.0)
        if fam == "monoclinic":
            return (a, p["b"], p["c"], 90.0, p["beta"], 90.0)
        return (a, p["b"], p["c"], p["alpha"], p["beta"], p["gamma"])

    def to_structure(self, vacuum: float = DEFAULT_VACUUM, validate: bool = True, strict: bool = True) -> Structure:
        """Expand every orbit exactly. Layers get c = thickness + `vacuum`, slab centred.

        `strict` rejects an orbit whose free coordinates put it on a special position (its
        atoms coincide); with `strict=False` the crystal is built as written, overlaps
        included, and left to the validity checks (what a sampler wants).
        """
        if validate:
            self.validate()
        table = self.table
        species: list[str] = []
        points: list[np.ndarray] = []
        for i, site in enumerate(self.sites, 1):
            wp = table.wyckoff(site.wyckoff)
            images = wp.orbit(wp.anchor(np.asarray(site.params, dtype=float)))
            species += [site.element] * len(images)
            points.append(images)
        frac = np.concatenate(points)
        if self.dim == 2:
            # The orbit was built with c = 1 Å, so fractional z equals Cartesian z in Å.
            z = frac[:, 2]
            thickness = float(z.max() - z.min())
            c = thickness + float(vacuum)
            if c <= 0:
                raise ParseError(f"vacuum {vacuum} Å leaves no room for the layer")
            frac[:, 2] = (z - (z.max() + z.min()) / 2) / c + 0.5
            params = self.full_lattice_parameters(c)
        else:
            params = self.full_lattice_parameters()
        lattice = Lattice.from_parameters(*params)
        if not (lattice.volume > 1e-3 and math.isfinite(lattice.volume)):
            raise ParseError(f"lattice {params} has no volume")
        frac = wrap_periodic(frac, self.dim)
        if strict:
            self._check_orbits(points, lattice)
        return Structure(lattice, species, frac, coords_are_cartesian=False)

    def _check_orbits(self, points: list[np.ndarray], lattice: Lattice) -> None:
        matrix = lattice.matrix.copy()
        if self.dim == 2:
            matrix[2] = [0.0, 0.0, 1.0]  # points were built with c = 1 Å
        for i, (site, images) in enumerate(zip(self.sites, points), 1):
            if len(images) < 2:
                continue
            delta = images[:, None, :] - images[None, :, :]
            delta[..., : self.dim] -= np.round(delta[..., : self.dim])
            dist = np.linalg.norm(delta @ matrix, axis=-1)
            dist[np.diag_indices(len(images))] = np.inf
            if dist.min() < MIN_ORBIT_SEPARATION:
                raise ParseError(
                    f"site {i} ({site.element} {site.label}): its free coordinates "
                    f"{_fmt(site.params)} put the orbit on a special position (atoms coincide)",
                    site=i,
                )

    # ------------------------------------------------------------------ structure -> record
    @classmethod
    def from_structure(
        cls,
        structure: Structure,
        dim: int = 3,
        symprec: float = 0.1,
        angle_tolerance: float | None = None,
        max_atoms: int | None = None,
    ) -> "CrystalRecord":
        """Find the group and Wyckoff sites of `structure` (moyopy), anchors from PyXtal tables."""
        check_structure(structure, max_atoms)
        if dim == 2:
            structure = layer_cell(structure)
        elif dim != 3:
            raise EncodeError(f"dim must be 2 or 3, got {dim!r}")
        error: EncodeError | None = None
        # A looser tolerance can merge atoms (the input looks like a supercell of a smaller
        # cell) or change the group on the second pass: then try tighter ones.
        for tolerance in (symprec, symprec / 10, symprec / 100):
            try:
                table, lattice, frac, numbers, orbits, letters = _standardize(structure, dim, tolerance, angle_tolerance)
                break
            except EncodeError as exc:
                error = error or exc
        else:
            raise error  # type: ignore[misc]
        record = record_from_standard_cell(table, lattice, frac, numbers, orbits, letters, tolerance)
        if record is None:
            raise EncodeError(f"could not match the orbits to the Wyckoff positions of {table.kind} {table.number} ({table.symbol})")
        return record


# ---------------------------------------------------------------------- helpers


def record_from_standard_cell(table: GroupTable, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray,
                              orbits: np.ndarray, letters: list[str], tolerance: float) -> CrystalRecord | None:
    """The record of a conventional cell already in `table`'s standard setting, given each atom's orbit (and
    Wyckoff letter where known, else ""); None when the orbits do not match the group's Wyckoff positions.
    Shared by the group search (from_structure) and the projection onto a declared group (symmetrize)."""
    if table.dim == 2:
        lattice, frac = _center_layer(lattice, frac, table)
    sites = _assign_sites(table, lattice, frac, numbers, orbits, letters, max(2 * tolerance, 1e-3))
    if sites is None:
        return None
    a, b, c, alpha, beta, gamma = _lattice_parameters(lattice)
    full = {"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta, "gamma": gamma}
    if table.dim == 2:
        sites = [_z_to_angstrom(s, table, c) for s in sites]
    sites.sort(key=lambda s: (-table.wyckoff(s.wyckoff).index, Element(s.element).Z, s.params))
    return CrystalRecord(table.dim, table.number, {name: float(full[name]) for name in table.lattice_params}, sites)


def _standardize(structure: Structure, dim: int, symprec: float, angle_tolerance: float | None):
    """Conventional standard cell (moyopy) with the orbit of every atom."""
    cell = moyopy.Cell(structure.lattice.matrix.tolist(), structure.frac_coords.tolist(), list(structure.atomic_numbers))
    dataset = moyopy.MoyoDataset if dim == 3 else moyopy.MoyoLayerDataset
    options = {"setting": moyopy.Setting.standard()} if dim == 3 else {}
    try:
        ds = dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance, **options)
        std = ds.std_cell
        # Orbits of the standardized cell. Its positions are symmetrized, so a tight tolerance
        # finds the same group without merging atoms that the loose one would.
        std_ds = dataset(std, symprec=min(symprec, 1e-3))
        if std_ds.number != ds.number:
            std_ds = dataset(std, symprec=symprec, angle_tolerance=angle_tolerance)
    except BaseException as exc:  # moyopy raises plain exceptions, and Rust panics (a BaseException)
        _reraise_interrupts(exc)
        raise EncodeError(f"symmetry search failed at symprec={symprec}: {exc}") from None
    if std_ds.number != ds.number:
        raise EncodeError(f"group changed on standardization ({ds.number} -> {std_ds.number}) at symprec={symprec}")
    lattice = np.array(std.basis, dtype=float)
    frac = np.array(std.positions, dtype=float)
    numbers = np.array(std.numbers)
    density_in = len(structure) / _area_or_volume(structure.lattice.matrix, dim)
    density_std = len(numbers) / _area_or_volume(lattice, dim)
    if abs(density_std / density_in - 1) > 0.01:
        raise EncodeError(
            f"at symprec={symprec} the symmetrized cell has {density_std / density_in:.3f}x the atom density "
            "of the input (atoms merged)"
        )
    return get_group(dim, ds.number), lattice, frac, numbers, np.array(std_ds.orbits), list(std_ds.wyckoffs)


def _area_or_volume(matrix: np.ndarray, dim: int) -> float:
    matrix = np.asarray(matrix, dtype=float)
    if dim == 3:
        return abs(float(np.linalg.det(matrix)))
    return float(np.linalg.norm(np.cross(matrix[0], matrix[1])))


def _free_names(wp: WyckoffPosition) -> str:
    return ", ".join("xyz"[j] for j in wp.free) or "none"


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _lattice_parameters(matrix: np.ndarray) -> tuple[float, ...]:
    lat = Lattice(matrix)
    return (*lat.abc, *lat.angles)


def check_structure(structure: Structure, max_atoms: int | None = None) -> None:
    """EncodeError naming what makes `structure` no ordered crystal we can encode."""
    if not isinstance(structure, Structure):
        raise EncodeError(f"expected a pymatgen Structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise EncodeError("structure has no atoms")
    if max_atoms is not None and len(structure) > max_atoms:
        raise EncodeError(f"structure has {len(structure)} atoms, more than max_atoms={max_atoms}")
    if not structure.is_ordered:
        bad = next(i for i, site in enumerate(structure) if not site.is_ordered)
        raise EncodeError(f"partial occupancy / disorder at site {bad} ({structure[bad].species}): only ordered crystals are supported")
    for i, site in enumerate(structure):
        el = site.specie
        if not isinstance(el, Element):
            el = getattr(el, "element", None)
            if el is None:
                raise EncodeError(f"site {i}: {site.specie} is not a chemical element")
    coords = structure.frac_coords
    if not np.isfinite(coords).all() or not np.isfinite(structure.lattice.matrix).all():
        raise EncodeError("structure has non-finite coordinates or lattice")
    if structure.volume < 1e-3:
        raise EncodeError(f"cell volume {structure.volume:.3g} Å^3 is degenerate")
    if 1 < len(structure) <= 1000:
        dist = structure.distance_matrix + np.eye(len(structure)) * 1e9
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        if dist[i, j] < MIN_ATOM_DISTANCE:
            raise EncodeError(f"atoms {i} ({structure[i].specie}) and {j} ({structure[j].specie}) are {dist[i, j]:.4f} Å apart: "
                              "not a crystal (two atoms on one point?)")


def layer_cell(structure: Structure) -> Structure:
    """Same layer with c perpendicular to (a, b) and the slab contiguous in fractional z.

    Layer symmetry searches need the aperiodic axis to be c and the atoms not to be
    wrapped across the cell boundary along c. The layer is only rotated (a along x).
    """
    lat = structure.lattice
    a, b, c = lat.matrix
    normal = np.cross(a, b)
    normal /= np.linalg.norm(normal)
    height = abs(float(np.dot(c, normal)))
    if height < 1e-6:
        raise EncodeError("layer cell has c in the plane of a and b")
    # Unwrap along the cell's own c (a lattice vector of the input), so an atom brought back
    # across the boundary of a tilted cell lands where the layer continues.
    frac = structure.frac_coords.copy()
    frac[:, 2] = contiguous_z(frac[:, 2])
    frac = Lattice([a, b, normal * height]).get_fractional_coords(frac @ lat.matrix)
    # same fractional coordinates in a standard orientation: a along x, b in the xy-plane
    gamma = float(np.degrees(np.arccos(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))))
    new_lat = Lattice.from_parameters(np.linalg.norm(a), np.linalg.norm(b), height, 90.0, 90.0, gamma)
    frac[:, :2] -= np.floor(frac[:, :2])
    z = frac[:, 2]
    frac[:, 2] = z - (z.max() + z.min()) / 2 + 0.5
    return Structure(new_lat, structure.species, frac, site_properties=structure.site_properties)


def contiguous_z(z: np.ndarray) -> np.ndarray:
    """Fractional z unwrapped so that the largest empty gap (the vacuum) is at the cell boundary."""
    z = np.asarray(z, dtype=float) % 1.0
    order = np.sort(z)
    gaps = np.diff(np.concatenate([order, [order[0] + 1.0]]))
    start = order[(int(np.argmax(gaps)) + 1) % len(order)]
    return start + (z - start) % 1.0


def _center_layer(lattice: np.ndarray, frac: np.ndarray, table: GroupTable) -> tuple[np.ndarray, np.ndarray]:
    """Put the layer's mid-plane at z = 0 (already there when a symmetry flips z)."""
    c = np.array(lattice[2], dtype=float)
    frac = frac.copy()
    z = contiguous_z(frac[:, 2])
    middle = (z.max() + z.min()) / 2
    # with a z -> -z operation the mid-plane is a symmetry plane at z = 0 or 1/2: shift exactly
    z -= np.round(middle * 2) / 2 if table.flips_z else middle
    frac[:, 2] = z
    return lattice, frac


def _z_to_angstrom(site: Site, table: GroupTable, c: float) -> Site:
    wp = table.wyckoff(site.wyckoff)
    params = tuple(p * c if j == 2 else p for p, j in zip(site.params, wp.free))
    return replace(site, params=params)


_ORIGIN_SHIFTS = {
    3: [np.array(s) for s in itertools.product((0, 0.25, 0.5, 0.75), repeat=3)],
    2: [np.array((x, y, 0.0)) for x, y in itertools.product((0, 0.25, 0.5, 0.75), repeat=2)],
}


def _assign_sites(table, lattice, frac, numbers, orbits, letters, tol) -> list[Site] | None:
    """Wyckoff position + anchor for every orbit; tries origin shifts if the setting differs."""
    groups: dict[int, list[int]] = {}
    for i, rep in enumerate(orbits):
        groups.setdefault(int(rep), []).append(i)
    for shift in _ORIGIN_SHIFTS[table.dim]:
        shifted = frac + shift
        shifted[:, : table.dim] -= np.floor(shifted[:, : table.dim])
        sites = []
        for rep, members in groups.items():
            orbit = shifted[members]
            hint = letters[rep]
            candidates = sorted(
                (wp for wp in table.wyckoffs if wp.multiplicity == len(members)),
                key=lambda wp: (wp.letter != hint, -wp.index),
            )
            for wp in candidates:
                params = find_anchor(wp, orbit, lattice, table.dim, tol)
                if params is not None:
                    sites.append(Site(Element.from_Z(int(numbers[rep])).symbol, wp.letter, wp.multiplicity, tuple(float(p) for p in params)))
                    break
            else:
                break
        else:
            return sites
    return None


def detect_group(structure: Structure, dim: int = 3, symprec: float = 0.01) -> int | None:
    """Space group (dim=3) or layer group (dim=2) number of a structure; None if the search fails."""
    try:
        if dim == 2:
            structure = layer_cell(structure)
        cell = moyopy.Cell(structure.lattice.matrix.tolist(), structure.frac_coords.tolist(), list(structure.atomic_numbers))
        cls = moyopy.MoyoDataset if dim == 3 else moyopy.MoyoLayerDataset
        return int(cls(cell, symprec=symprec).number)
    except BaseException as exc:  # a failed search (moyopy error or Rust panic) has no group
        _reraise_interrupts(exc)
        return None


def _reraise_interrupts(exc: BaseException) -> None:
    """Ctrl-C and interpreter exit pass through; moyopy's PanicException (a BaseException) does not."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc
