"""The refiner's network and geometry: invariance, equivariance, exact symmetry, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xtallm.refiner.crystal import collate, expand, lattice_matrix, pull_back, push_forward, site_noise
from xtallm.refiner.data import site_vocabulary
from xtallm.refiner.diffusion import NoiseSchedule, training_loss
from xtallm.refiner.lattice import FREE, family_mask, gram_from_k, gram_from_parameters, k_from_gram, parameters_from_gram
from xtallm.refiner.model import Denoiser, DenoiserConfig


@pytest.fixture(scope="module")
def batch(example_arrays):
    arrays = example_arrays[:6] + [a for a in example_arrays if a.dim == 2][:4]
    return collate(arrays, site_vocabulary(example_arrays))


@pytest.fixture(scope="module")
def model(example_arrays):
    torch.manual_seed(0)
    return Denoiser(DenoiserConfig(hidden=32, layers=2, num_freqs=4, num_rbf=8, site_vocab_size=len(site_vocabulary(example_arrays)))).eval()


PARAMETERS = {
    "triclinic": (3.1, 4.2, 5.3, 80.0, 95.0, 105.0),
    "monoclinic": (3.1, 4.2, 5.3, 90.0, 101.0, 90.0),
    "orthorhombic": (3.1, 4.2, 5.3, 90.0, 90.0, 90.0),
    "tetragonal": (3.1, 3.1, 5.3, 90.0, 90.0, 90.0),
    "trigonal": (3.1, 3.1, 5.3, 90.0, 90.0, 120.0),
    "hexagonal": (3.1, 3.1, 5.3, 90.0, 90.0, 120.0),
    "cubic": (4.0, 4.0, 4.0, 90.0, 90.0, 90.0),
    "oblique": (3.1, 4.2, 1.0, 90.0, 90.0, 104.0),
    "rectangular": (3.1, 4.2, 1.0, 90.0, 90.0, 90.0),
    "square": (3.1, 3.1, 1.0, 90.0, 90.0, 90.0),
}


@pytest.mark.parametrize("dim,family", sorted(FREE))
def test_lattice_family_lives_in_its_k_subspace(dim, family):
    params = PARAMETERS[family] if (dim, family) != (2, "hexagonal") else (3.1, 3.1, 1.0, 90.0, 90.0, 120.0)
    k = k_from_gram(gram_from_parameters(*params), dim)
    free, fixed = family_mask(dim, family)
    assert np.abs((k - fixed) * (1 - free)).max() < 1e-6  # fixed components are what the family says
    # any move of the free components stays in the family; the parameters come back
    moved = torch.tensor(k + free * 0.05)[None].double()
    out = parameters_from_gram(gram_from_k(moved, torch.tensor([dim]))[0].numpy())
    back = parameters_from_gram(gram_from_k(torch.tensor(k)[None].double(), torch.tensor([dim]))[0].numpy())
    np.testing.assert_allclose(back, params, atol=1e-4)
    if family in ("hexagonal", "trigonal"):
        assert out[0] == pytest.approx(out[1]) and out[5] == pytest.approx(120.0)
    if family in ("cubic",):
        assert out[0] == pytest.approx(out[2]) and out[3:] == pytest.approx((90.0, 90.0, 90.0))


def _outputs(model, batch, frac, lattice):
    t = torch.full((batch.size,), 0.3)
    with torch.no_grad():
        coeff, k_out = model(batch, frac, batch.k, lattice, t)
    cart = torch.einsum("bni,bij->bnj", coeff, lattice / torch.linalg.norm(lattice, dim=-1, keepdim=True))
    return cart, k_out


def test_outputs_rotate_with_the_cartesian_frame(model, batch):
    lattice = lattice_matrix(batch)
    frac = expand(batch, batch.site_v)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    cart, k_out = _outputs(model, batch, frac, lattice)
    cart_r, k_out_r = _outputs(model, batch, frac, lattice @ q)  # same crystal, rotated frame
    torch.testing.assert_close(cart_r, cart @ q, atol=1e-5, rtol=1e-4)  # vectors rotate
    torch.testing.assert_close(k_out_r, k_out, atol=1e-5, rtol=1e-4)  # the lattice output is invariant


def test_outputs_ignore_translation_and_periodic_images(model, batch):
    lattice = lattice_matrix(batch)
    frac = expand(batch, batch.site_v)
    cart, k_out = _outputs(model, batch, frac, lattice)
    shift = torch.tensor([0.37, 0.81, 0.23])  # for layers the z shift is a rigid move in Å: also invariant
    images = torch.randint(-2, 3, frac.shape, generator=torch.Generator().manual_seed(2)) * batch.periodic[:, None, :]
    cart_t, k_out_t = _outputs(model, batch, frac + shift + images, lattice)
    torch.testing.assert_close(cart_t, cart, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(k_out_t, k_out, atol=1e-4, rtol=1e-3)


def test_outputs_permute_with_the_atoms(model, batch):
    lattice = lattice_matrix(batch)
    frac = expand(batch, batch.site_v)
    cart, k_out = _outputs(model, batch, frac, lattice)
    n = int(batch.atom_mask[0].sum())
    perm = torch.arange(batch.atom_mask.shape[1])
    perm[:n] = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    permuted = batch.replace(**{name: getattr(batch, name)[:, perm] for name in ("atom_site", "atom_rot", "atom_trans", "atom_z", "atom_mask")})
    cart_p, k_out_p = _outputs(model, permuted, frac[:, perm], lattice)
    torch.testing.assert_close(cart_p[0], cart[0, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(k_out_p, k_out, atol=1e-5, rtol=1e-4)


def test_orbit_projection_is_exact(batch):
    """Pull back then push forward is a projection, and moving free parameters keeps every orbit an orbit."""
    lattice = lattice_matrix(batch)
    e = torch.randn(batch.atom_z.shape + (3,), generator=torch.Generator().manual_seed(4))
    once = push_forward(batch, lattice, pull_back(batch, lattice, e))
    twice = push_forward(batch, lattice, pull_back(batch, lattice, once))
    torch.testing.assert_close(twice, once, atol=1e-4, rtol=1e-4)
    # atoms regenerated from moved anchors are the group's images of the moved anchor
    v = batch.site_v + site_noise(batch, lattice, torch.Generator().manual_seed(5)) * 0.1
    x = expand(batch, v)
    anchor = torch.einsum("bsij,bsj->bsi", batch.site_a0, v) + batch.site_t0
    p = torch.gather(anchor, 1, batch.atom_site[..., None].expand(-1, -1, 3))
    image = torch.einsum("bnij,bnj->bni", batch.atom_rot, p) + batch.atom_trans
    diff = (x - image) * batch.atom_mask[..., None]
    assert torch.allclose(diff - torch.round(diff) * batch.periodic[:, None, :], torch.zeros_like(diff), atol=1e-5)


def test_noise_is_isotropic_in_cartesian_space_on_hexagonal_cells(example_arrays):
    """On a 120 degree cell, a general position's noise has the same spread along x and y (Å)."""
    hexagonal = [a for a in example_arrays if a.dim == 3 and 168 <= a.group <= 194]
    assert hexagonal, "the examples have hexagonal crystals"
    batch = collate(hexagonal[:1] * 4000, site_vocabulary(example_arrays))
    batch = batch.replace(site_free=torch.ones_like(batch.site_free) * batch.site_mask[..., None], site_a0=torch.eye(3).expand_as(batch.site_a0).contiguous())
    lattice = lattice_matrix(batch)
    dv = site_noise(batch, lattice, torch.Generator().manual_seed(6))[:, 0]
    cart = dv @ lattice[0]
    std = cart.std(0)
    assert std.min() / std.max() > 0.93, std


def test_a_tiny_model_learns(batch, example_arrays):
    """Training on fixed noise draws: the loss must fall well below where it started."""
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(hidden=32, layers=2, num_freqs=4, num_rbf=8, site_vocab_size=len(site_vocabulary(example_arrays))))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.linspace(0.2, 0.6, batch.size)

    def loss() -> torch.Tensor:
        torch.manual_seed(123)  # the same noise every time: a fixed regression problem
        losses = training_loss(model, batch, NoiseSchedule(), t)
        return losses["coord"] + losses["lattice"]

    start = loss().item()
    for _ in range(80):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.5 * start


def test_edge_messages_in_row_chunks_equal_all_pairs_at_once(model, batch, monkeypatch):
    """The CPU runs the edge MLP a few rows of atoms at a time (refiner/model.py: CPU_EDGE_PAIRS); outputs and
    gradients must be those of all pairs at once, whatever the chunk."""
    import xtallm.refiner.model as network

    frac, lattice, t = expand(batch, batch.site_v), lattice_matrix(batch), torch.full((batch.size,), 0.3)

    def run(pairs: int):
        monkeypatch.setattr(network, "CPU_EDGE_PAIRS", pairs)
        model.zero_grad()
        coeff, k_out = model(batch, frac, batch.k, lattice, t)
        (coeff.square().sum() + k_out.square().sum()).backward()
        return coeff.detach(), k_out.detach(), model.blocks[0].edge_out.weight.grad.clone()

    whole = run(10**9)
    assert batch.atom_mask.shape[1] > 2  # so that one pair per chunk below means several chunks
    for pairs in (1, batch.size * 3):
        for a, b in zip(run(pairs), whole):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model.zero_grad()
