"""The sampler's numerics: sync-free lattice maths, seeded chains, and the CUDA-graph step.

Torch and numpy only (the fixture is a numpy array file), so this file also runs on a GPU
machine without the crystal stack.
"""

from __future__ import annotations

import pytest
import torch

from xtallm.refiner.checkpoint import load_refiner
from xtallm.refiner.crystal import collate, lattice_matrix
from xtallm.refiner.data import load_arrays
from xtallm.refiner.diffusion import ChainOptions, refine
from xtallm.refiner.lattice import expm, gram_from_k, lattice_from_gram
from xtallm.refiner.pretrained import default_refiner_path
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "refiner_examples.npz"  # 112 bulk + monolayer examples (tokenization/examples)


@pytest.fixture(scope="module")
def crystals():
    return load_arrays(FIXTURE)[0]


def test_expm_and_cholesky_match_torch_linalg(crystals):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, 3, generator=g, dtype=torch.float64)
    a = a + a.transpose(1, 2)  # symmetric, as 2 S is
    exact = torch.linalg.matrix_exp(a)
    assert ((expm(a) - exact).abs() / exact.abs().amax((1, 2), keepdim=True)).max() < 1e-12
    batch = collate(crystals, {})
    gram = gram_from_k(batch.k.double(), batch.dim)
    assert torch.allclose(lattice_from_gram(gram), torch.linalg.cholesky(gram), rtol=1e-10, atol=1e-10)
    lattice = lattice_matrix(batch)
    assert torch.allclose(lattice.double() @ lattice.double().transpose(1, 2), gram, rtol=1e-5)


def _chain(refiner, batch, seed: int, steps: int = 50, **options):
    g = torch.Generator(device=batch.k.device).manual_seed(seed)
    return refine(refiner.model, batch, refiner.schedule, 0.2, ChainOptions(steps=steps, **options), g)


def test_chain_is_seeded_and_moves_only_free_parameters(crystals):
    refiner = load_refiner(default_refiner_path(), "cpu")
    batch = collate(crystals[::14], refiner.vocab)  # 8 crystals, bulk and monolayers; 12 steps: the property is per step
    v1, k1 = _chain(refiner, batch, seed=1, steps=12)
    v2, k2 = _chain(refiner, batch, seed=1, steps=12)
    v3, _ = _chain(refiner, batch, seed=2, steps=12)
    assert torch.equal(v1, v2) and torch.equal(k1, k2)
    assert not torch.allclose(v1, v3)
    assert torch.all(v1[batch.site_free == 0] == 0)
    fixed = batch.k_free == 0
    assert torch.allclose(k1[fixed], batch.k_fixed[fixed])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_matches_eager(crystals):
    refiner = load_refiner(default_refiner_path(), "cuda")
    batch = collate(crystals, refiner.vocab).to("cuda")
    for corrector_steps in (0, 1):
        eager = _chain(refiner, batch, seed=3, corrector_steps=corrector_steps, cuda_graph=False)
        graphed = _chain(refiner, batch, seed=3, corrector_steps=corrector_steps, cuda_graph=True)
        for a, b in zip(eager, graphed):
            assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_network_matches_eager(crystals):
    refiner = load_refiner(default_refiner_path(), "cuda")
    batch = collate(crystals, refiner.vocab).to("cuda")
    eager = _chain(refiner, batch, seed=4, cuda_graph=False)
    compiled = _chain(refiner, batch, seed=4, cuda_graph=True, compile=True)
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-3), (a - b).abs().max()


def _cartesian_error(batch, site_v):
    """rms over atoms of the Cartesian distance to the batch's own crystal, mean shift removed (Å), per crystal."""
    from xtallm.refiner.crystal import expand, minimum_image

    d = minimum_image(batch, expand(batch, site_v) - expand(batch, batch.site_v)) @ lattice_matrix(batch)
    m = batch.atom_mask[..., None].float()
    d = d - (d * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
    return torch.sqrt(((d**2).sum(-1) * m[..., 0]).sum(1) / m[..., 0].sum(1))


def test_denoising_from_the_input_brings_coarse_crystals_closer_and_is_deterministic(crystals):
    """start=input (ChainOptions.noise_input False + probability flow): coarse crystals (0.1 Å Gaussian in each free
    direction, 1% lattice) taken as they are at tau 0.45 come back closer to the truth, bulk and monolayers alike
    (measured: 0.095 -> 0.047 Å bulk, 0.113 -> 0.085 Å monolayers on the held-out splits); no seed changes the result."""
    from xtallm.refiner.crystal import site_noise, wrap_sites
    from xtallm.refiner.lattice import project_k

    refiner = load_refiner(default_refiner_path(), "cpu")
    truth = collate([c for c in crystals if c.n_atoms <= 16], refiner.vocab)
    g = torch.Generator().manual_seed(0)
    v = wrap_sites(truth, truth.site_v + site_noise(truth, lattice_matrix(truth), g) * 0.1) * truth.site_free
    k = project_k(truth.k + torch.randn(truth.k.shape, generator=g) * 0.01 * truth.k_free, truth.k_free, truth.k_fixed)
    coarse = truth.replace(site_v=v, k=k)
    options = ChainOptions(steps=10, ode=True, noise_input=False)  # 4 steps from 0.45
    v1, k1 = refine(refiner.model, coarse, refiner.schedule, 0.45, options, torch.Generator().manual_seed(1))
    v2, k2 = refine(refiner.model, coarse, refiner.schedule, 0.45, options, torch.Generator().manual_seed(2))
    assert torch.equal(v1, v2) and torch.equal(k1, k2)
    before, after = _cartesian_error(truth, v), _cartesian_error(truth, v1)
    for layer in (False, True):
        kind = (truth.periodic.sum(-1) < 3) == layer
        assert int(kind.sum()) >= 5
        assert after[kind].mean() < 0.9 * before[kind].mean(), (layer, before[kind].mean(), after[kind].mean())
    assert torch.all(v1[truth.site_free == 0] == 0)
