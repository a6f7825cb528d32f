"""Refine crystal records with a trained refiner: batched, on GPU when present, symmetry exact.

Atom types, the group and the Wyckoff assignment never change; only the free coordinates
and the free lattice parameters move. A crystal whose atoms clash (refiner/clash.py) starts its
chain from a higher noise level and is repaired by the symmetric repulsion in every step. A record
the refiner cannot take (too many atoms, an element beyond its table) comes back unchanged with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from pymatgen.core import Element
from tqdm.auto import tqdm

from xtallm.configs.recipe import option

from .checkpoint import Refiner
from .clash import repulsion_table, worst_deficit
from .crystal import arrays_to_record, collate, record_to_arrays
from .diffusion import ChainOptions, refine


START_MODES = ("noise", "input")  # RefineOptions.start


@dataclass
class RefineOptions:
    """The reverse chain's settings, as users set them: where each crystal starts (from the input, or noised by
    SDEdit) and the chain's numerics."""

    start: str = option("input", "how a plausible crystal (no clashing atoms) is refined: input: taken as it is at level "
                                 "input_level and denoised by the deterministic probability flow; noise: SDEdit, noised to tau "
                                 "first, then the stochastic chain. Crystals with clashing atoms are always noised (tau to "
                                 "tau_max) and repaired", choices=START_MODES)
    input_level: float = option(0.45, "start=input: the level a plausible crystal is taken at, in (0, 1]; sigma(level) should "
                                      "match its typical error: 0.3 ~ 0.05 Å, 0.45 ~ 0.1 Å (LLM-grade, measured best), 0.55 ~ 0.18 Å")
    tau: float = option(0.2, "noise level SDEdit starts from (start=noise, and crystals with clashing atoms), in (0, 1]; "
                             "0.2-0.3 measured best (docs/benchmarks.md)")
    tau_max: float = option(0.5, "start crystals with clashing atoms higher, up to this level, by their worst "
                                 "distance deficit (= tau: one level for all)")
    steps: int = option(200, "steps of the whole chain over levels (0, 1]; a crystal starting at level L runs round(L * steps)")
    corrector_steps: int = option(1, "Langevin corrector steps per predictor step")
    corrector_step: float = option(0.1, "corrector step size (signal-to-noise ratio)")
    refine_lattice: bool = option(True, "move the free lattice parameters too (no: coordinates only)")
    repulsion: float = option(1.0, "strength of the symmetric clash repulsion in every step (0: off)")
    polish_steps: int = option(50, "repulsion-only steps after the chain (0: none)")
    batch_size: int = option(256, "crystals per batch (capped by their size: batch x atoms^2)")
    max_atoms: int = option(200, "larger crystals (conventional cell) pass through unchanged")
    seed: int = option(0, "seed of the chain's noise")
    compile: bool = option(False, "torch.compile the network (GPU: ~2.4x faster after ~40 s of compilation; for large sets)")

    def check(self) -> None:
        """The one place refinement settings are validated (every entry point calls it)."""
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not 0.0 < self.input_level <= 1.0:
            raise ValueError(f"input_level must be in (0, 1], got {self.input_level}")
        if not self.tau <= self.tau_max <= 1.0:
            raise ValueError(f"tau_max must be in [tau, 1] = [{self.tau}, 1], got {self.tau_max}")
        if self.steps < 1 or self.batch_size < 1 or self.max_atoms < 1 or self.corrector_steps < 0:
            raise ValueError("steps, batch_size and max_atoms must be >= 1, corrector_steps >= 0")
        if self.start not in START_MODES:
            raise ValueError(f"start must be one of {', '.join(START_MODES)}, got {self.start!r}")
        if self.repulsion < 0 or self.polish_steps < 0:
            raise ValueError(f"repulsion and polish_steps must be >= 0, got {self.repulsion} and {self.polish_steps}")

    def chain(self, device: torch.device, clashing: bool = False) -> ChainOptions:
        """The chain for a batch of plausible crystals (as `start` says) or of clashing ones (always SDEdit: the
        denoiser alone does not open a clash; noise, the repulsion and the polish do, measured)."""
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        from_input = self.start == "input" and not clashing
        return ChainOptions(self.steps, self.corrector_steps, self.corrector_step, self.refine_lattice, bf16,
                            ode=from_input, noise_input=not from_input,
                            compile=self.compile, repulsion=self.repulsion, polish_steps=self.polish_steps)

    def start_levels(self, deficit: torch.Tensor) -> torch.Tensor:
        """Each crystal's starting level from its worst distance deficit (1 - d/d0, 0 when plausible): a plausible
        crystal starts at input_level (start=input) or tau (start=noise); a clashing one at tau rising linearly to
        tau_max at a deficit of one half."""
        deficit = deficit.double().cpu()
        repair = self.tau + (self.tau_max - self.tau) * (deficit / 0.5).clamp(0.0, 1.0)
        plausible = self.input_level if self.start == "input" else self.tau
        return torch.where(deficit > 0, repair, torch.full_like(repair, plausible))


def size_batches(sizes: list[int], batch_size: int, typical_atoms: int = 24, split_at: list[bool] | None = None,
                 max_padding: float = 1.5) -> list[list[int]]:
    """Consecutive index batches over ascending sizes, capped so that batch x largest^2 (the padded
    pair count, which sets the cost) stays within batch_size x typical_atoms^2 and within `max_padding`
    times the batch's real pairs (sum of size^2: on a CPU every padded pair costs as much as a real one);
    a new batch also starts where `split_at` changes value (e.g. from plausible to clashing crystals)."""
    budget = batch_size * typical_atoms**2
    batches: list[list[int]] = []
    real = 0  # the last batch's real pairs
    for i, n in enumerate(sizes):
        same_kind = split_at is None or (batches and split_at[batches[-1][-1]] == split_at[i])
        padded = (len(batches[-1]) + 1) * n * n if batches else 0
        if batches and same_kind and len(batches[-1]) < batch_size and padded <= budget and padded <= max_padding * (real + n * n):
            batches[-1].append(i)
            real += n * n
        else:
            batches.append([i])
            real = n * n
    return batches


class Refined(NamedTuple):
    record: object  # the refined CrystalRecord, or the input one when it was passed through
    note: str | None  # why it was passed through (None: refined)
    tau: float | None  # the level its chain started from (tau, or higher for a crystal with clashing atoms)


def refine_records(refiner: Refiner, records: list, options: RefineOptions, progress: bool = True) -> list[Refined]:
    """One Refined per record, in input order."""
    options.check()
    device = next(refiner.model.parameters()).device
    table = repulsion_table(device=device) if options.repulsion > 0 or options.polish_steps > 0 else None
    results: list[Refined] = [Refined(r, None, None) for r in records]
    todo = []
    max_z = refiner.model.config.max_z
    for i, record in enumerate(records):
        heaviest = max((Element(s.element) for s in record.sites), key=lambda e: e.Z, default=None)
        if record.n_atoms > options.max_atoms:
            results[i] = Refined(record, f"{record.n_atoms} atoms in the conventional cell > max_atoms={options.max_atoms}", None)
        elif heaviest is not None and heaviest.Z > max_z:  # a pretrained LM's grammar allows every element symbol
            results[i] = Refined(record, f"element {heaviest.symbol} (Z={heaviest.Z}) is beyond the refiner's elements (Z <= {max_z})", None)
        else:
            todo.append(i)
    arrays = {i: record_to_arrays(records[i]) for i in todo}
    measure = table is not None or options.tau_max > options.tau
    deficits = _worst_deficits(arrays, refiner.vocab, options.batch_size, device) if measure else {i: 0.0 for i in todo}
    levels = dict(zip(todo, options.start_levels(torch.tensor([deficits[i] for i in todo])).tolist()))
    # plausible crystals and clashing ones (noised, repaired, start higher: more steps) in separate batches,
    # similar sizes together: little padding, and the plausible majority runs only its own level's steps
    todo.sort(key=lambda i: (deficits[i] > 0, records[i].n_atoms))
    batches = size_batches([records[i].n_atoms for i in todo], options.batch_size, split_at=[deficits[i] > 0 for i in todo])
    batches = [[todo[j] for j in batch] for batch in batches]
    for b, chunk in enumerate(tqdm(batches, desc=f"refine ({options.start})", disable=not progress or len(batches) < 2)):
        batch = collate([arrays[i] for i in chunk], refiner.vocab).to(device)
        generator = torch.Generator(device=device).manual_seed(options.seed * 1_000_003 + b)
        tau = torch.tensor([levels[i] for i in chunk], dtype=torch.float64)
        clashing = any(deficits[i] > 0 for i in chunk)
        site_v, k = refine(refiner.model, batch, refiner.schedule, tau, options.chain(device, clashing), generator, table,
                           clashes=clashing if measure else None)
        site_v, k = site_v.double().cpu().numpy(), k.double().cpu().numpy()
        for j, i in enumerate(chunk):
            n_sites = len(records[i].sites)
            if not (np.isfinite(site_v[j, :n_sites]).all() and np.isfinite(k[j]).all()):
                results[i] = Refined(records[i], "refiner produced non-finite coordinates", None)
                continue
            results[i] = Refined(arrays_to_record(records[i], k[j], site_v[j, :n_sites]), None, levels[i])
    return results


def _worst_deficits(arrays: dict, vocab: dict[str, int], batch_size: int, device: torch.device) -> dict[int, float]:
    """Each crystal's worst distance deficit (1 - d/d0 of the pair furthest below its rule; 0 when plausible),
    measured once: it sets the starting level and whether the chain needs the repulsion."""
    table = repulsion_table(device=device)
    order = sorted(arrays, key=lambda i: arrays[i].n_atoms)
    deficits: dict[int, float] = {}
    for chunk in size_batches([arrays[i].n_atoms for i in order], batch_size):
        ids = [order[j] for j in chunk]
        deficits.update(zip(ids, worst_deficit(collate([arrays[i] for i in ids], vocab).to(device), table).double().cpu().tolist()))
    return deficits
