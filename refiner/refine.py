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

from .checkpoint import Refiner
from .crystal import arrays_to_record, collate, record_to_arrays
from .diffusion import SamplerOptions, refine


@dataclass
class RefineOptions:
    tau: float = 0.2  # SDEdit start: t0 = tau (fraction of the chain); 0.2-0.3 measured best (docs/benchmarks.md)
    steps: int = 200  # steps of the whole chain; refining runs round(tau * steps)
    corrector_steps: int = 1
    corrector_step: float = 0.1
    refine_lattice: bool = True
    batch_size: int = 256
    max_atoms: int = 200  # atoms in the conventional cell
    seed: int = 0
    compile: bool = False  # torch.compile the network: pays off on a GPU for thousands of structures

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
