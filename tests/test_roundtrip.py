"""decode(encode(s)) on real crystals: bulk (MP-20) and monolayers (2DMatPedia, MC2D)."""

from __future__ import annotations

import pandas as pd
import pytest
from pymatgen.core import Structure

from xtallm import tokenization
from xtallm.tokenization.check import roundtrip, roundtrip_many, summarize
from xtallm.tokenization.record import CrystalRecord, detect_group, layer_cell

from .conftest import FIXTURES, read_shared


def _rates(cifs, dim):
    summary = summarize(roundtrip_many(cifs, dim, num_proc=2))
    return summary["encoded_rate"], summary["match_rate"], summary["group_kept_rate"]


@pytest.mark.slow
def test_mp20_val_roundtrip():
    df = read_shared("mp20/val.csv.xz", n=2000)
    encoded, matched, group_kept = _rates(df.cif.tolist(), 3)
    assert encoded >= 0.999
    assert matched >= 0.995, f"StructureMatcher round trip {matched:.4f}"
    assert group_kept == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name,n", [("twod/mc2d_258.csv.xz", None), ("twod/2dmatpedia_5914.csv.xz", 1200)])
def test_monolayer_roundtrip(name, n):
    df = read_shared(name, n=n)
    encoded, matched, group_kept = _rates(df.cif_layer_std.tolist(), 2)
    assert encoded >= 0.99
    assert matched >= 0.99, f"StructureMatcher round trip {matched:.4f}"
    assert group_kept == 1.0


def test_known_layer_groups():
    known = pd.read_csv(FIXTURES / "known_monolayers.csv")
    for _, row in known.iterrows():
        s = Structure.from_str(row.cif_layer_std, fmt="cif")
        record = CrystalRecord.from_structure(s, dim=2)
        assert record.group == row.layer_group, row["name"]
        text = tokenization.encode(s, dim=2)
        rebuilt = tokenization.decode(text)
        assert detect_group(rebuilt, 2, symprec=0.01) == row.layer_group, row["name"]
        assert tuple(rebuilt.lattice.angles[:2]) == pytest.approx((90, 90)), "c must stay perpendicular"
        assert rebuilt.lattice.c == pytest.approx(15.0 + _thickness(rebuilt), abs=1e-6)


def _thickness(s):
    z = s.cart_coords[:, 2]
    return z.max() - z.min()


def test_layer_vacuum_is_an_option():
    known = pd.read_csv(FIXTURES / "known_monolayers.csv")
    s = Structure.from_str(known.cif_layer_std[0], fmt="cif")
    text = tokenization.encode(s, dim=2)
    for vacuum in (10.0, 25.0):
        rebuilt = tokenization.decode(text, vacuum=vacuum)
        assert rebuilt.lattice.c == pytest.approx(vacuum + _thickness(rebuilt))
        assert 0.2 < rebuilt.frac_coords[:, 2].min() and rebuilt.frac_coords[:, 2].max() < 0.8


def test_layer_in_a_tilted_and_wrapped_cell():
    """The same layer with c tilted and the slab wrapped across the boundary gives the same record."""
    known = pd.read_csv(FIXTURES / "known_monolayers.csv")
    s = layer_cell(Structure.from_str(known.cif_layer_std[0], fmt="cif"))  # 2H-MoS2, slab contiguous
    m = s.lattice.matrix.copy()
    tilted = Structure(m + [[0, 0, 0], [0, 0, 0], [1.5, 0.8, 0]], s.species, s.cart_coords, coords_are_cartesian=True)
    wrapped = Structure(tilted.lattice, tilted.species, (tilted.frac_coords + [0, 0, 0.5]) % 1.0)
    a = tokenization.encode(s, dim=2)
    b = tokenization.encode(wrapped, dim=2)
    assert a == b


def test_roundtrip_reports_what_failed():
    result = roundtrip("not a cif")
    assert not result.encoded and "not a CIF" in result.error
    known = pd.read_csv(FIXTURES / "known_monolayers.csv")
    ok = roundtrip(known.cif_layer_std[3], dim=2)
    assert ok.encoded and ok.matched and ok.group_kept and ok.group == 80
