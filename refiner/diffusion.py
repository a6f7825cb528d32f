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
    with torch.autocast(frac.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
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
    cuda_graph: bool = True  # on CUDA, replay one captured step (the chain is launch-bound otherwise)
    compile: bool = False  # torch.compile the network (dynamic shapes: one compilation for all batch sizes)


# per-step coefficients of the chain, columns of `_chain_coefficients`
_CORR_DRIFT, _CORR_NOISE, _CORR_DRIFT_K, _CORR_NOISE_K, _PRED_DRIFT, _PRED_NOISE, _PRED_DRIFT_K, _PRED_NOISE_K, _ODE, _ODE_K = range(10)


def _chain_coefficients(schedule: NoiseSchedule, tau: float, n: int, options: SamplerOptions) -> tuple[list[float], torch.Tensor]:
    """Times and the drift/noise scale of every step, computed on the host once (no syncs in the loop)."""
    times = [tau * (1 - i / n) for i in range(n + 1)]
    sig = [float(schedule.sigma(torch.tensor(t, dtype=torch.float64))) for t in times]
    lsig = [float(schedule.lattice_sigma(torch.tensor(t, dtype=torch.float64))) for t in times]
    sig[-1] = lsig[-1] = 0.0  # the last step lands on the clean estimate
    gamma = options.corrector_step
    rows = []
    for i in range(n):
        s, s_next, ls, ls_next = sig[i], sig[i + 1], lsig[i], lsig[i + 1]
        var, lattice_var = s**2 - s_next**2, ls**2 - ls_next**2
        rows.append([
            gamma * s, math.sqrt(2 * gamma) * s, gamma * ls, math.sqrt(2 * gamma) * ls,  # Langevin corrector
            var / s, math.sqrt(var) if s_next > 0 else 0.0, lattice_var / ls, math.sqrt(lattice_var) if ls_next > 0 else 0.0,
            s - s_next, ls - ls_next,  # probability flow
        ])  # fmt: skip
    return times, torch.tensor(rows, dtype=torch.float32)


def _chain_step(model: Denoiser, batch: CrystalBatch, options: SamplerOptions, v, k, t, c, xi_v, xi_k):
    """One step of the reverse chain: correctors, then the predictor. Pure tensor work on fixed
    shapes (noise comes in as xi_v (draws, B, S, 3), xi_k (draws, B, 6)), so it can be a CUDA graph."""
    lattice_on = 1.0 if options.refine_lattice else 0.0
    k_mask = batch.k_free * lattice_on
    if options.ode:  # probability flow: dx/dsigma = eps_hat
        dv_hat, k_hat, _ = predict(model, batch, v, k, t, options.bf16)
        v = wrap_sites(batch, v - c[_ODE] * dv_hat)
        return v, project_k(k - c[_ODE_K] * k_hat * lattice_on, batch.k_free, batch.k_fixed)
    for j in range(options.corrector_steps):  # Langevin at the current noise level
        dv_hat, k_hat, lattice = predict(model, batch, v, k, t, options.bf16)
        v = wrap_sites(batch, v - c[_CORR_DRIFT] * dv_hat + c[_CORR_NOISE] * site_noise(batch, lattice, xi=xi_v[j]))
        k_step = c[_CORR_DRIFT_K] * k_hat + c[_CORR_NOISE_K] * xi_k[j] * k_mask
        k = project_k(k - k_step * lattice_on, batch.k_free, batch.k_fixed)
    dv_hat, k_hat, lattice = predict(model, batch, v, k, t, options.bf16)  # reverse-SDE predictor step to the next level
    v = wrap_sites(batch, v - c[_PRED_DRIFT] * dv_hat + c[_PRED_NOISE] * site_noise(batch, lattice, xi=xi_v[-1]))
    k_step = c[_PRED_DRIFT_K] * k_hat - c[_PRED_NOISE_K] * xi_k[-1] * k_mask
    return v, project_k(k - k_step * lattice_on, batch.k_free, batch.k_fixed)


_COMPILED: dict[int, torch.nn.Module] = {}


def _compiled(model: Denoiser) -> torch.nn.Module:
    """One compiled wrapper per model, reused by every batch."""
    if id(model) not in _COMPILED:
        _COMPILED[id(model)] = torch.compile(model, dynamic=True)
    return _COMPILED[id(model)]


class _GraphedStep:
    """A chain step captured once as a CUDA graph and replayed: static input buffers are refilled
    each step and the outputs live in the graph's memory (read them before the next replay)."""

    def __init__(self, step, *example_inputs: torch.Tensor):
        self.inputs = [x.clone() for x in example_inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture: cuBLAS workspaces, lazily built buffers
            for _ in range(2):
                step(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(*self.inputs)

    def __call__(self, *inputs: torch.Tensor):
        for buffer, value in zip(self.inputs, inputs):
            buffer.copy_(value)
        self.graph.replay()
        return self.outputs


@torch.no_grad()
def refine(
    model: Denoiser,
    batch: CrystalBatch,
    schedule: NoiseSchedule,
    tau: float,
    options: SamplerOptions,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise the batch's state to t0 = tau and denoise it: (free parameters (B, S, 3), k (B, 6)).

    All noise of the chain is drawn up front from `generator`, so the result for a seed is the
    same with and without a CUDA graph.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    n = max(1, round(tau * options.steps))
    device = batch.k.device
    times, coefficients = _chain_coefficients(schedule, tau, n, options)
    coefficients = coefficients.to(device)
    draws = 1 if options.ode else 1 + options.corrector_steps
    xi_v = torch.randn((n, draws, *batch.site_v.shape), generator=generator, device=device)
    xi_k = torch.randn((n, draws, *batch.k.shape), generator=generator, device=device)
    start_v = torch.randn(batch.site_v.shape, generator=generator, device=device)
    start_k = torch.randn(batch.k.shape, generator=generator, device=device)
    t_all = torch.tensor(times[:n], dtype=torch.float32, device=device)[:, None].expand(n, batch.size)

    k_mask = batch.k_free * (1.0 if options.refine_lattice else 0.0)
    sigma0, lattice_sigma0 = (float(f(torch.tensor(tau, dtype=torch.float64))) for f in (schedule.sigma, schedule.lattice_sigma))
    v = wrap_sites(batch, batch.site_v + site_noise(batch, lattice_matrix(batch), xi=start_v) * sigma0)
    k = project_k(batch.k + start_k * k_mask * lattice_sigma0, batch.k_free, batch.k_fixed)

    network = _compiled(model) if options.compile else model

    def step(v, k, t, c, xv, xk):
        return _chain_step(network, batch, options, v, k, t, c, xv, xk)

    if options.cuda_graph and device.type == "cuda" and n > 2:
        step = _GraphedStep(step, v, k, t_all[0], coefficients[0], xi_v[0], xi_k[0])
    for i in range(n):
        v, k = step(v, k, t_all[i], coefficients[i], xi_v[i], xi_k[i])
    return v.clone() * batch.site_free, k.clone()
