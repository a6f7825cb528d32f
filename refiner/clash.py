"""Clashes: the per-species-pair closest approach, an overlap energy, and a symmetric repulsion step.

The LLM's invalid crystals are atoms on top of each other: an orbit whose free coordinates sit
near a special position, two orbits on one spot, a cell too small. The rule for "too close" is
pyxtal's tolerance matrix (prototype "atomic": half the sum of the two covalent radii, times a
factor), the screen random-structure generators use. Every MP-20 and 2DMatPedia crystal we
checked keeps every pair at >= 1.2x that distance (docs/benchmarks.md), so:

- `CLASH_FACTOR` (1.0) is the validity rule a refined row is checked against;
- `REPEL_FACTOR` (1.2) is where the repulsion stops pushing: real crystals are never touched.

The repulsion is the gradient of E = 1/2 sum over pairs (and periodic images) of
relu(d0 - d)^2. For coordinates it is pulled back to each orbit's anchor with the same least
squares as the network's score (refiner/crystal.py), so atoms are regenerated from the anchors
and the group and Wyckoff assignment stay exact. For the lattice it is a Gauss-Newton step on
the free k components, damped by every nearby pair (not only the clashing ones), so one bad
orbit moves its atoms, and only a cell that is too small as a whole grows.

The tensor work has fixed shapes (27 periodic images, all pairs) and no host synchronisation,
so it runs inside the chain's captured CUDA graph. The table is an argument: the chain itself
needs only torch.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch

from .crystal import CrystalBatch, expand, lattice_matrix, pull_back, wrap_sites
from .lattice import project_k

CLASH_FACTOR = 1.0  # a refined crystal is valid only if every pair is >= 1.0 x pyxtal's atomic tolerance
REPEL_FACTOR = 1.2  # the repulsion pushes pairs out to 1.2 x (real crystals: all pairs >= 1.2 x)
PROTOCOL_MIN_DISTANCE = 0.5  # Å, CDVAE's structural validity; the repulsion never aims below it (+ margin)
_ATOM_STEP = 0.25  # each atom moves 1/4 of its force: an isolated clashing pair opens by its deficit
_LATTICE_STEP = 0.5  # damping of the lattice's Gauss-Newton step
_MAX_LATTICE_STEP = 0.05  # at most ~5% change of the cell per step
_STIFFNESS_PER_ATOM = 4.0  # Å^2


@lru_cache(maxsize=4)
def pair_distance_table(factor: float = CLASH_FACTOR) -> np.ndarray:
    """(119, 119) closest allowed distance in Å per pair of atomic numbers: factor x pyxtal's atomic tolerance."""
    from pyxtal.tolerance import Tol_matrix

    matrix = Tol_matrix(prototype="atomic", factor=factor).matrix
    table = np.array([[np.nan if x is None else float(x) for x in row] for row in matrix], dtype=np.float64)
    fallback = np.nanmedian(table[1:, 1:])  # elements without a covalent radius (none in practice)
    table = np.nan_to_num(table, nan=fallback)
    size = 119
    out = np.full((size, size), fallback, dtype=np.float64)
    n = min(size, table.shape[0])
    out[:n, :n] = table[:n, :n]
    return out


def repulsion_table(factor: float = REPEL_FACTOR, device: str | torch.device = "cpu") -> torch.Tensor:
    """The repulsion's target distances as a tensor, never below the protocol's 0.5 Å (+0.1 margin)."""
    table = np.maximum(pair_distance_table(factor), PROTOCOL_MIN_DISTANCE + 0.1)
    return torch.as_tensor(table, dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------- torch (the chain)

_IMAGES = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))  # (27, 3)


def periodic_images(batch: CrystalBatch, table: torch.Tensor, k: torch.Tensor | None = None, margin: float = 1.5) -> torch.Tensor:
    """The image offsets (M, 3) a batch needs, decided once on the host before a chain: (0, 0, 0) and the
    neighbouring cells along every periodic axis whose layer spacing (cell height) is below
    2 x margin x the largest target distance in the batch; most cells need few or none beyond their own."""
    lattice = lattice_matrix(batch, batch.k if k is None else k).double()
    inverse = torch.linalg.inv(lattice)  # heights are 1 / |columns of L^-1|
    heights = 1.0 / torch.linalg.norm(inverse, dim=1)  # (B, 3)
    present = torch.unique(batch.atom_z[batch.atom_mask]).clamp(0, table.shape[0] - 1)
    reach = 2.0 * margin * float(table[present][:, present].max()) if present.numel() else 0.0
    needed = ((heights < reach) & (batch.periodic > 0)).any(0).cpu()  # (3,) axes needing neighbours in some crystal
    keep = [row for row in _IMAGES.tolist() if all(x == 0 or needed[a] for a, x in enumerate(row))]
    return torch.tensor(keep, dtype=torch.float32, device=batch.k.device)


def _pairs(batch: CrystalBatch, frac: torch.Tensor, lattice: torch.Tensor, table: torch.Tensor, images: torch.Tensor | None):
    """Every atom pair over the periodic images, without a (B, N, N, M, 3) tensor: fractional and Cartesian
    separations within the cell (B, N, N, 3), image shifts (B, M, 3) fractional and Cartesian, distances
    d (B, N, N, M), targets d0 (B, N, N, 1) and the pair mask (B, N, N, M)."""
    images = _IMAGES.to(frac.device) if images is None else images
    delta = frac[:, :, None, :] - frac[:, None, :, :]  # nearest image on periodic axes
    delta = delta - torch.round(delta) * batch.periodic[:, None, None, :]
    shift = images[None] * batch.periodic[:, None, :]  # a layer's z offsets vanish ...
    image_ok = (images[None, :, 2] == 0) | (batch.periodic[:, None, 2] > 0)  # ... so keep z = 0 images only there
    delta_c = delta @ lattice[:, None]  # (B, N, N, 3)
    shift_c = shift @ lattice  # (B, M, 3)
    d2 = (delta_c**2).sum(-1)[..., None] + 2 * torch.einsum("bijk,bmk->bijm", delta_c, shift_c) + (shift_c**2).sum(-1)[:, None, None, :]
    d = torch.sqrt(d2.clamp(min=0) + 1e-12)
    n = frac.shape[1]
    atoms = batch.atom_mask[:, :, None] & batch.atom_mask[:, None, :]
    own_cell = (images == 0).all(-1)  # (M,)
    not_self = ~torch.eye(n, dtype=torch.bool, device=frac.device)[:, :, None] | ~own_cell
    mask = atoms[..., None] & image_ok[:, None, None, :] & not_self[None]
    z = batch.atom_z.clamp(0, table.shape[0] - 1)
    d0 = table[z[:, :, None], z[:, None, :]][..., None]
    return (delta, delta_c, shift, shift_c), d, d0, mask


def overlap_energy(batch: CrystalBatch, site_v: torch.Tensor, k: torch.Tensor, table: torch.Tensor, images: torch.Tensor | None = None):
    """E = 1/2 sum relu(d0 - d)^2 and its pieces: (energy (B,), worst relative deficit max(1 - d/d0) (B,),
    per-atom Cartesian forces -dE/dx (B, N, 3), dE/dL (B, 3, 3), lattice stiffness (B,))."""
    lattice = lattice_matrix(batch, k)
    (delta, delta_c, shift, shift_c), d, d0, mask = _pairs(batch, expand(batch, site_v), lattice, table, images)
    deficit = torch.relu(d0 - d) * mask
    energy = 0.5 * (deficit**2).sum((1, 2, 3))
    worst = (deficit / d0).amax((1, 2, 3))
    # dE/dr = -w r per ordered pair and image, with r = delta_c + shift_c and w = deficit / d; the sums over
    # images are taken before multiplying by r, so nothing of size (B, N, N, M, 3) is ever built
    w = deficit / d
    w_pairs = w.sum(-1)  # (B, N, N)
    # r_ij = x_i - x_j + n L appears once as (i, j, n) and once as (j, i, -n): the force on i is twice its own sum
    forces = 2.0 * (torch.einsum("bij,bijk->bik", w_pairs, delta_c) + torch.einsum("bijm,bmk->bik", w, shift_c))
    # dE/dL_kl = sum f_k (dE/dr)_l with f = delta + shift (fractional)
    d_lattice = -(
        torch.einsum("bij,bijk,bijl->bkl", w_pairs, delta, delta_c)
        + torch.einsum("bmk,bml->bkl", torch.einsum("bijm,bijk->bmk", w, delta), shift_c)
        + torch.einsum("bmk,bml->bkl", shift, torch.einsum("bijm,bijl->bml", w, delta_c))
        + torch.einsum("bm,bmk,bml->bkl", w.sum((1, 2)), shift, shift_c)
    )
    # How hard the cell resists a strain: every nearby pair at its target distance, plus a floor per atom,
    # so that one short pair (whose d barely changes with the cell) never blows the cell up.
    near = mask & (d < 1.5 * d0)
    stiffness = (d0 * d0 * near).sum((1, 2, 3)) + _STIFFNESS_PER_ATOM * batch.atom_mask.sum(1)
    return energy, worst, forces, d_lattice, stiffness


def worst_deficit(batch: CrystalBatch, table: torch.Tensor, site_v: torch.Tensor | None = None, k: torch.Tensor | None = None) -> torch.Tensor:
    """How far each crystal is from plausible: max over pairs of 1 - d/d0 (0 when no pair is too close)."""
    with torch.no_grad():
        site_v = batch.site_v if site_v is None else site_v
        k = batch.k if k is None else k
        return overlap_energy(batch, site_v, k, table, periodic_images(batch, table, k))[1]


def repel(batch: CrystalBatch, site_v: torch.Tensor, k: torch.Tensor, table: torch.Tensor, lattice_on: float = 1.0,
          strength: float = 1.0, images: torch.Tensor | None = None):
    """One symmetric repulsion step on (free parameters, k): the group and Wyckoff assignment stay exact.
    `images`: periodic_images() of the batch (default: all 27 neighbouring cells)."""
    _, _, forces, d_lattice, stiffness = overlap_energy(batch, site_v, k, table, images)
    lattice = lattice_matrix(batch, k)
    # coordinates: the forces pulled back to the orbit anchors exactly like the network's score
    dv = pull_back(batch, lattice, forces) * (_ATOM_STEP * strength)
    v_new = wrap_sites(batch, site_v + dv) * batch.site_free
    # lattice: dE/dk through the 3x3 cell only (small autograd graph), Gauss-Newton scaled by the nearby pairs
    with torch.enable_grad():
        kk = k.detach().requires_grad_(True)
        (grad_k,) = torch.autograd.grad((lattice_matrix(batch, kk) * d_lattice).sum(), kk)
    step_k = -grad_k * batch.k_free / stiffness[:, None] * (_LATTICE_STEP * strength * lattice_on)
    step_k = step_k.clamp(-_MAX_LATTICE_STEP, _MAX_LATTICE_STEP)
    return v_new, project_k(k + step_k, batch.k_free, batch.k_fixed)


def relieve(batch: CrystalBatch, site_v: torch.Tensor, k: torch.Tensor, table: torch.Tensor, steps: int, lattice_on: float = 1.0,
            images: torch.Tensor | None = None):
    """Up to `steps` repulsion steps (the chain's final polish, outside any CUDA graph), stopping as soon as no
    pair of any crystal in the batch breaks its target distance."""
    images = periodic_images(batch, table, k) if images is None else images
    for _ in range(steps):
        if not bool((overlap_energy(batch, site_v, k, table, images)[0] > 0).any()):
            break
        site_v, k = repel(batch, site_v, k, table, lattice_on, images=images)
    return site_v, k


# ---------------------------------------------------------------------------- structures (the validity check)


def closest_pair(structure, factor: float = CLASH_FACTOR) -> tuple[float, str]:
    """(min over pairs of d / (factor x tolerance), a description of that pair) for a pymatgen Structure."""
    table = pair_distance_table(factor)
    cutoff = float(table.max()) + 0.5
    i, j, _, d = structure.get_neighbor_list(cutoff)
    if len(d) == 0:
        return float("inf"), ""
    z = np.asarray(structure.atomic_numbers)
    ratio = d / table[z[i], z[j]]
    w = int(np.argmin(ratio))
    a, b = structure[int(i[w])].specie, structure[int(j[w])].specie
    return float(ratio[w]), f"{a}-{b} {d[w]:.2f} Å < {table[z[i[w]], z[j[w]]]:.2f} Å"
