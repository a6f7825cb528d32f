"""Orbit expansion and anchor search are exact for every Wyckoff position of every group."""

import numpy as np
import pytest

from xtallm.tokenization.symmetry import N_GROUPS, find_anchor, get_group, orbits_match, wrap_periodic


@pytest.mark.parametrize("dim", [3, 2])
def test_every_wyckoff_position_regenerates_its_orbit(dim):
    rng = np.random.default_rng(dim)
    n_positions = 0
    for number in range(1, N_GROUPS[dim] + 1):
        table = get_group(dim, number)
        lattice = np.diag([5.0, 6.0, 7.0]) if table.family not in ("hexagonal", "trigonal") else np.array(
            [[5.0, 0, 0], [-2.5, 2.5 * np.sqrt(3), 0], [0, 0, 7.0]]
        )
        for wp in table.wyckoffs:
            params = rng.uniform(0.05, 0.45, size=len(wp.free))
            orbit = wrap_periodic(wp.orbit(wp.anchor(params)), dim)
            # every image is distinct: the multiplicity is real
            delta = orbit[:, None] - orbit[None]
            delta[..., :dim] -= np.round(delta[..., :dim])
            dist = np.linalg.norm(delta @ lattice, axis=-1) + np.eye(len(orbit)) * 1e9
            assert dist.min() > 1e-6, (dim, number, wp.label)
            shuffled = orbit[rng.permutation(len(orbit))]
            found = find_anchor(wp, shuffled, lattice, dim, tol=1e-4)
            assert found is not None, (dim, number, wp.label)
            rebuilt = wrap_periodic(wp.orbit(wp.anchor(found)), dim)
            assert orbits_match(rebuilt, orbit, lattice, dim, tol=1e-6), (dim, number, wp.label)
            n_positions += 1
    assert n_positions == {3: 1731, 2: 477}[dim]


def test_group_tables_know_their_families():
    assert get_group(3, 225).lattice_params == ("a",)
    assert get_group(3, 14).lattice_params == ("a", "b", "c", "beta")
    assert get_group(3, 166).lattice_params == ("a", "c")
    assert get_group(2, 1).lattice_params == ("a", "b", "gamma")
    assert get_group(2, 46).lattice_params == ("a", "b")
    assert get_group(2, 78).lattice_params == ("a",)
    assert get_group(2, 78).flips_z and not get_group(2, 69).flips_z  # p-6m2 vs p6mm
    with pytest.raises(ValueError, match="layer group number must be in 1..80"):
        get_group(2, 81)
