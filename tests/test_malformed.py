"""Bad input gets a clear error naming the input and the problem; nothing crashes."""

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from xtallm import tokenization
from xtallm.tokenization import EncodeError, ParseError
from xtallm.tokenization.data import PrepareOptions, prepare_dataset
from xtallm.tokenization.formats import parse_cif
from xtallm.pipelines.demo import example_path

GOOD_CIF = pd.read_csv(example_path("bulk")).cif[0]

def _partial(cif: str) -> str:
    """The same CIF with the first atom half occupied."""
    lines = cif.split("\n")
    i = next(k for k, line in enumerate(lines) if line.strip().startswith("Cu "))
    lines[i] = lines[i].rstrip()[:-1] + "0.5"
    return "\n".join(lines)


WYCKOFF_CORPUS = [
    ("", "empty text"),
    ("hello world", "expected 'sg N' or 'lg N'"),
    ("sg 231\na 4.0\nNa 1a", "must be in 1..230"),
    ("lg 81\na 4.0\nNa 1a", "must be in 1..80"),
    ("sg 225", "truncated: no lattice line"),
    ("sg 225\na 5.6", "truncated: no sites"),
    ("sg 225\na 5.6 c 3.0\nNa 4a", "takes lattice parameters a, got a c"),
    ("sg 225\nb 5.6\nNa 4a", "takes lattice parameters a"),
    ("sg 225\na -5.6\nNa 4a", "outside 0.5..500"),
    ("sg 12\na 5 b 6 c 7 beta 190\nNa 4i 0.1 0.2", "outside 10..170"),
    ("sg 225\na 5.6\nXx 4a", "unknown element 'Xx'"),
    ("sg 225\na 5.6\nNa 4z", "Wyckoff letter 'z' does not exist in sg 225"),
    ("sg 225\na 5.6\nNa 8a", "has multiplicity 4, text says 8"),
    ("sg 225\na 5.6\nNa 24e", "expected 1 free coordinate(s) (x), got 0"),
    ("sg 225\na 5.6\nNa 24e 0.1 0.2", "expected 1 free coordinate(s) (x), got 2"),
    ("sg 225\na 5.6\nNa 24e 0.", "is not a number"),
    ("sg 225\na 5.6\nNa 24e nan", "is not a number"),
    ("sg 225\na 5.6\nNa 4a\nCl", "site line must be"),
    ("sg 225\na 5.6\nNa four", "is not a Wyckoff label"),
    ("sg 225\na 5.6\nO 24e 0.000", "atoms coincide"),  # strict by default
    ("sg 2x5\na 5.6\nNa 4a", "is not an integer"),
    ("lg 1\na 3.158 b 5.458 gamma 107.21\nGe 1a 0.872 0.295 0.755\nN 1a 0.675 0.188 -129198", "z=-129198 Å is more than 50 Å"),  # a free sample that made c = 129 km
    ("speed=3\nsg 225\na 5.6\nNa 4a", "unknown condition 'speed'"),
    ("band_gap=-1\nsg 225\na 5.6\nNa 4a", "band_gap=-1 is out of range"),
    ("sg=225 lg=3\nsg 225\na 5.6\nNa 4a", "sg and lg together"),
]


@pytest.mark.parametrize("text,message", WYCKOFF_CORPUS)
def test_wyckoff_parse_errors(text, message):
    with pytest.raises(ParseError) as info:
        tokenization.decode(text)
    assert message in str(info.value)


def test_errors_point_at_the_line():
    with pytest.raises(ParseError) as info:
        tokenization.decode("band_gap=1.0\nsg 225\na 5.6\nNa 4a\nCl 4q")
    assert info.value.line == 5 and str(info.value).startswith("line 5: site 2")


XYZ_CORPUS = [
    ("5.0 5.0\n90 90 90\nNa\n0 0 0", "lattice lengths: expected 3 numbers"),
    ("5.0 5.0 5.0\n90 90 90\nNa", "truncated"),
    ("5.0 5.0 5.0\n90 90 90\nNa\n0 0 0\nCl", "element line has no coordinate line"),
    ("5.0 5.0 5.0\n90 90 90\nQq\n0 0 0", "unknown element 'Qq'"),
    ("5.0 5.0 5.0\n90 90 200\nNa\n0 0 0", "angles must be in (0, 180)"),
    ("5.0 5.0 5.0\n90 90 90\nNa\n0 nan 0", "is not a number"),
]


@pytest.mark.parametrize("text,message", XYZ_CORPUS)
def test_xyz_parse_errors(text, message):
    with pytest.raises(ParseError) as info:
        tokenization.decode(text, fmt="xyz")
    assert message in str(info.value)


def test_cif_corpus():
    truncated = GOOD_CIF[: len(GOOD_CIF) // 2]
    with pytest.raises(ParseError, match="CIF"):
        parse_cif(truncated)
    with pytest.raises(ParseError, match="not a CIF"):
        parse_cif("garbage")
    lines = GOOD_CIF.split("\n")
    i = next(k for k, line in enumerate(lines) if line.strip().startswith("Cu "))
    fields = lines[i].split()
    fields[3] = "nan"
    lines[i] = " ".join(fields)
    with pytest.raises(ParseError, match="NaN"):
        parse_cif("\n".join(lines))


def test_structures_that_cannot_be_encoded():
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(EncodeError, match="partial occupancy"):
        tokenization.encode(disordered)
    nan = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nan.replace(1, "Cl", coords=[np.nan, 0.5, 0.5])
    with pytest.raises(EncodeError, match="non-finite"):
        tokenization.encode(nan)
    big = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]) * (3, 3, 3)
    with pytest.raises(EncodeError, match="more than max_atoms=20"):
        tokenization.CrystalRecord.from_structure(big, max_atoms=20)
    with pytest.raises(ValueError, match="must be 2 or 3"):
        tokenization.CrystalRecord.from_structure(big, dim=4)


def test_a_batch_never_dies_for_one_bad_row(tmp_path):
    bad_rows = [
        {"material_id": "ok-1", "cif": GOOD_CIF, "band_gap": 1.0},
        {"material_id": "truncated", "cif": GOOD_CIF[:300], "band_gap": 1.0},
        {"material_id": "garbage", "cif": "not a cif at all", "band_gap": 1.0},
        {"material_id": "unknown-element", "cif": GOOD_CIF.replace(" Sm ", " Xx ").replace("Sm", "Xx"), "band_gap": 1.0},
        {"material_id": "partial", "cif": _partial(GOOD_CIF), "band_gap": 1.0},
        {"material_id": "bad-band-gap", "cif": GOOD_CIF, "band_gap": -4.0},
        {"material_id": "ok-2", "cif": GOOD_CIF, "band_gap": 2.0},
    ]
    path = tmp_path / "bad.csv"
    pd.DataFrame(bad_rows).to_csv(path, index=False)
    prepared = prepare_dataset(path, PrepareOptions(), num_proc=1)
    assert prepared.dataset["id"] == ["ok-1", "ok-2"]
    failures = prepared.failures.set_index("id")["error"]
    assert set(failures.index) == {"truncated", "garbage", "unknown-element", "partial", "bad-band-gap"}
    assert "not a CIF" in failures["garbage"]
    assert "band_gap=-4.0 is out of range" in failures["bad-band-gap"]
    assert all(isinstance(e, str) and len(e) > 10 for e in failures)
