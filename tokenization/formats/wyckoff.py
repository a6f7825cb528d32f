"""`wyckoff` text: group, free lattice parameters, one line per orbit. The default format.

    sg 225                 (lg N for a monolayer)
    a 7.140                (only the family's free parameters: `a 3.19 c 12.3`, ...)
    Tm 4a
    O 24e 0.234            (element, multiplicity + Wyckoff letter, free coordinates)

Symmetry-exact by construction: whatever numbers a model writes, the crystal rebuilt from
them has (at least) the stated group. For layers the free z is in Å from the mid-plane.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Mapping

import numpy as np
from pymatgen.core import Structure

from ..errors import EncodeError, ParseError
from ..record import DEFAULT_VACUUM, CrystalRecord, Site, check_structure, detect_group
from ..symmetry import ANGLES, N_GROUPS
from .base import Decoded, TextFormat, join_header, parse_number, split_header

_LABEL = re.compile(r"^(\d+)([a-zA-Z])$")


def guess_dim(structure: Structure, min_vacuum: float = 7.0) -> int:
    """2 if the cell holds a slab with >= `min_vacuum` Å of empty space along c, else 3."""
    lat = structure.lattice
    normal = np.cross(lat.matrix[0], lat.matrix[1])
    normal /= np.linalg.norm(normal)
    height = abs(float(np.dot(lat.matrix[2], normal)))
    z = np.sort((structure.cart_coords @ normal) % height)
    gaps = np.diff(np.concatenate([z, [z[0] + height]]))
    return 2 if gaps.max() >= min_vacuum else 3


class WyckoffFormat(TextFormat):
    name = "wyckoff"
    states_symmetry = True

    def __init__(
        self,
        coord_decimals: int = 3,
        length_decimals: int = 3,
        angle_decimals: int = 2,
        symprec: float = 0.1,
        check_symprec: float = 0.01,
        vacuum: float = DEFAULT_VACUUM,
        verify: bool = True,
        dim: int | None = None,
        strict: bool = True,
    ):
        self.coord_decimals = coord_decimals
        self.length_decimals = length_decimals
        self.angle_decimals = angle_decimals
        self.symprec = symprec
        self.check_symprec = check_symprec
        self.vacuum = vacuum
        self.verify = verify
        self.dim = dim
        self.strict = strict  # False: decode collapsed orbits as written (overlapping atoms)

    # ------------------------------------------------------------------ record <-> text
    def format_record(self, record: CrystalRecord) -> str:
        lines = [f"{record.kind} {record.group}"]
        lat = []
        for name, value in record.lattice.items():
            decimals = self.angle_decimals if name in ANGLES else self.length_decimals
            lat.append(f"{name} {value:.{decimals}f}")
        lines.append(" ".join(lat))
        table = record.table
        for site in record.sites:
            free = table.wyckoff(site.wyckoff).free
            coords = " ".join(self._coord(p, periodic=j < record.dim) for p, j in zip(site.params, free))
            lines.append(f"{site.element} {site.label}" + (f" {coords}" if coords else ""))
        return "\n".join(lines)

    def _coord(self, value: float, periodic: bool) -> str:
        text = f"{value:.{self.coord_decimals}f}"
        if (periodic and float(text) >= 1.0) or (text.startswith("-") and float(text) == 0):
            return "0." + "0" * self.coord_decimals  # 0.9996 -> "0.000", not "1.000": same point, one spelling
        return text

    def parse_record(self, body: str, first_line: int = 1) -> CrystalRecord:
        lines = [(i, ln.strip()) for i, ln in enumerate(body.split("\n"), first_line) if ln.strip()]
        if not lines:
            raise ParseError("empty text: expected 'sg N' or 'lg N'", line=first_line)
        n, head = lines[0]
        parts = head.split()
        if len(parts) != 2 or parts[0] not in ("sg", "lg"):
            raise ParseError(f"expected 'sg N' or 'lg N', got {head!r}", line=n)
        dim = 3 if parts[0] == "sg" else 2
        if not parts[1].isdigit():
            raise ParseError(f"group number {parts[1]!r} is not an integer", line=n)
        group = int(parts[1])
        if not 1 <= group <= N_GROUPS[dim]:
            raise ParseError(f"{parts[0]} {group}: must be in 1..{N_GROUPS[dim]}", line=n)
        if len(lines) < 2:
            raise ParseError("truncated: no lattice line", line=n + 1)
        n, lat_line = lines[1]
        tokens = lat_line.split()
        if len(tokens) % 2:
            raise ParseError(f"lattice line must be 'name value' pairs, got {lat_line!r}", line=n)
        lattice: dict[str, float] = {}
        for name, value in zip(tokens[::2], tokens[1::2]):
            if name not in ("a", "b", "c", "alpha", "beta", "gamma"):
                raise ParseError(f"unknown lattice parameter {name!r}", line=n)
            if name in lattice:
                raise ParseError(f"lattice parameter {name} given twice", line=n)
            lattice[name] = parse_number(value, f"lattice parameter {name}", n)
        if len(lines) < 3:
            raise ParseError("truncated: no sites after the lattice line", line=n + 1)
        sites = []
        for n, line in lines[2:]:
            tokens = line.split()
            if len(tokens) < 2:
                raise ParseError(f"site line must be 'Element <mult><letter> [coords]', got {line!r}", line=n)
            match = _LABEL.match(tokens[1])
            if not match:
                raise ParseError(f"{tokens[1]!r} is not a Wyckoff label like '4a'", line=n)
            params = tuple(parse_number(t, f"coordinate of {tokens[0]} {tokens[1]}", n) for t in tokens[2:])
            sites.append(Site(tokens[0], match.group(2), int(match.group(1)), params))
        record = CrystalRecord(dim, group, lattice, sites)
        record.site_lines = [n for n, _ in lines[2:]]
        with _site_lines(record):
            record.validate()
        return record

    # ------------------------------------------------------------------ public API
    def record(self, structure: Structure, dim: int | None = None, max_atoms: int | None = None) -> CrystalRecord:
        check_structure(structure, max_atoms)  # before anything reads its lattice
        dim = dim or self.dim or guess_dim(structure)
        return CrystalRecord.from_structure(structure, dim=dim, symprec=self.symprec, max_atoms=max_atoms)

    def encode(
        self,
        structure: Structure,
        conditions: Mapping[str, Any] | None = None,
        dim: int | None = None,
    ) -> str:
        dim = dim or (conditions or {}).get("dim") or self.dim
        record = self.record(structure, dim=dim)
        return join_header(conditions, self.encode_record(record))

    def encode_record(self, record: CrystalRecord) -> str:
        """Text of a record; with `verify`, checks that the text rebuilds the record's group."""
        body = self.format_record(record)
        if self.verify:
            rebuilt = self.parse_record(body).to_structure(vacuum=self.vacuum)
            found = detect_group(rebuilt, record.dim, self.check_symprec)
            if found != record.group:
                raise EncodeError(
                    f"text at {self.coord_decimals} decimals rebuilds {record.kind} {found}, not {record.group} "
                    f"(symprec {self.check_symprec}); the crystal is too close to a higher symmetry"
                )
        return body

    def decode_record(self, text: str) -> CrystalRecord:
        _, body, skipped = split_header(text)
        return self.parse_record(body, first_line=1 + skipped)

    def decode(self, text: str) -> Structure:
        return self.read(text).structure

    def read(self, text: str) -> Decoded:
        """Record and crystal from one parse: the group is the one the text states."""
        record = self.decode_record(text)
        with _site_lines(record):
            structure = record.to_structure(vacuum=self.vacuum, validate=False, strict=self.strict)
        return Decoded(structure, record.group_id, record)


@contextmanager
def _site_lines(record: CrystalRecord):
    """Re-raise a record's per-site ParseError with the line that site came from."""
    try:
        yield
    except ParseError as exc:
        lines = getattr(record, "site_lines", None)
        if exc.site is None or exc.line is not None or not lines:
            raise
        raise ParseError(exc.message, line=lines[exc.site - 1], site=exc.site) from None
