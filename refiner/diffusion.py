"""Score-based diffusion on the symmetric state (free parameters + lattice k), and its sampler.

Coordinates: a variance-exploding process whose noise is isotropic in Cartesian space within
each site's free subspace (sigma in Å), wrapped on periodic axes; the network predicts the
per-atom Cartesian displacement / sigma, which is the negative wrapped-normal score times
sigma (nearest image). Lattice: the same process on the free k components.

Refinement starts the reverse chain at a level t0 = tau: SDEdit noises the structure to tau
first and runs the predictor-corrector chain; with `noise_input=False` the structure is taken as
already at level tau (coarse input) and, with `ode`, run back by the probability flow. The chain
has `steps` steps over t in [0, 1], so starting at tau runs round(tau * steps) of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .clash import periodic_images, relieve, repel, worst_deficit
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


def training_loss(model: Denoiser, batch: CrystalBatch, schedule: NoiseSchedule, t: torch.Tensor,
                  start: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Denoising score matching at times t (B,): coordinate and lattice losses.

    `start` (free parameters, k), e.g. LLM-like corruptions of the batch (refiner/corrupt.py), is noised
    instead of the truth; the target stays the way back to the truth, so the network learns to undo them."""
    sigma = schedule.sigma(t)
    lattice_sigma = schedule.lattice_sigma(t)
    clean_lattice = lattice_matrix(batch)
    v0, k0 = (batch.site_v, batch.k) if start is None else start
    v_t = wrap_sites(batch, v0 + site_noise(batch, clean_lattice) * sigma[:, None, None])
    k_t = project_k(k0 + lattice_sigma[:, None] * torch.randn_like(batch.k) * batch.k_free, batch.k_free, batch.k_fixed)
    k_target = (k_t - batch.k) * batch.k_free / lattice_sigma[:, None]

    dv_hat, k_hat, lattice = predict(model, batch, v_t, k_t, t)
    # target: where each atom went (nearest image), in the noisy cell's Cartesian frame, per unit sigma
    moved = minimum_image(batch, expand(batch, v_t) - expand(batch, batch.site_v))
    target = push_forward(batch, lattice, pull_back(batch, lattice, moved @ lattice)) / sigma[:, None, None]
    pred = push_forward(batch, lattice, dv_hat)
    n_atoms = batch.atom_mask.sum().clamp(min=1)
    coord = ((pred - target) ** 2).sum(-1).mul(batch.atom_mask).sum() / n_atoms
    lattice_loss = ((k_hat - k_target) ** 2).sum() / batch.k_free.sum().clamp(min=1)
    return {"coord": coord, "lattice": lattice_loss}


@dataclass
class ChainOptions:
    """The reverse chain's numerics (not the LLM's sampling options: those are llm.SamplingOptions)."""

    steps: int = 200  # steps of the whole chain over t in [0, 1]
    corrector_steps: int = 1
    corrector_step: float = 0.1  # Langevin step as a fraction of sigma^2
    refine_lattice: bool = True
    bf16: bool = False  # run the network in bf16 (GPUs)
    ode: bool = False  # deterministic probability-flow steps (no injected noise, no corrector)
    noise_input: bool = True  # SDEdit: noise the input to tau first; False: the input is taken as already at level tau
    cuda_graph: bool = True  # on CUDA, replay one captured step (the chain is launch-bound otherwise)
    compile: bool = False  # torch.compile the network (dynamic shapes: one compilation for all batch sizes)
    repulsion: float = 1.0  # strength of the clash repulsion after every step (needs a distance table; 0: off)
    polish_steps: int = 0  # repulsion-only steps after the chain (needs a distance table)


# per-step coefficients of the chain, columns of `_chain_coefficients`
_CORR_DRIFT, _CORR_NOISE, _CORR_DRIFT_K, _CORR_NOISE_K, _PRED_DRIFT, _PRED_NOISE, _PRED_DRIFT_K, _PRED_NOISE_K, _ODE, _ODE_K = range(10)


def _chain_coefficients(schedule: NoiseSchedule, tau: torch.Tensor, n: int, options: ChainOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Times (n, B) and the drift/noise scale of every step for every crystal (n, B, 10), computed once
    on the host (no syncs in the loop). Crystal b runs from its own tau[b] to 0 in the same n steps."""
    times = tau.double()[None, :] * (1 - torch.arange(n + 1, dtype=torch.float64)[:, None] / n)  # (n + 1, B)
    sig, lsig = schedule.sigma(times), schedule.lattice_sigma(times)
    sig[-1] = lsig[-1] = 0.0  # the last step lands on the clean estimate
    s, s_next, ls, ls_next = sig[:-1], sig[1:], lsig[:-1], lsig[1:]
    var, lattice_var = s**2 - s_next**2, ls**2 - ls_next**2
    gamma = options.corrector_step
    zero = torch.zeros_like(s)
    rows = [
        gamma * s, math.sqrt(2 * gamma) * s, gamma * ls, math.sqrt(2 * gamma) * ls,  # Langevin corrector
        var / s, torch.where(s_next > 0, var.clamp(min=0).sqrt(), zero),  # reverse-SDE predictor
        lattice_var / ls, torch.where(ls_next > 0, lattice_var.clamp(min=0).sqrt(), zero),
        s - s_next, ls - ls_next,  # probability flow
    ]  # fmt: skip
    return times[:-1].float(), torch.stack(rows, dim=-1).float()


def _chain_step(model: Denoiser, batch: CrystalBatch, options: ChainOptions, table, images, v, k, t, c, xi_v, xi_k):
    """One step of the reverse chain: correctors, the predictor, then the clash repulsion. Pure tensor
    work on fixed shapes (noise comes in as xi_v (draws, B, S, 3), xi_k (draws, B, 6); c is (B, 10)),
    so it can be a CUDA graph."""
    lattice_on = 1.0 if options.refine_lattice else 0.0
    k_mask = batch.k_free * lattice_on
    cv, ck = c[:, :, None, None], c[:, :, None]  # broadcast over sites / k components
    if options.ode:  # probability flow: dx/dsigma = eps_hat
        dv_hat, k_hat, _ = predict(model, batch, v, k, t, options.bf16)
        v = wrap_sites(batch, v - cv[:, _ODE] * dv_hat)
        k = project_k(k - ck[:, _ODE_K] * k_hat * lattice_on, batch.k_free, batch.k_fixed)
    else:
        for j in range(options.corrector_steps):  # Langevin at the current noise level
            dv_hat, k_hat, lattice = predict(model, batch, v, k, t, options.bf16)
            v = wrap_sites(batch, v - cv[:, _CORR_DRIFT] * dv_hat + cv[:, _CORR_NOISE] * site_noise(batch, lattice, xi=xi_v[j]))
            k_step = ck[:, _CORR_DRIFT_K] * k_hat + ck[:, _CORR_NOISE_K] * xi_k[j] * k_mask
            k = project_k(k - k_step * lattice_on, batch.k_free, batch.k_fixed)
        dv_hat, k_hat, lattice = predict(model, batch, v, k, t, options.bf16)  # reverse-SDE predictor step to the next level
        v = wrap_sites(batch, v - cv[:, _PRED_DRIFT] * dv_hat + cv[:, _PRED_NOISE] * site_noise(batch, lattice, xi=xi_v[-1]))
        k_step = ck[:, _PRED_DRIFT_K] * k_hat - ck[:, _PRED_NOISE_K] * xi_k[-1] * k_mask
        k = project_k(k - k_step * lattice_on, batch.k_free, batch.k_fixed)
    if table is not None and options.repulsion > 0:
        v, k = repel(batch, v, k, table, lattice_on, options.repulsion, images)
    return v, k


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
    tau: float | torch.Tensor,
    options: ChainOptions,
    generator: torch.Generator | None = None,
    table: torch.Tensor | None = None,
    clashes: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise the batch's state to t0 = tau and denoise it: (free parameters (B, S, 3), k (B, 6)).

    `tau` is one level for all, or one per crystal (B,): the chain runs round(max tau x steps) steps
    and each crystal descends from its own level. With `table` (refiner/clash.py: closest allowed
    distance per pair of atomic numbers) and a batch where some crystal clashes, every step ends with a
    symmetric repulsion of clashing atoms; up to `options.polish_steps` repulsion-only steps follow
    the chain for every batch, until no pair breaks its target. All noise of the chain
    is drawn up front from `generator`, so the result for a seed is the same with and without a
    CUDA graph. Callers validate tau (RefineOptions.check).
    """
    device = batch.k.device
    tau = torch.as_tensor(tau, dtype=torch.float64).flatten().expand(batch.size).cpu()
    n = max(1, round(float(tau.max()) * options.steps))
    times, coefficients = _chain_coefficients(schedule, tau, n, options)
    t_all, coefficients = times.to(device), coefficients.to(device)
    draws = 1 if options.ode else 1 + options.corrector_steps
    xi_v = torch.randn((n, draws, *batch.site_v.shape), generator=generator, device=device)
    xi_k = torch.randn((n, draws, *batch.k.shape), generator=generator, device=device)
    start_v = torch.randn(batch.site_v.shape, generator=generator, device=device)
    start_k = torch.randn(batch.k.shape, generator=generator, device=device)

    k_mask = batch.k_free * (1.0 if options.refine_lattice else 0.0)
    sigma0 = schedule.sigma(tau).float().to(device)
    lattice_sigma0 = schedule.lattice_sigma(tau).float().to(device)
    if options.noise_input:
        v = wrap_sites(batch, batch.site_v + site_noise(batch, lattice_matrix(batch), xi=start_v) * sigma0[:, None, None])
        k = project_k(batch.k + start_k * k_mask * lattice_sigma0[:, None], batch.k_free, batch.k_fixed)
    else:  # coarse input already carries noise of about sigma(tau): denoise it as it is
        v, k = batch.site_v.clone(), batch.k.clone()
    table = None if table is None else table.to(device)
    images = None if table is None else periodic_images(batch, table)  # with room for the cell to shrink a little
    polish = table
    if clashes is None and table is not None:  # `clashes`: whether some crystal breaks its rule, when the caller knows
        clashes = bool((worst_deficit(batch, table) > 0).any())
    if not clashes:
        table = None  # no crystal of the batch clashes: the chain runs without the repulsion, the polish checks after

    network = _compiled(model) if options.compile else model

    def step(v, k, t, c, xv, xk):
        return _chain_step(network, batch, options, table, images, v, k, t, c, xv, xk)

    if options.cuda_graph and device.type == "cuda" and n > 2:
        step = _GraphedStep(step, v, k, t_all[0], coefficients[0], xi_v[0], xi_k[0])
    for i in range(n):
        v, k = step(v, k, t_all[i], coefficients[i], xi_v[i], xi_k[i])
    v, k = v.clone(), k.clone()
    if polish is not None and options.polish_steps > 0:
        v, k = relieve(batch, v, k, polish, options.polish_steps, 1.0 if options.refine_lattice else 0.0, images)
    return v * batch.site_free, k
