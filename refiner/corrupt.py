"""LLM-like corruptions of true crystals, for training the refiner on the errors it meets.

What goes wrong in the default LLM's samples (benchmarks/bench_refiner_repair.py, `diagnose`):
the closest pair of an invalid sample is two atoms of one orbit (free coordinates near a special
position: the orbit collapses) or atoms of two different orbits written on one spot, with the cell
a few per cent off and every number rounded to the text's decimals. Each corruption below imitates
one of these on the symmetric state (free parameters, k), so the group and the Wyckoff assignment
stay those of the truth, exactly as in a parsed sample:

- rounding: free coordinates to 2 decimals (layers' z to 0.01 Å);
- collapse: one site's free coordinates pulled 50-90% of the way to the nearest multiple of 1/4;
- stack: one site moved 50-90% of the way onto another site of the same Wyckoff position;
- cell: the cell's scale (k's isotropic component, a layer's in-plane scale) off by ~4%.

Torch only: a GPU box trains on the arrays file without the crystal stack.
"""

from __future__ import annotations

import math

import torch

from .crystal import CrystalBatch, expand, lattice_matrix, minimum_image, site_noise, wrap_sites
from .lattice import project_k

_SCALE_INDEX = {3: 5, 2: 4}  # k component of the isotropic (bulk) / in-plane (layer) scale


def corrupt(batch: CrystalBatch, share: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(corrupted free parameters (B, S, 3), corrupted k (B, 6), which crystals were corrupted (B,) bool).

    A `share` of the batch gets rounding and a cell error, and each of those, with probability 1/2
    each, a collapsed and a stacked orbit (where the crystal has one to corrupt)."""
    device = batch.k.device
    b, s, _ = batch.site_v.shape
    rand = lambda *shape: torch.rand(shape, generator=generator, device=device)  # noqa: E731
    chosen = rand(b) < share
    v = batch.site_v.clone()
    free = batch.site_free * batch.site_mask[..., None]

    # rounding to the text's decimals
    v = torch.where(chosen[:, None, None], torch.round(v * 100) / 100, v) * batch.site_free

    # collapse: a random site with free coordinates, pulled onto the nearest quarter (periodic axes only)
    has_free = free.sum(-1) > 0
    pick = _random_index(has_free, generator)
    collapse = chosen & (rand(b) < 0.5) & has_free.any(1)
    one_hot = torch.nn.functional.one_hot(pick, s).bool() & collapse[:, None]
    pull = 0.5 + 0.4 * rand(b)[:, None, None]  # all the way would leave nothing to learn but a guess
    quarter = v + pull * (torch.round(v * 4) / 4 - v)
    periodic = batch.periodic[:, None, :].expand_as(v) > 0
    v = torch.where(one_hot[..., None] & periodic, quarter, v) * batch.site_free

    # stack: site j placed on site i of the same Wyckoff position (same standard form)
    same = (batch.site_a0.flatten(2)[:, :, None, :] == batch.site_a0.flatten(2)[:, None, :, :]).all(-1)
    same &= (batch.site_t0[:, :, None, :] - batch.site_t0[:, None, :, :]).abs().amax(-1) < 1e-6
    same &= batch.site_mask[:, :, None] & batch.site_mask[:, None, :] & has_free[:, :, None]
    same &= ~torch.eye(s, dtype=torch.bool, device=device)
    target = _random_index(same.any(2), generator)  # the site that moves
    source = _random_index(same[torch.arange(b, device=device), target], generator)  # onto this one
    stack = chosen & (rand(b) < 0.5) & same.any((1, 2))
    rows = torch.arange(b, device=device)
    here, there = v[rows, target], v[rows, source]
    step = there - here
    step = step - torch.round(step) * batch.periodic  # the short way round on periodic axes
    moved = here + (0.5 + 0.4 * rand(b))[:, None] * step
    v[torch.arange(b, device=device)[stack], target[stack]] = moved[stack]
    v = wrap_sites(batch, v * batch.site_free)
    v = v + 0.005 * site_noise(batch, lattice_matrix(batch), generator) * chosen[:, None, None]  # never exactly special
    v = wrap_sites(batch, v) * batch.site_free

    # cell scale
    k = batch.k.clone()
    scale = torch.where(batch.dim == 3, _SCALE_INDEX[3], _SCALE_INDEX[2])
    jitter = 0.04 * torch.randn(b, generator=generator, device=device) * chosen
    k[torch.arange(b, device=device), scale] += jitter
    return v, project_k(k, batch.k_free, batch.k_fixed), chosen


def _random_index(allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random True index per row of `allowed` (B, S) (0 for rows with none)."""
    weights = allowed.float() + 1e-12
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def training_levels(batch: CrystalBatch, v: torch.Tensor, schedule, t: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    """Noise levels for corrupted crystals: at least the level whose sigma is the corruption's RMS atom
    displacement (and t_min), so the target (displacement / sigma) stays of order one, as in refinement,
    which starts a crystal higher the further it is from plausible."""
    moved = minimum_image(batch, expand(batch, v) - expand(batch, batch.site_v)) @ lattice_matrix(batch)
    rms = ((moved**2).sum(-1) * batch.atom_mask).sum(1).div(batch.atom_mask.sum(1).clamp(min=1)).sqrt()
    level = torch.log(rms.clamp(min=schedule.sigma_min) / schedule.sigma_min) / math.log(schedule.sigma_max / schedule.sigma_min)
    return torch.maximum(t, level.clamp(t_min, t_max))
