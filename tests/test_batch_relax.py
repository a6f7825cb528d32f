"""Batched FIRE (many crystals per SevenNet call) finds what ASE's FIRE + FrechetCellFilter finds, one by one."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xtallm.pipelines.evaluation import stability as S
from xtallm.pipelines.evaluation.batch_relax import relax_batched

from .conftest import read_shared


@pytest.fixture(scope="module")
def strained():
    rng = np.random.default_rng(0)
    out = []
    for cif in read_shared("mp20/val.csv.xz", n=2, seed=21).cif:
        s = Structure.from_str(cif, fmt="cif")
        if len(s) > 12:
            s = s.get_primitive_structure()
        out.append(Structure(s.lattice.matrix * 1.03, s.species, s.frac_coords + 0.01 * rng.standard_normal((len(s), 3))))
    return out


def test_batched_matches_ase_one_by_one(strained):
    items = [(i, s, 3) for i, s in enumerate(strained)]
    batched = dict(relax_batched(items, steps=40, device="cpu"))
    calc = S.load_calculator("sevennet", "cpu")
    for i, s in enumerate(strained):
        one = S.relax(s, calc, steps=40)
        assert batched[i].error is None and one.error is None
        assert abs(batched[i].energy_per_atom - one.energy_per_atom) < 2e-3, i  # eV/atom
        assert abs(batched[i].structure.volume / one.structure.volume - 1) < 0.01
        assert batched[i].energy_per_atom < S.relax(s, calc, steps=0).energy_per_atom  # it went downhill


def test_single_points_bad_crystals_and_monolayers():
    calc = S.load_calculator("sevennet", "cpu")
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    crushed = Structure(Lattice.cubic(3.0), ["Na", "Na"], [[0, 0, 0], [0.01, 0, 0]])  # atoms on top of each other
    layer = Structure(Lattice.from_parameters(3.19, 3.19, 20.0, 90, 90, 120), ["Mo", "S", "S"],
                      [[0, 0, 0.5], [1 / 3, 2 / 3, 0.578], [1 / 3, 2 / 3, 0.422]])
    results = dict(relax_batched([("nacl", nacl, 3), ("crushed", crushed, 3), ("layer", layer, 2)], steps=0, device="cpu"))
    assert abs(results["nacl"].energy_per_atom - S.relax(nacl, calc, steps=0).energy_per_atom) < 1e-4
    assert results["crushed"].energy is None and "exploded" in results["crushed"].error
    relaxed = dict(relax_batched([("layer", layer, 2)], steps=30, device="cpu"))["layer"]
    assert relaxed.error is None and abs(relaxed.structure.lattice.c - 20.0) < 1e-4  # the vacuum stays
