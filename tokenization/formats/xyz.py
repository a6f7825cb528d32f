"""`xyz` text, as crystal-text-llm writes it, so its numbers compare with ours.

    5.0 5.0 5.0          lattice lengths (Å)
    90 90 90             lattice angles (degrees)
    Na                   then, per atom: element line, fractional coordinates line
    0.00 0.00 0.00

No symmetry: the group is whatever the coordinates happen to have.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from ..errors import ParseError
from .base import TextFormat, join_header, parse_number, split_header


class XyzFormat(TextFormat):
    name = "xyz"

    def __init__(self, length_decimals: int = 1, angle_decimals: int = 0, coord_decimals: int = 2):
        self.length_decimals = length_decimals
        self.angle_decimals = angle_decimals
        self.coord_decimals = coord_decimals

    def encode(self, structure: Structure, conditions: Mapping[str, Any] | None = None) -> str:
        lat = structure.lattice
        lines = [
            " ".join(f"{x:.{self.length_decimals}f}" for x in lat.abc),
            " ".join(f"{x:.{self.angle_decimals}f}" for x in lat.angles),
        ]
        frac = structure.frac_coords % 1.0
        for site, xyz in zip(structure, frac):
            lines.append(site.specie.symbol)
            lines.append(" ".join(f"{x:.{self.coord_decimals}f}" for x in xyz))
        return join_header(conditions, "\n".join(lines))

    def decode(self, text: str) -> Structure:
        _, body, skipped = split_header(text)
        lines = [(i, ln.strip()) for i, ln in enumerate(body.split("\n"), 1 + skipped) if ln.strip()]
        if len(lines) < 4:
            raise ParseError(f"truncated: need lengths, angles and at least one atom, got {len(lines)} line(s)")
        abc = self._triple(*lines[0], "lattice lengths")
        angles = self._triple(*lines[1], "lattice angles")
        if any(x <= 0 for x in abc):
            raise ParseError(f"lattice lengths must be positive, got {abc}", line=lines[0][0])
        if any(not 0 < x < 180 for x in angles):
            raise ParseError(f"lattice angles must be in (0, 180), got {angles}", line=lines[1][0])
        atoms = lines[2:]
        if len(atoms) % 2:
            raise ParseError("truncated: an element line has no coordinate line", line=atoms[-1][0])
        species, coords = [], []
        for (n_el, el), (n_xyz, xyz) in zip(atoms[::2], atoms[1::2]):
            try:
                species.append(Element(el).symbol)
            except ValueError:
                raise ParseError(f"unknown element {el!r}", line=n_el) from None
            coords.append(self._triple(n_xyz, xyz, f"coordinates of {el}"))
        lattice = Lattice.from_parameters(*abc, *angles)
        if not np.isfinite(lattice.volume) or lattice.volume <= 1e-3:
            raise ParseError(f"lattice {abc} {angles} has no volume", line=lines[1][0])
        return Structure(lattice, species, np.array(coords))

    @staticmethod
    def _triple(n: int, line: str, what: str) -> tuple[float, float, float]:
        tokens = line.split()
        if len(tokens) != 3:
            raise ParseError(f"{what}: expected 3 numbers, got {line!r}", line=n)
        return tuple(parse_number(t, what, n) for t in tokens)  # type: ignore[return-value]
