"""Score-based diffusion on the symmetric state (free parameters + lattice k), and its sampler.

Coordinates: a variance-exploding process whose noise is isotropic in Cartesian space within
each site's free subspace (sigma in Å), wrapped on periodic axes; the network predicts the
per-atom Cartesian displacement / sigma, which is the negative wrapped-normal score times
sigma (nearest image). Lattice: the same process on the free k components.

Refinement is SDEdit: take a structure, noise it to t0 = tau, and run the reverse
predictor-corrector chain from there. The chain has `steps` steps over t in [0, 1], so
refining at tau runs round(tau * steps) of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .crystal import CrystalBatch, expand, lattice_matrix, minimum_image, pull_back, push_forward, site_noise, wrap_sites
from .lattice import project_k
from .model import Denoiser


@dataclass
class NoiseSchedule:
    sigma_min: float = 0.01  # Å
    sigma_max: float = 2.0
    lattice_sigma_min: float = 0.001  # k units (half log-metric, ~ relative length change)
    lattice_sigma_max: float = 0.5

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def lattice_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.lattice_sigma_min * (self.lattice_sigma_max / self.lattice_sigma_min) ** t


def unit_vectors(lattice: torch.Tensor) -> torch.Tensor:
    return lattice / torch.linalg.norm(lattice, dim=-1, keepdim=True)


def predict(model: Denoiser, batch: CrystalBatch, site_v: torch.Tensor, k: torch.Tensor, t: torch.Tensor, bf16: bool = False):
    """Symmetric prediction: (free-parameter displacement / sigma (B, S, 3), k noise (B, 6)).

    Geometry (orbits, pull-backs, the lattice) stays in float32 or better; only the network
    may run in bf16.
    """
    lattice = lattice_matrix(batch, k)
    frac = expand(batch, site_v)
    with torch.autocast(frac.device.type, dtype=torch.bfloat16, enabled=bf16):
        coeff, k_out = model(batch, frac, k, lattice, t)
    cart = torch.einsum("bni,bij->bnj", coeff.float(), unit_vectors(lattice))
    return pull_back(batch, lattice, cart), k_out.float() * batch.k_free, lattice


def training_loss(model: Denoiser, batch: CrystalBatch, schedule: NoiseSchedule, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Denoising score matching at times t (B,): coordinate and lattice losses."""
    sigma = schedule.sigma(t)
    lattice_sigma = schedule.lattice_sigma(t)
    clean_lattice = lattice_matrix(batch)
    v_t = wrap_sites(batch, batch.site_v + site_noise(batch, clean_lattice) * sigma[:, None, None])
    k_noise = torch.randn_like(batch.k) * batch.k_free
    k_t = project_k(batch.k + lattice_sigma[:, None] * k_noise, batch.k_free, batch.k_fixed)

    dv_hat, k_hat, lattice = predict(model, batch, v_t, k_t, t)
    # target: where each atom went (nearest image), in the noisy cell's Cartesian frame, per unit sigma
    moved = minimum_image(batch, expand(batch, v_t) - expand(batch, batch.site_v))
    target = push_forward(batch, lattice, pull_back(batch, lattice, moved @ lattice)) / sigma[:, None, None]
    pred = push_forward(batch, lattice, dv_hat)
    n_atoms = batch.atom_mask.sum().clamp(min=1)
    coord = ((pred - target) ** 2).sum(-1).mul(batch.atom_mask).sum() / n_atoms
    lattice_loss = ((k_hat - k_noise) ** 2).sum() / batch.k_free.sum().clamp(min=1)
    return {"coord": coord, "lattice": lattice_loss}


@dataclass
class SamplerOptions:
    steps: int = 200  # steps of the whole chain over t in [0, 1]
    corrector_steps: int = 1
    corrector_step: float = 0.1  # Langevin step as a fraction of sigma^2
    refine_lattice: bool = True
    bf16: bool = False  # run the network in bf16 (GPUs)
    ode: bool = False  # deterministic probability-flow steps (no injected noise, no corrector)


@torch.no_grad()
def refine(
    model: Denoiser,
    batch: CrystalBatch,
    schedule: NoiseSchedule,
    tau: float,
    options: SamplerOptions,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise the batch's state to t0 = tau and denoise it: (free parameters (B, S, 3), k (B, 6))."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    n = max(1, round(tau * options.steps))
    device = batch.k.device
    times = torch.linspace(tau, 0.0, n + 1, device=device)
    sigmas = schedule.sigma(times)
    lattice_sigmas = schedule.lattice_sigma(times)
    sigmas[-1] = 0.0  # the last step lands on the clean estimate
    lattice_sigmas[-1] = 0.0
    b = batch.size
    lattice_on = 1.0 if options.refine_lattice else 0.0
    k_mask = batch.k_free * lattice_on

    def noise_v(k):
        return site_noise(batch, lattice_matrix(batch, k), generator)

    def noise_k():
        return torch.randn(batch.k.shape, generator=generator, device=device) * k_mask

    v = wrap_sites(batch, batch.site_v + noise_v(batch.k) * sigmas[0])
    k = project_k(batch.k + noise_k() * lattice_sigmas[0], batch.k_free, batch.k_fixed)
    for i in range(n):
        t = times[i].expand(b)
        s, s_next = sigmas[i], sigmas[i + 1]
        ls, ls_next = lattice_sigmas[i], lattice_sigmas[i + 1]
        if options.ode:  # probability flow: dx/dsigma = eps_hat
            dv_hat, k_hat, _ = predict(model, batch, v, k, t, options.bf16)
            v = wrap_sites(batch, v - (s - s_next) * dv_hat)
            k = project_k(k - (ls - ls_next) * k_hat * lattice_on, batch.k_free, batch.k_fixed)
            continue
        for _ in range(options.corrector_steps):  # Langevin at the current noise level
            dv_hat, k_hat, _ = predict(model, batch, v, k, t, options.bf16)
            gamma = options.corrector_step
            v = wrap_sites(batch, v - gamma * s * dv_hat + math.sqrt(2 * gamma) * s * noise_v(k))
            k = project_k(k - (gamma * ls * k_hat + math.sqrt(2 * gamma) * ls * noise_k()) * lattice_on, batch.k_free, batch.k_fixed)
        dv_hat, k_hat, _ = predict(model, batch, v, k, t, options.bf16)  # reverse-SDE predictor step to the next level
        var, lattice_var = s**2 - s_next**2, ls**2 - ls_next**2
        v = v - var / s * dv_hat + (torch.sqrt(var) * noise_v(k) if s_next > 0 else 0.0)
        v = wrap_sites(batch, v)
        k_step = lattice_var / ls * k_hat - (torch.sqrt(lattice_var) * noise_k() if ls_next > 0 else 0.0)
        k = project_k(k - k_step * lattice_on, batch.k_free, batch.k_fixed)
    return v * batch.site_free, k
