"""The text formats: registry, headers, precision, xyz (crystal-text-llm layout) and cif."""

import numpy as np
import pandas as pd
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from xtallm import tokenization
from xtallm.tokenization.augment import augmented_text, translate_and_permute
from xtallm.tokenization.formats import FORMATS, split_header
from xtallm.tokenization.record import CrystalRecord
from xtallm.pipelines.demo import example_path

MATCHER = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)


@pytest.fixture(scope="module")
def bulk():
    df = pd.read_csv(example_path("bulk"))
    return [Structure.from_str(c, fmt="cif") for c in df.cif[:20]]


def test_registry():
    assert set(FORMATS) >= {"wyckoff", "xyz", "cif"}
    with pytest.raises(ValueError, match="unknown text format 'poscar'"):
        tokenization.get_format("poscar")


@pytest.mark.parametrize("fmt", ["wyckoff", "xyz", "cif"])
def test_every_format_round_trips_with_a_header(bulk, fmt):
    conditions = {"band_gap": 1.234, "elements": "O,Si"}
    for s in bulk:
        text = tokenization.encode(s, fmt=fmt, conditions=conditions)
        header, body, n = split_header(text)
        assert header == {"elements": "O,Si", "band_gap": 1.23} and n == 1  # header keeps 2 decimals
        assert text.startswith("elements=O,Si band_gap=1.23\n")
        assert MATCHER.fit(s, tokenization.decode(text, fmt=fmt))


def test_xyz_is_crystal_text_llm_layout():
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert tokenization.encode(s, fmt="xyz") == "5.0 5.0 5.0\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"


def test_precision_is_configurable(bulk):
    s = bulk[0]  # monoclinic: lengths and an angle are free
    text = tokenization.encode(s, coord_decimals=5, length_decimals=4, angle_decimals=1)
    lines = text.split("\n")
    lattice = dict(zip(lines[1].split()[::2], lines[1].split()[1::2]))
    assert {k: len(v.split(".")[1]) for k, v in lattice.items()} == {"a": 4, "b": 4, "c": 4, "beta": 1}
    coords = [t for line in lines[2:] for t in line.split()[2:]]
    assert coords and all(len(t.split(".")[1]) == 5 for t in coords)
    xyz = tokenization.encode(s, fmt="xyz", coord_decimals=4, length_decimals=3)
    assert xyz.split("\n")[0].split()[0].split(".")[1] == "688"
    assert len(xyz.split("\n")[3].split()[0].split(".")[1]) == 4


def test_wyckoff_text_is_exactly_symmetric_whatever_the_numbers():
    """A model's numbers can be off, but the rebuilt crystal always has the stated group."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        z1, x, y, z2 = rng.uniform(0.05, 0.45, size=4)
        s = tokenization.decode(f"sg 166\na 4.9 c 13.8\nBi 6c {z1:.3f}\nSe 3a\nTe 18h {x:.2f} {z2:.2f}")
        assert tokenization.detect_group(s, 3, 0.01) == 166
        assert len(s) == 6 + 3 + 18
        layer = tokenization.decode(f"lg 72\na 3.2\nMo 1a\nS 2c {z1 * 5:.2f}", vacuum=12)
        assert tokenization.detect_group(layer, 2, 0.01) == 72


def test_augmentations_keep_the_crystal(bulk):
    rng = np.random.default_rng(1)
    fmt = tokenization.get_format("wyckoff")
    for s in bulk[:5]:
        record = fmt.record(s)
        texts = {augmented_text(record, fmt, rng) for _ in range(8)}
        for t in texts:
            assert MATCHER.fit(s, fmt.decode(t))
        if len(record.sites) > 2:
            assert len(texts) > 1
        moved = translate_and_permute(s, rng)
        assert MATCHER.fit(s, moved) and not np.allclose(moved.frac_coords, s.frac_coords)
        xyz = augmented_text(record, tokenization.get_format("xyz"), rng)
        assert MATCHER.fit(s, tokenization.decode(xyz, fmt="xyz"))


def test_record_json_round_trip(bulk):
    record = tokenization.get_format("wyckoff").record(bulk[3])
    again = CrystalRecord.from_dict(record.to_dict())
    assert again == record
