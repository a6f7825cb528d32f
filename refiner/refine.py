"""Refine crystal records with a trained refiner: batched, on GPU when present, symmetry exact.

Atom types, the group and the Wyckoff assignment never change; only the free coordinates
and the free lattice parameters move. A record the refiner cannot take (too many atoms)
comes back unchanged with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from xtallm.configs.recipe import option

from .checkpoint import Refiner
from .crystal import arrays_to_record, collate, record_to_arrays
from .diffusion import SamplerOptions, refine


@dataclass
class RefineOptions:
    """The reverse chain's settings (SDEdit from t0 = tau)."""

    tau: float = option(0.2, "noise level to start from, in (0, 1]; 0.2-0.3 measured best (docs/benchmarks.md)")
    steps: int = option(200, "steps of the whole chain; round(tau * steps) are run")
    corrector_steps: int = option(1, "Langevin corrector steps per predictor step")
    corrector_step: float = option(0.1, "corrector step size (signal-to-noise ratio)")
    refine_lattice: bool = option(True, "move the free lattice parameters too (no: coordinates only)")
    batch_size: int = option(256, "crystals per batch (capped by their size: batch x atoms^2)")
    max_atoms: int = option(200, "larger crystals (conventional cell) pass through unchanged")
    seed: int = option(0, "seed of the chain's noise")
    compile: bool = option(False, "torch.compile the network (GPU: ~2.4x faster after ~40 s of compilation; for large sets)")

    def check(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.steps < 1 or self.batch_size < 1 or self.max_atoms < 1 or self.corrector_steps < 0:
            raise ValueError("steps, batch_size and max_atoms must be >= 1, corrector_steps >= 0")

    def sampler(self, device: torch.device) -> SamplerOptions:
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return SamplerOptions(self.steps, self.corrector_steps, self.corrector_step, self.refine_lattice, bf16, compile=self.compile)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def size_batches(sizes: list[int], batch_size: int, typical_atoms: int = 24) -> list[list[int]]:
    """Consecutive index batches over ascending sizes, capped so that batch x largest^2 (the padded
    pair count, which sets the cost) stays within batch_size x typical_atoms^2."""
    budget = batch_size * typical_atoms**2
    batches: list[list[int]] = []
    for i, n in enumerate(sizes):
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * n * n <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def refine_records(refiner: Refiner, records: list, options: RefineOptions, progress: bool = True) -> list[tuple[object, str | None]]:
    """(refined record, None) or (input record, reason it was passed through), in input order."""
    if not 0.0 < options.tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {options.tau}")
    device = next(refiner.model.parameters()).device
    results: list[tuple[object, str | None]] = [(r, None) for r in records]
    todo = []
    for i, record in enumerate(records):
        if record.n_atoms > options.max_atoms:
            results[i] = (record, f"{record.n_atoms} atoms in the conventional cell > max_atoms={options.max_atoms}")
        else:
            todo.append(i)
    todo.sort(key=lambda i: records[i].n_atoms)  # similar sizes share a batch: little padding
    batches = size_batches([records[i].n_atoms for i in todo], options.batch_size)
    batches = [[todo[j] for j in batch] for batch in batches]
    for b, chunk in enumerate(tqdm(batches, desc=f"refine tau={options.tau}", disable=not progress or len(batches) < 2)):
        arrays = [record_to_arrays(records[i]) for i in chunk]
        batch = collate(arrays, refiner.vocab).to(device)
        generator = torch.Generator(device=device).manual_seed(options.seed * 1_000_003 + b)
        site_v, k = refine(refiner.model, batch, refiner.schedule, options.tau, options.sampler(device), generator)
        site_v, k = site_v.double().cpu().numpy(), k.double().cpu().numpy()
        for j, i in enumerate(chunk):
            n_sites = len(records[i].sites)
            if not (np.isfinite(site_v[j, :n_sites]).all() and np.isfinite(k[j]).all()):
                results[i] = (records[i], "refiner produced non-finite coordinates")
                continue
            results[i] = (arrays_to_record(records[i], k[j], site_v[j, :n_sites]), None)
    return results
