"""Crystals as the refiner sees them: free Wyckoff parameters, orbits, and exact projections.

The state of a crystal is its lattice k (refiner/lattice.py) and, per Wyckoff site, the
anchor's free parameters v (x, y, z with the non-free ones held at 0). Atoms are never
stored: they are regenerated from the anchors by the group's operations, so whatever the
network predicts, the crystal keeps its group and Wyckoff assignment exactly.

Per atom k of a site, x_k = R_k (A0 v + t0) + t_k, with A0 the site's standard-form matrix
restricted to its free columns. A per-atom Cartesian vector field e_k (the network's output)
is pulled back to the site by least squares, dv = (sum_k M_k^T M_k)^+ sum_k M_k^T e_k with
M_k = L^T R_k A0: the orbit average of pseudo-inverse pull-backs. Pushing dv forward again
gives the symmetric part of e. Layers: x, y periodic; z is Cartesian Å (c = 1 Å), never wrapped.

Only record <-> arrays conversion needs the crystal stack (imported there): training and
refinement on arrays need torch and numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from .lattice import family_mask, gram_from_k, gram_from_parameters, k_from_gram, parameters_from_gram

N_GROUP_EMBEDDINGS = 1 + 230 + 80  # 0 unused, 1..230 space groups, 231..310 layer groups


def group_index(dim: int, group: int) -> int:
    return group if dim == 3 else 230 + group


@dataclass
class CrystalArrays:
    """One crystal, numpy only (what training data files store; no group tables needed to read them)."""

    dim: int
    group: int
    k: np.ndarray  # (6,)
    k_free: np.ndarray  # (6,)
    k_fixed: np.ndarray  # (6,)
    site_a0: np.ndarray  # (S, 3, 3) standard form, non-free columns zero
    site_t0: np.ndarray  # (S, 3)
    site_free: np.ndarray  # (S, 3) 1 where the coordinate is free
    site_v: np.ndarray  # (S, 3) free parameters (2D z in Å)
    site_symmetry: list[str]  # (S,) site-symmetry symbols, embedded through a vocabulary
    atom_site: np.ndarray  # (N,) site index of every atom
    atom_rot: np.ndarray  # (N, 3, 3)
    atom_trans: np.ndarray  # (N, 3)
    atom_z: np.ndarray  # (N,) atomic numbers

    @property
    def n_atoms(self) -> int:
        return len(self.atom_z)


def record_to_arrays(record) -> CrystalArrays:
    """Arrays of a CrystalRecord in its conventional cell (layers: c = 1 Å, z in Å)."""
    from pymatgen.core import Element

    table = record.table
    params = record.full_lattice_parameters(c=1.0) if record.dim == 2 else record.full_lattice_parameters()
    k = k_from_gram(gram_from_parameters(*params), record.dim)
    free_k, fixed_k = family_mask(record.dim, table.family)
    a0, t0, free, v, sym = [], [], [], [], []
    atom_site, rot, trans, zs = [], [], [], []
    for s, site in enumerate(record.sites):
        wp = table.wyckoff(site.wyckoff)
        mask = np.zeros(3)
        mask[list(wp.free)] = 1.0
        a = wp.ops[0, :, :3] * mask[None, :]
        vv = np.zeros(3)
        vv[list(wp.free)] = site.params
        a0.append(a)
        t0.append(wp.ops[0, :, 3])
        free.append(mask)
        v.append(vv)
        sym.append(wp.site_symmetry or wp.label)
        atom_site += [s] * wp.multiplicity
        rot.append(wp.ops[:, :, :3])
        trans.append(wp.ops[:, :, 3])
        zs += [Element(site.element).Z] * wp.multiplicity
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    return CrystalArrays(
        dim=record.dim,
        group=record.group,
        k=k,
        k_free=free_k,
        k_fixed=fixed_k,
        site_a0=f32(a0),
        site_t0=f32(t0),
        site_free=f32(free),
        site_v=f32(v),
        site_symmetry=sym,
        atom_site=np.asarray(atom_site, dtype=np.int64),
        atom_rot=f32(np.concatenate(rot)),
        atom_trans=f32(np.concatenate(trans)),
        atom_z=np.asarray(zs, dtype=np.int64),
    )


def arrays_to_record(template, k: np.ndarray, site_v: np.ndarray):
    """The template CrystalRecord (elements, Wyckoff letters) with a new lattice and free parameters."""
    from xtallm.tokenization.record import CrystalRecord

    table = template.table
    gram = gram_from_k(torch.as_tensor(k, dtype=torch.float64)[None], torch.tensor([template.dim]))[0].numpy()
    a, b, c, alpha, beta, gamma = parameters_from_gram(gram)
    full = {"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta, "gamma": gamma}
    lattice = {name: float(full[name]) for name in table.lattice_params}
    sites = []
    for site, v in zip(template.sites, site_v):
        wp = table.wyckoff(site.wyckoff)
        params = [float(v[j]) for j in wp.free]
        params = [p % 1.0 if j < template.dim else p for p, j in zip(params, wp.free)]
        sites.append(type(site)(site.element, site.wyckoff, site.multiplicity, tuple(params)))
    return CrystalRecord(template.dim, template.group, lattice, sites)


@dataclass
class CrystalBatch:
    """A padded batch: B crystals, up to S sites and N atoms each."""

    dim: torch.Tensor  # (B,)
    group: torch.Tensor  # (B,) embedding index (group_index)
    k: torch.Tensor  # (B, 6)
    k_free: torch.Tensor
    k_fixed: torch.Tensor
    periodic: torch.Tensor  # (B, 3) 1 on periodic axes
    site_a0: torch.Tensor  # (B, S, 3, 3)
    site_t0: torch.Tensor  # (B, S, 3)
    site_free: torch.Tensor  # (B, S, 3)
    site_v: torch.Tensor  # (B, S, 3)
    site_mask: torch.Tensor  # (B, S)
    site_symmetry: torch.Tensor  # (B, S) vocabulary index
    atom_site: torch.Tensor  # (B, N)
    atom_rot: torch.Tensor  # (B, N, 3, 3)
    atom_trans: torch.Tensor  # (B, N, 3)
    atom_z: torch.Tensor  # (B, N)
    atom_mask: torch.Tensor  # (B, N)

    def to(self, device) -> "CrystalBatch":
        return CrystalBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def replace(self, **changes) -> "CrystalBatch":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return CrystalBatch(**values)

    @property
    def size(self) -> int:
        return int(self.dim.shape[0])


def collate(crystals: list[CrystalArrays], vocab: dict[str, int]) -> CrystalBatch:
    """Pad to the largest crystal; unknown site symmetries map to index 0."""
    b = len(crystals)
    s = max(len(c.site_v) for c in crystals)
    n = max(c.n_atoms for c in crystals)
    out = {
        "site_a0": np.zeros((b, s, 3, 3), np.float32),
        "site_t0": np.zeros((b, s, 3), np.float32),
        "site_free": np.zeros((b, s, 3), np.float32),
        "site_v": np.zeros((b, s, 3), np.float32),
        "site_mask": np.zeros((b, s), bool),
        "site_symmetry": np.zeros((b, s), np.int64),
        "atom_site": np.zeros((b, n), np.int64),
        "atom_rot": np.tile(np.eye(3, dtype=np.float32), (b, n, 1, 1)),
        "atom_trans": np.zeros((b, n, 3), np.float32),
        "atom_z": np.zeros((b, n), np.int64),
        "atom_mask": np.zeros((b, n), bool),
    }
    for i, c in enumerate(crystals):
        ns, na = len(c.site_v), c.n_atoms
        out["site_a0"][i, :ns] = c.site_a0
        out["site_t0"][i, :ns] = c.site_t0
        out["site_free"][i, :ns] = c.site_free
        out["site_v"][i, :ns] = c.site_v
        out["site_mask"][i, :ns] = True
        out["site_symmetry"][i, :ns] = [vocab.get(x, 0) for x in c.site_symmetry]
        out["atom_site"][i, :na] = c.atom_site
        out["atom_rot"][i, :na] = c.atom_rot
        out["atom_trans"][i, :na] = c.atom_trans
        out["atom_z"][i, :na] = c.atom_z
        out["atom_mask"][i, :na] = True
    dims = torch.tensor([c.dim for c in crystals])
    periodic = torch.ones(b, 3)
    periodic[dims == 2, 2] = 0.0
    return CrystalBatch(
        dim=dims,
        group=torch.tensor([group_index(c.dim, c.group) for c in crystals]),
        k=torch.from_numpy(np.stack([c.k for c in crystals])),
        k_free=torch.from_numpy(np.stack([c.k_free for c in crystals])),
        k_fixed=torch.from_numpy(np.stack([c.k_fixed for c in crystals])),
        periodic=periodic,
        **{key: torch.from_numpy(value) for key, value in out.items()},
    )


# ---------------------------------------------------------------------------- geometry


def lattice_matrix(batch: CrystalBatch, k: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, 3) rows = lattice vectors, in float32 (the metric is built in float64 for accuracy)."""
    from .lattice import lattice_from_gram

    k = batch.k if k is None else k
    return lattice_from_gram(gram_from_k(k.double(), batch.dim)).float()


def anchors(batch: CrystalBatch, site_v: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bsij,bsj->bsi", batch.site_a0, site_v) + batch.site_t0


def expand(batch: CrystalBatch, site_v: torch.Tensor) -> torch.Tensor:
    """Fractional atom positions (B, N, 3), wrapped on periodic axes."""
    p = anchors(batch, site_v)
    p_atom = torch.gather(p, 1, batch.atom_site[..., None].expand(-1, -1, 3))
    x = torch.einsum("bnij,bnj->bni", batch.atom_rot, p_atom) + batch.atom_trans
    return x - torch.floor(x) * batch.periodic[:, None, :]


def wrap_sites(batch: CrystalBatch, site_v: torch.Tensor) -> torch.Tensor:
    """Free parameters on periodic axes back into [0, 1): the same crystal (standard forms have integer columns)."""
    return site_v - torch.floor(site_v) * batch.periodic[:, None, :]


def _site_jacobians(batch: CrystalBatch, lattice: torch.Tensor) -> torch.Tensor:
    """M_k = L^T R_k A0 for every atom: (B, N, 3, 3), Cartesian displacement per unit of v."""
    a0 = torch.gather(batch.site_a0, 1, batch.atom_site[..., None, None].expand(-1, -1, 3, 3))
    return torch.einsum("bji,bnjk,bnkl->bnil", lattice, batch.atom_rot, a0)


def _site_sum(batch: CrystalBatch, per_atom: torch.Tensor) -> torch.Tensor:
    """Sum atoms' values into their sites: (B, N, ...) -> (B, S, ...)."""
    shape = (batch.site_v.shape[0], batch.site_v.shape[1], *per_atom.shape[2:])
    index = batch.atom_site.reshape(*batch.atom_site.shape, *([1] * (per_atom.dim() - 2))).expand_as(per_atom)
    masked = per_atom * batch.atom_mask.reshape(*batch.atom_mask.shape, *([1] * (per_atom.dim() - 2)))
    return torch.zeros(shape, dtype=per_atom.dtype, device=per_atom.device).scatter_add_(1, index, masked)


def pull_back(batch: CrystalBatch, lattice: torch.Tensor, cart: torch.Tensor) -> torch.Tensor:
    """Per-atom Cartesian vectors (B, N, 3) -> least-squares change of free parameters (B, S, 3)."""
    m = _site_jacobians(batch, lattice)
    rhs = _site_sum(batch, torch.einsum("bnij,bni->bnj", m, cart))
    normal = _site_sum(batch, torch.einsum("bnki,bnkj->bnij", m, m))
    fixed = torch.diag_embed(1.0 - batch.site_free)  # identity on non-free coordinates (and padding) keeps it solvable
    return solve3(normal + fixed, rhs) * batch.site_free


def push_forward(batch: CrystalBatch, lattice: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """Change of free parameters (B, S, 3) -> per-atom Cartesian displacements (B, N, 3)."""
    m = _site_jacobians(batch, lattice)
    dv_atom = torch.gather(dv, 1, batch.atom_site[..., None].expand(-1, -1, 3))
    return torch.einsum("bnij,bnj->bni", m, dv_atom) * batch.atom_mask[..., None]


def site_noise(
    batch: CrystalBatch, lattice: torch.Tensor, generator: torch.Generator | None = None, xi: torch.Tensor | None = None
) -> torch.Tensor:
    """Free-parameter noise whose Cartesian image is isotropic (unit variance) within each site's free subspace.

    Drawing in Cartesian space and projecting keeps a hexagonal cell's noise round, where
    isotropic noise in fractional coordinates would be stretched along the 120 degree axes.
    `xi` (B, S, 3), standard normal, may be drawn beforehand (the sampler draws a whole chain's at once).
    """
    if xi is None:
        xi = torch.randn(batch.site_v.shape, generator=generator, device=batch.site_v.device)
    m0 = torch.einsum("bji,bsjk->bsik", lattice, batch.site_a0)  # anchor's Jacobian L^T A0
    rhs = torch.einsum("bsij,bsi->bsj", m0, xi)
    normal = torch.einsum("bski,bskj->bsij", m0, m0) + torch.diag_embed(1.0 - batch.site_free)
    return solve3(normal, rhs) * batch.site_free * batch.site_mask[..., None]


def solve3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x with a x = b for stacks of 3x3 systems, in closed form (Cramer): one fused pass on a GPU
    instead of a batched LU per step; the systems here are symmetric positive definite."""
    r0, r1, r2 = a[..., 0, :], a[..., 1, :], a[..., 2, :]
    c0, c1, c2 = torch.cross(r1, r2, dim=-1), torch.cross(r2, r0, dim=-1), torch.cross(r0, r1, dim=-1)
    det = (r0 * c0).sum(-1, keepdim=True)
    return (b[..., 0:1] * c0 + b[..., 1:2] * c1 + b[..., 2:3] * c2) / det


def minimum_image(batch: CrystalBatch, delta_frac: torch.Tensor) -> torch.Tensor:
    """Fractional differences reduced to the nearest image along periodic axes only."""
    return delta_frac - torch.round(delta_frac) * batch.periodic[:, None, :]
