"""The refiner repairs clashes without leaving the group: the repulsion term, per-crystal starting
levels, and the per-row verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xtallm.refiner.checkpoint import load_refiner
from xtallm.refiner.clash import closest_pair, relieve, repulsion_table, worst_deficit
from xtallm.refiner.crystal import collate, record_to_arrays
from xtallm.refiner.pretrained import default_refiner_path
from xtallm.refiner.refine import RefineOptions, refine_records
from xtallm.tokenization.record import CrystalRecord, Site, detect_group
from xtallm.tokenization.symmetry import get_group

def _clashing_record(dim: int, number: int, rng: np.random.Generator) -> CrystalRecord:
    """Two orbits on the smallest Wyckoff position with a free parameter, 0.1-0.3 Å apart (a planted clash)."""
    table = get_group(dim, number)
    position = min((wp for wp in table.wyckoffs if wp.free), key=lambda wp: (wp.multiplicity, -len(wp.free)))
    scale = max(5.0, 2.5 * position.multiplicity ** (1 / dim))
    values = {"a": scale * rng.uniform(1.0, 1.2), "b": scale * rng.uniform(1.0, 1.2), "c": scale * rng.uniform(1.0, 1.2),
              "alpha": rng.uniform(80, 100), "beta": rng.uniform(95, 110), "gamma": rng.uniform(80, 100)}
    lattice = {name: float(values[name]) for name in table.lattice_params}
    p = rng.uniform(0.1, 0.9, size=3)
    step = rng.normal(size=3) / scale
    if dim == 2:
        p[2], step[2] = rng.uniform(-1.5, 1.5), step[2] * scale  # z in Å
    free = list(position.free)
    q = p.copy()
    q[free] += step[free] * rng.uniform(0.1, 0.3) / np.linalg.norm(step[free] * ([scale] * 3 if dim == 3 else [scale, scale, 1.0])[0])
    sites = [Site(el, position.letter, position.multiplicity, tuple(float(x) for x in v[free])) for el, v in zip(("Si", "O"), (p, q))]
    return CrystalRecord(dim, number, lattice, sites)


def _symmetric_under_the_group(record: CrystalRecord, frac: np.ndarray, species: list[int]) -> bool:
    """Every operation of the group maps the atoms onto atoms of the same element (periodic axes wrapped)."""
    ops = record.table.wyckoffs[0].ops
    for op in ops:
        image = frac @ op[:, :3].T + op[:, 3]
        delta = image[:, None, :] - frac[None, :, :]
        delta[..., : record.dim] -= np.round(delta[..., : record.dim])
        close = np.abs(delta).max(-1) < 1e-4
        if not all(close[i, np.asarray(species) == species[i]].any() for i in range(len(frac))):
            return False
    return True


@pytest.mark.parametrize("dim", [3, 2])
def test_repulsion_keeps_every_group_exact_and_opens_the_clash(dim):
    from xtallm.refiner.crystal import expand

    rng = np.random.default_rng(dim)
    groups = range(1, 231) if dim == 3 else range(1, 81)
    records = sorted((_clashing_record(dim, n, rng) for n in groups), key=lambda r: r.n_atoms)
    table = repulsion_table()
    repaired, exact = 0, 0
    for start in range(0, len(records), 16):
        chunk = records[start : start + 16]
        batch = collate([record_to_arrays(r) for r in chunk], {})
        before = worst_deficit(batch, table)
        assert torch.all(before > 0.3), "every planted clash is a real one"
        v, k = relieve(batch, batch.site_v, batch.k, table, steps=30)
        assert torch.all(v[batch.site_free == 0] == 0), "only free parameters move"
        fixed = batch.k_free == 0
        assert torch.allclose(k[fixed], batch.k_fixed[fixed]), "the lattice stays in its family"
        after = worst_deficit(batch, table, v, k)
        repaired += int((after < 0.02).sum())
        frac = expand(batch, v).double().numpy()
        for j, record in enumerate(chunk):
            n = record.n_atoms
            exact += _symmetric_under_the_group(record, frac[j, :n], batch.atom_z[j, :n].tolist())
    assert exact == len(records), f"{len(records) - exact} groups not kept exactly"
    assert repaired >= 0.95 * len(records), f"only {repaired} of {len(records)} planted clashes opened"


def test_planted_overlap_in_a_real_crystal_is_repaired_and_the_verdict_says_so(example_records):
    from xtallm.pipelines.evaluation.metrics import validity

    rng = np.random.default_rng(0)
    planted = []
    for record in example_records:
        free = [i for i, s in enumerate(record.sites) if len(s.params) == 3]
        if len(free) < 2 or record.dim != 3:
            continue
        a, b = free[:2]
        sites = list(record.sites)
        shifted = tuple(p + rng.normal(scale=0.01) for p in sites[a].params)  # orbit b lands on orbit a
        sites[b] = Site(sites[b].element, sites[a].wyckoff, sites[a].multiplicity, shifted)
        planted.append(CrystalRecord(record.dim, record.group, record.lattice, sites))
        if len(planted) == 6:
            break
    assert len(planted) == 6
    assert all(not validity(r.to_structure(strict=False))[0] for r in planted), "the planted crystals start invalid"
    refiner = load_refiner(default_refiner_path(), "cpu")
    results = refine_records(refiner, planted, RefineOptions(tau=0.2, steps=20, polish_steps=40), progress=False)
    for (out, note, level), record in zip(results, planted):
        assert level > 0.2, "a clashing crystal starts above tau"
        assert note is None
        structure = out.to_structure(strict=False)
        ratio, pair = closest_pair(structure)
        assert ratio >= 1.0, f"sg {record.group}: still a clash ({pair})"
        assert detect_group(structure, 3, symprec=0.01) == record.group
        assert [(s.element, s.wyckoff) for s in out.sites] == [(s.element, s.wyckoff) for s in record.sites]


def test_start_levels_follow_the_deficit():
    """A clashing crystal starts at tau rising to tau_max with its deficit, noised (SDEdit); a plausible one at
    input_level taken as it is (start=input, the default) or at tau noised (start=noise)."""
    options = RefineOptions(tau=0.2, tau_max=0.5)
    levels = options.start_levels(torch.tensor([0.0, 0.1, 0.25, 0.9]))
    assert torch.allclose(levels, torch.tensor([0.45, 0.26, 0.35, 0.5], dtype=torch.float64))
    noise = RefineOptions(start="noise", tau=0.2, tau_max=0.5)
    assert torch.allclose(noise.start_levels(torch.tensor([0.0, 0.1])), torch.tensor([0.2, 0.26], dtype=torch.float64))
    assert torch.allclose(RefineOptions(tau=0.3, tau_max=0.3, input_level=0.3).start_levels(torch.tensor([0.0, 0.8])),
                          torch.tensor([0.3, 0.3], dtype=torch.float64))
    plausible, clashing = options.chain(torch.device("cpu")), options.chain(torch.device("cpu"), clashing=True)
    assert (plausible.ode, plausible.noise_input) == (True, False) and (clashing.ode, clashing.noise_input) == (False, True)
    assert (noise.chain(torch.device("cpu")).ode, noise.chain(torch.device("cpu")).noise_input) == (False, True)
    with pytest.raises(ValueError, match="tau_max"):
        RefineOptions(tau=0.4, tau_max=0.3).check()
    with pytest.raises(ValueError, match="start must be one of noise, input"):
        RefineOptions(start="zero").check()
    with pytest.raises(ValueError, match="input_level must be in"):
        RefineOptions(input_level=0.0).check()
