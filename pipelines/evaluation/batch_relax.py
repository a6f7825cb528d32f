"""Many SevenNet relaxations at once on one device: batched FIRE with a unit-cell filter.

One relaxation keeps a GPU idle (a 20-atom graph is a few hundred edges; ASE's step loop and
neighbour list run on the CPU): one H200 process did ~13 FIRE steps/s. Here every active crystal
takes one FIRE step per model call, all in one batched graph, so a call costs about as much for
256 crystals as for one. A crystal that converges (or hits the step cap) leaves the batch and the
next one joins, so the batch stays full.

The algorithm is ASE's, per crystal: FIRE (dt 0.1, maxstep 0.2, dtmax 1.0, Nmin 5, finc 1.1,
fdec 0.5, astart 0.1, fa 0.99) on atoms + cell, the cell through ASE's UnitCellFilter
parametrisation (deformation gradient scaled by the number of atoms; virial / cell factor as its
force), converged when every atom's and cell row's force is below fmax. The protocol's
FrechetCellFilter differs in the cell parametrisation (log of the deformation), not in the minimum
it looks for; `tests/test_batch_relax.py` checks the two agree. Monolayers keep c fixed (only a, b
and gamma relax), as `stability.relax` does.

Neighbours: candidate pairs within cutoff + skin (1 Å) come from ASE's neighbour list once per
crystal and again only when an atom moved, or the cell strained, by more than half the skin;
each step keeps the candidate pairs within the cutoff, on the device.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from .stability import DEFAULT_FMAX, MAX_STEPS, Relaxation, checked_relaxation

SKIN = 1.0  # Å
FIRE = dict(dt=0.1, maxstep=0.2, dtmax=1.0, nmin=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99)


def load_sevennet(device: str):
    """SevenNet-0 as a batch model (weights inside the wheel), its cutoff and type map."""
    from sevenn.util import load_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cp = load_checkpoint("7net-0")
        model = cp.build_model()
    model.set_is_batch_data(True)
    model.eval_type_map = torch.tensor(True)
    model.to(device).eval()
    return model, float(cp.config["cutoff"]), cp.config["chemical_species_by_atomic_number"] if "chemical_species_by_atomic_number" in cp.config else None


@dataclass
class Crystal:
    """One relaxation in flight (all tensors on the device)."""

    key: Any
    numbers: torch.Tensor  # (N,) long
    ref_pos: torch.Tensor  # (N, 3) positions in the reference cell's frame
    ref_cell: torch.Tensor  # (3, 3) rows = lattice vectors at the start
    deform: torch.Tensor  # (3, 3) deformation gradient F: cell = ref_cell @ F.T
    dim: int
    volume0: float
    v: torch.Tensor = None  # (N + 3, 3) FIRE velocities
    dt: float = FIRE["dt"]
    a: float = FIRE["astart"]
    n_pos: int = 0  # FIRE steps since the power was last negative
    steps: int = 0
    edges: torch.Tensor | None = None  # (2, E) candidate pairs
    shifts: torch.Tensor | None = None  # (E, 3) integer cell shifts of the candidates
    built_pos: torch.Tensor | None = None
    built_deform: torch.Tensor | None = None
    energy: float | None = None
    fmax_now: float = math.inf

    @property
    def n(self) -> int:
        return len(self.numbers)

    @property
    def cell(self) -> torch.Tensor:
        return self.ref_cell @ self.deform.T

    @property
    def pos(self) -> torch.Tensor:
        return self.ref_pos @ self.deform.T


def _crystal(key, structure: Structure, dim: int, device) -> Crystal:
    cell = torch.tensor(structure.lattice.matrix, dtype=torch.float32, device=device)
    pos = torch.tensor(structure.cart_coords, dtype=torch.float32, device=device)
    numbers = torch.tensor(structure.atomic_numbers, dtype=torch.long, device=device)
    c = Crystal(key, numbers, pos, cell, torch.eye(3, device=device), dim, float(structure.volume))
    c.v = torch.zeros((c.n + 3, 3), device=device)
    return c


def _build_neighbours(c: Crystal, cutoff: float) -> None:
    from ase.neighborlist import primitive_neighbor_list

    cell = c.cell.detach().cpu().double().numpy()
    pos = c.pos.detach().cpu().double().numpy()
    i, j, shifts = primitive_neighbor_list("ijS", [True, True, c.dim == 3], cell, pos, cutoff + SKIN, self_interaction=False)
    device = c.numbers.device
    c.edges = torch.tensor(np.stack([i, j]), dtype=torch.long, device=device)
    c.shifts = torch.tensor(shifts, dtype=torch.float32, device=device)
    c.built_pos, c.built_deform = c.pos.clone(), c.deform.clone()


def _needs_rebuild(c: Crystal, cutoff: float) -> bool:
    if c.edges is None:
        return True
    moved = float((c.pos - c.built_pos).norm(dim=1).max()) if c.n else 0.0
    strain = float(torch.linalg.matrix_norm(c.deform @ torch.linalg.inv(c.built_deform) - torch.eye(3, device=c.deform.device), ord=2))
    return moved + strain * (cutoff + SKIN) > SKIN / 2


def _batch(crystals: list[Crystal], cutoff: float, modal: str | None = None):
    """One sevenn batch of the crystals' current geometry, only pairs within the cutoff."""
    import sevenn._keys as K
    from sevenn.atom_graph_data import AtomGraphData
    from torch_geometric.loader.dataloader import Collater

    data = []
    for c in crystals:
        if _needs_rebuild(c, cutoff):
            _build_neighbours(c, cutoff)
        pos, cell = c.pos, c.cell
        vec = pos[c.edges[1]] - pos[c.edges[0]] + c.shifts @ cell
        keep = vec.norm(dim=1) < cutoff
        d = {K.NODE_FEATURE: c.numbers, K.ATOMIC_NUMBERS: c.numbers, K.POS: pos.detach(), K.EDGE_IDX: c.edges[:, keep],
             K.EDGE_VEC: vec[keep].detach(), K.CELL: cell.detach(), K.CELL_SHIFT: c.shifts[keep], K.CELL_VOLUME: torch.det(cell).abs(),
             K.NUM_ATOMS: torch.tensor(c.n, device=pos.device), K.DATA_MODALITY: modal}
        d[K.INFO] = {}
        data.append(AtomGraphData(**d))
    return Collater([], follow_batch=None, exclude_keys=None)(data)


def _evaluate(model, crystals: list[Crystal], cutoff: float):
    """(energies (B,), forces (N_total, 3), ASE-convention stresses (B, 3, 3)) of the crystals."""
    import sevenn._keys as K

    batch = _batch(crystals, cutoff).to(crystals[0].numbers.device)
    out = model(batch)
    energy = out[K.PRED_TOTAL_ENERGY].detach().reshape(-1)
    forces = out[K.PRED_FORCE].detach()
    s = -out[K.PRED_STRESS].detach()  # sevenn: xx yy zz xy yz zx, minus ASE's sign
    stress = torch.stack([torch.stack([s[:, 0], s[:, 3], s[:, 5]], -1), torch.stack([s[:, 3], s[:, 1], s[:, 4]], -1),
                          torch.stack([s[:, 5], s[:, 4], s[:, 2]], -1)], -2)
    return energy, forces, stress


def _filter_forces(c: Crystal, forces: torch.Tensor, stress: torch.Tensor) -> torch.Tensor:
    """(N + 3, 3) generalised forces of UnitCellFilter: atoms in the reference frame, then the cell."""
    volume = float(torch.det(c.cell).abs())
    virial = -volume * stress
    if c.dim == 2:  # in-plane cell only: xx, yy, xy
        mask = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=virial.dtype, device=virial.device)
        virial = virial * mask
    atom_forces = forces @ c.deform
    cell_force = torch.linalg.solve(c.deform, virial.T).T / c.n  # cell_factor = number of atoms (ASE's default)
    return torch.cat([atom_forces, cell_force])


def _fire_step(c: Crystal, f: torch.Tensor) -> None:
    """One ASE FIRE step on the crystal's (positions, cell) degrees of freedom."""
    p = FIRE
    if c.steps > 0:
        vf = float((f * c.v).sum())
        if vf > 0.0:
            c.v = (1.0 - c.a) * c.v + c.a * f / max(float(f.norm()), 1e-12) * float(c.v.norm())
            if c.n_pos > p["nmin"]:
                c.dt = min(c.dt * p["finc"], p["dtmax"])
                c.a *= p["fa"]
            c.n_pos += 1
        else:
            c.v = torch.zeros_like(c.v)
            c.a = p["astart"]
            c.dt *= p["fdec"]
            c.n_pos = 0
    c.v = c.v + c.dt * f
    dr = c.dt * c.v
    norm = float(dr.norm())
    if norm > p["maxstep"]:
        dr = p["maxstep"] * dr / norm
    # DOFs: reference-frame positions and cell_factor * F (UnitCellFilter)
    c.ref_pos = c.ref_pos + dr[: c.n]
    c.deform = c.deform + dr[c.n:] / c.n
    c.steps += 1


def _structure(c: Crystal) -> Structure:
    return Structure(Lattice(c.cell.detach().cpu().double().numpy()), c.numbers.cpu().tolist(),
                     c.pos.detach().cpu().double().numpy(), coords_are_cartesian=True)


def relax_batched(items: Iterable[tuple[Any, Structure, int]], steps: int = MAX_STEPS, fmax: float = DEFAULT_FMAX,
                  device: str | None = None, max_atoms_in_batch: int = 8192, model=None) -> Iterator[tuple[Any, Relaxation]]:
    """(key, Relaxation) for every (key, structure, dim), as each finishes; steps=0: single points.

    The batch holds up to `max_atoms_in_batch` atoms; a crystal the model cannot take (an element
    SevenNet-0 does not know, an empty neighbour list) comes back with its error, never stopping the rest."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if model is None:
        model, cutoff, _ = load_sevennet(device)
    else:
        model, cutoff = model
    queue = iter(items)
    active: list[Crystal] = []
    exhausted = False
    while True:
        while not exhausted and sum(c.n for c in active) < max_atoms_in_batch:
            item = next(queue, None)
            if item is None:
                exhausted = True
                break
            key, structure, dim = item
            try:
                active.append(_crystal(key, structure, dim, device))
            except Exception as exc:  # noqa: BLE001 - a bad crystal must not stop the batch
                yield key, Relaxation(error=f"{type(exc).__name__}: {exc}"[:300])
        if not active:
            return
        try:
            energy, forces, stress = _evaluate(model, active, cutoff)
        except Exception as exc:  # noqa: BLE001 - one crystal broke the batch: run them one by one
            if len(active) == 1:
                yield active[0].key, Relaxation(error=f"{type(exc).__name__}: {exc}"[:300])
                active = []
                continue
            survivors = []
            for c in active:
                try:
                    _evaluate(model, [c], cutoff)
                    survivors.append(c)
                except Exception as one:  # noqa: BLE001
                    yield c.key, Relaxation(error=f"{type(one).__name__}: {one}"[:300])
            active = survivors
            continue
        offsets = np.cumsum([0] + [c.n for c in active])
        still = []
        for b, c in enumerate(active):
            f = _filter_forces(c, forces[offsets[b]:offsets[b + 1]], stress[b])
            c.energy = float(energy[b])
            c.fmax_now = float(f.norm(dim=1).max())
            converged = c.fmax_now < fmax
            if converged or c.steps >= steps or not math.isfinite(c.energy):
                yield c.key, checked_relaxation(c.energy, _structure(c), c.volume0, c.steps, converged or steps == 0)
                continue
            _fire_step(c, f)
            still.append(c)
        active = still
