"""`cif` text: a symmetrized CIF (pymatgen), for models and tools that speak CIF."""

from __future__ import annotations

import warnings

import numpy as np
from typing import Any, Mapping

from pymatgen.core import Structure
from pymatgen.io.cif import CifParser, CifWriter

from ..errors import ParseError
from .base import TextFormat, join_header, split_header


class CifFormat(TextFormat):
    name = "cif"

    def __init__(self, symprec: float | None = 0.1, significant_figures: int = 4):
        self.symprec = symprec
        self.significant_figures = significant_figures

    def encode(self, structure: Structure, conditions: Mapping[str, Any] | None = None) -> str:
        text = str(CifWriter(structure, symprec=self.symprec, significant_figures=self.significant_figures))
        return join_header(conditions, text.strip())

    def decode(self, text: str) -> Structure:
        _, body, _ = split_header(text)
        return parse_cif(body)


def parse_cif(text: str, what: str = "CIF") -> Structure:
    """One ordered structure from CIF text; ParseError with pymatgen's reason otherwise."""
    if not isinstance(text, str) or "_cell_length_a" not in text:
        raise ParseError(f"{what}: not a CIF (no _cell_length_a)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
        except Exception as exc:
            detail = "; ".join(str(w.message) for w in caught[:2])
            raise ParseError(f"{what}: {exc or type(exc).__name__}" + (f" ({detail})" if detail else "")) from None
    if not structures:
        raise ParseError(f"{what}: no structure could be read")
    structure = structures[0]
    if not (np.isfinite(structure.frac_coords).all() and np.isfinite(structure.lattice.matrix).all()):
        raise ParseError(f"{what}: non-finite lattice or coordinates")
    return structure
