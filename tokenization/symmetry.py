"""Group tables: Wyckoff positions and lattice families for 230 space and 80 layer groups.

PyXtal ships the International Tables' Wyckoff positions for both kinds of group; this
module turns them into small numpy arrays once per group (cached), because orbit expansion
and anchor search run for every structure we encode or decode.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Free lattice parameters per crystal family, in the order they appear in text.
LATTICE_FAMILIES_3D = {
    "triclinic": ("a", "b", "c", "alpha", "beta", "gamma"),
    "monoclinic": ("a", "b", "c", "beta"),  # unique axis b (ITA standard setting)
    "orthorhombic": ("a", "b", "c"),
    "tetragonal": ("a", "c"),
    "trigonal": ("a", "c"),  # hexagonal axes, also for rhombohedral groups
    "hexagonal": ("a", "c"),
    "cubic": ("a",),
}
# Layer groups: only the in-plane lattice is free; c is perpendicular and set by the vacuum.
LATTICE_FAMILIES_2D = {
    "oblique": ("a", "b", "gamma"),
    "rectangular": ("a", "b"),
    "square": ("a",),
    "hexagonal": ("a",),
}
LENGTHS = ("a", "b", "c")
ANGLES = ("alpha", "beta", "gamma")
N_GROUPS = {3: 230, 2: 80}


def layer_family(number: int) -> str:
    """2D Bravais family of a layer group (ITE 'layer groups' numbering)."""
    if number <= 7:
        return "oblique"
    if number <= 48:
        return "rectangular"
    if number <= 64:
        return "square"
    return "hexagonal"


@dataclass(frozen=True)
class WyckoffPosition:
    """One Wyckoff position of a group, as arrays.

    `ops` maps the anchor point to every member of the orbit (conventional cell, centring
    included). `ops[0]` is the position's standard form, e.g. (x, 2x, z); `free` lists which
    of x, y, z are free parameters in it.
    """

    letter: str
    multiplicity: int
    index: int  # 0 = general position, larger = more special
    ops: np.ndarray  # (multiplicity, 3, 4)
    free: tuple[int, ...]
    site_symmetry: str

    @property
    def label(self) -> str:
        return f"{self.multiplicity}{self.letter}"

    def anchor(self, params: np.ndarray) -> np.ndarray:
        """Point in standard form from the free parameters (length == len(free))."""
        v = np.zeros(3)
        v[list(self.free)] = params
        return self.ops[0, :, :3] @ v + self.ops[0, :, 3]

    def orbit(self, point: np.ndarray) -> np.ndarray:
        """All `multiplicity` images of `point` (fractional, not wrapped)."""
        return np.einsum("kij,j->ki", self.ops[:, :, :3], point) + self.ops[:, :, 3]


@dataclass(frozen=True)
class GroupTable:
    dim: int
    number: int
    symbol: str
    family: str
    lattice_params: tuple[str, ...]
    wyckoffs: tuple[WyckoffPosition, ...]  # table order: general first

    @property
    def kind(self) -> str:
        return "sg" if self.dim == 3 else "lg"

    def wyckoff(self, letter: str) -> WyckoffPosition:
        for wp in self.wyckoffs:
            if wp.letter == letter:
                return wp
        raise KeyError(letter)

    @property
    def flips_z(self) -> bool:
        """True when some operation maps z to -z (then the layer's mid-plane is fixed at z=0)."""
        return bool(np.any(self.wyckoffs[0].ops[:, 2, 2] < 0))


@dataclass(frozen=True, order=True)
class GroupId:
    """A space group (dim 3) or a layer group (dim 2): a bare number means either, so carry both."""

    dim: int
    number: int

    def __post_init__(self) -> None:
        check_group(self.dim, self.number)

    @property
    def kind(self) -> str:
        return "sg" if self.dim == 3 else "lg"

    @property
    def table(self) -> "GroupTable":
        return get_group(self.dim, self.number)

    def __str__(self) -> str:
        return f"{self.kind} {self.number}"

    @classmethod
    def parse(cls, text: str) -> "GroupId":
        """From a group line: `sg 225` or `lg 78`."""
        kind, _, number = text.strip().partition(" ")
        if kind not in ("sg", "lg") or not number.strip().isdigit():
            raise ValueError(f"{text!r} is not a group line like 'sg 225' or 'lg 78'")
        return cls(3 if kind == "sg" else 2, int(number))


def check_group(dim: int, number: int) -> None:
    if dim not in N_GROUPS:
        raise ValueError(f"dim must be 2 (layer) or 3 (bulk), got {dim!r}")
    if not (1 <= int(number) <= N_GROUPS[dim]):
        kind = "space" if dim == 3 else "layer"
        raise ValueError(f"{kind} group number must be in 1..{N_GROUPS[dim]}, got {number}")


@lru_cache(maxsize=None)
def get_group(dim: int, number: int) -> GroupTable:
    """The cached table of a space group (dim=3) or layer group (dim=2)."""
    from pyxtal.symmetry import Group

    check_group(dim, number)
    group = Group(int(number), dim=dim)
    wyckoffs = []
    for index, wp in enumerate(group.Wyckoff_positions):
        ops = np.array([op.affine_matrix[:3] for op in wp.ops], dtype=float)
        free = tuple(int(j) for j in range(3) if np.any(np.abs(ops[0, :, j]) > 1e-8))
        site_symmetry = str(getattr(wp, "site_symm", "") or "")
        wyckoffs.append(
            WyckoffPosition(
                letter=wp.letter,
                multiplicity=int(wp.multiplicity),
                index=index,
                ops=ops,
                free=free,
                site_symmetry=site_symmetry,
            )
        )
    if dim == 3:
        family = group.lattice_type
        params = LATTICE_FAMILIES_3D[family]
    else:
        family = layer_family(number)
        params = LATTICE_FAMILIES_2D[family]
    return GroupTable(dim, int(number), group.symbol, family, params, tuple(wyckoffs))


@lru_cache(maxsize=2)
def _integer_shifts(dim: int) -> np.ndarray:
    """Lattice translations tried when solving anchor = orbit member (mod 1)."""
    rng = range(-2, 3)
    shifts = np.array(list(itertools.product(rng, rng, rng if dim == 3 else [0])), dtype=float)
    return shifts


def wrap_periodic(frac: np.ndarray, dim: int) -> np.ndarray:
    """Wrap fractional coordinates into [0, 1) along the periodic axes only."""
    out = np.array(frac, dtype=float, copy=True)
    out[..., :dim] -= np.floor(out[..., :dim])
    return out


def periodic_delta(delta: np.ndarray, dim: int) -> np.ndarray:
    """Minimum-image fractional difference along the periodic axes."""
    out = np.array(delta, dtype=float, copy=True)
    out[..., :dim] -= np.round(out[..., :dim])
    return out


def find_anchor(
    wp: WyckoffPosition,
    orbit: np.ndarray,
    lattice: np.ndarray,
    dim: int,
    tol: float,
) -> np.ndarray | None:
    """Free parameters of `wp` that regenerate `orbit` (fractional, conventional cell).

    Every orbit member is tried as the point in standard form; among the members that fit,
    the lexicographically smallest parameter vector (after wrapping) is returned, so the same
    crystal always gets the same parameters. Returns None if `wp` cannot produce `orbit`.
    """
    if len(orbit) != wp.multiplicity:
        return None
    r0, t0 = wp.ops[0, :, :3], wp.ops[0, :, 3]
    free = list(wp.free)
    periodic_free = [i for i, j in enumerate(free) if j < dim]
    if free:
        rf = r0[:, free]
        pinv = np.linalg.pinv(rf)
        target = orbit[:, None, :] + _integer_shifts(dim)[None, :, :] - t0  # (n, S, 3)
        params = target @ pinv.T  # (n, S, k)
        residual = params @ rf.T - target
    else:
        params = np.zeros((len(orbit), 1, 0))
        residual = (t0 - orbit)[:, None, :]
    residual = periodic_delta(residual, dim) @ lattice
    ok = np.linalg.norm(residual, axis=-1) < tol
    if not ok.any():
        return None
    candidates = params[ok]
    candidates[:, periodic_free] -= np.floor(candidates[:, periodic_free])
    candidates[:, periodic_free] = np.where(
        candidates[:, periodic_free] > 1 - 1e-8, 0.0, candidates[:, periodic_free]
    )
    order = np.lexsort(np.round(candidates, 6).T[::-1]) if candidates.shape[1] else [0]
    for c in candidates[order]:
        images = wrap_periodic(wp.orbit(wp.anchor(c)), dim)
        if orbits_match(images, orbit, lattice, dim, tol):
            return c
    return None


def orbits_match(a: np.ndarray, b: np.ndarray, lattice: np.ndarray, dim: int, tol: float) -> bool:
    """Do two point sets coincide (periodic along the first `dim` axes, Cartesian tol)?"""
    if len(a) != len(b):
        return False
    delta = periodic_delta(a[:, None, :] - b[None, :, :], dim) @ lattice
    dist = np.linalg.norm(delta, axis=-1)
    return bool((dist.min(axis=1) < tol).all() and (dist.min(axis=0) < tol).all())
