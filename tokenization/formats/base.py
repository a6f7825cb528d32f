"""What every text format shares: the conditions header, number parsing, the registry."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from pymatgen.core import Structure

from ..conditions import format_header, parse_header
from ..errors import ConditionError, ParseError
from ..record import CrystalRecord
from ..symmetry import GroupId

_NUMBER = re.compile(r"^[-+]?\d+(\.\d+)?$")


def parse_number(token: str, what: str, line: int) -> float:
    """A finite decimal number, or a ParseError naming `what` and the line."""
    if not _NUMBER.match(token):
        raise ParseError(f"{what}: {token!r} is not a number", line=line)
    value = float(token)
    if not math.isfinite(value):
        raise ParseError(f"{what}: {token!r} is not finite", line=line)
    return value


def split_header(text: str) -> tuple[dict[str, Any], str, int]:
    """(conditions, body, number of header lines). A header line is one holding `key=value`."""
    if not isinstance(text, str):
        raise ParseError(f"expected text, got {type(text).__name__}")
    stripped = text.lstrip("\n")
    first, _, rest = stripped.partition("\n")
    if "=" in first:
        try:
            return parse_header(first), rest, 1
        except ConditionError as exc:
            raise ParseError(f"conditions header: {exc}", line=1) from None
    return {}, stripped, 0


def join_header(conditions: Mapping[str, Any] | None, body: str) -> str:
    header = format_header(conditions)
    return f"{header}\n{body}" if header else body


@dataclass
class Decoded:
    """What a text says: the crystal, and its record and group when the format states them."""

    structure: Structure
    group: GroupId | None  # stated by the text (wyckoff), else detected (moyopy, symprec 0.1)
    record: CrystalRecord | None = None  # formats without symmetry (xyz, cif) have none


class TextFormat:
    """A crystal text format: `encode(structure, conditions) -> str`, `decode(text) -> Structure`.

    A new format is a subclass with those two methods (and `read`, if the text states a group)
    plus one line in `formats.FORMATS`."""

    name = "base"
    states_symmetry = False  # True: the text fixes group and Wyckoff sites (grammar-constrained decoding needs it)

    def encode(self, structure: Structure, conditions: Mapping[str, Any] | None = None) -> str:
        raise NotImplementedError

    def decode(self, text: str) -> Structure:
        raise NotImplementedError

    def read(self, text: str) -> Decoded:
        """The crystal of `text`; its group is detected, since this format does not state one."""
        from ..record import detect_group
        from .wyckoff import guess_dim

        structure = self.decode(text)
        dim = guess_dim(structure)
        number = detect_group(structure, dim, symprec=0.1)
        return Decoded(structure, GroupId(dim, number) if number is not None else None)
