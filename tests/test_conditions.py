"""Conditions header: known keys, ranges, canonical order and values, contradictions."""

import pytest
from pymatgen.core import Lattice, Structure

from xtallm.tokenization import ConditionError, format_header, parse_header, validate_conditions
from xtallm.tokenization.conditions import parse_condition_args, structure_conditions


def test_canonical_header():
    header = format_header({"band_gap": "1.5", "elements": "O, Ti", "sg": 136, "dim": 3})
    assert header == "dim=3 sg=136 elements=O,Ti band_gap=1.50"
    assert parse_header(header) == {"dim": 3, "sg": 136, "elements": "O,Ti", "band_gap": 1.5}
    assert format_header(None) == "" and format_header({}) == ""
    assert parse_condition_args(["formula=TiO2", "n_atoms=6"]) == {"formula": "TiO2", "n_atoms": 6}
    assert validate_conditions({"formula": "Dy2C(NO)2"})["formula"] == "Dy2CN2O2"
    assert validate_conditions({"formula": "O4Ti2"})["formula"] == "TiO2"


@pytest.mark.parametrize(
    "conditions,message",
    [
        ({"colour": "red"}, "unknown condition 'colour'"),
        ({"sg": 0}, "sg=0 is out of range"),
        ({"sg": 231}, "out of range [1, 230]"),
        ({"lg": 81}, "out of range [1, 80]"),
        ({"sg": 2.5}, "is not an integer"),
        ({"band_gap": "wide"}, "is not a number"),
        ({"band_gap": float("inf")}, "not a finite number"),
        ({"density": 0}, "density=0 is out of range"),
        ({"elements": "Na,Xx"}, "unknown element 'Xx'"),
        ({"elements": "Na,Na"}, "repeated element"),
        ({"formula": "Qz2O"}, "unknown element 'Qz'"),
        ({"formula": "Ti(O"}, "cannot parse"),
        ({"sg": 1, "lg": 1}, "sg and lg together"),
        ({"dim": 2, "sg": 1}, "dim=2 with sg"),
        ({"dim": 3, "lg": 1}, "dim=3 with lg"),
        ({"formula": "TiO2", "elements": "Ti,S"}, "contradicts elements"),
        ({"dim": 4}, "dim=4 is out of range"),
    ],
)
def test_rejected(conditions, message):
    with pytest.raises(ConditionError) as info:
        validate_conditions(conditions)
    assert message in str(info.value)


def test_malformed_header_pairs():
    with pytest.raises(ConditionError, match="malformed condition"):
        parse_header("sg=225 band_gap")
    with pytest.raises(ConditionError, match="given twice"):
        parse_header("sg=225 sg=12")


def test_conditions_from_a_structure():
    s = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                  [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                   [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
    c = structure_conditions(s, 3, 225)
    assert c["formula"] == "NaCl" and c["elements"] == "Na,Cl" and c["n_atoms"] == 8 and c["sg"] == 225
    assert c["density"] == pytest.approx(2.16, abs=0.02)
    assert 0 < c["hhi"] < 10000
    layer = structure_conditions(s, 2, 1)
    assert "density" not in layer and layer["lg"] == 1
