"""What every text format shares: the conditions header, number parsing, the registry."""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from pymatgen.core import Structure

from ..conditions import format_header, parse_header
from ..errors import ConditionError, ParseError

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


class TextFormat:
    """A crystal text format: `encode(structure, conditions) -> str`, `decode(text) -> Structure`."""

    name = "base"

    def encode(self, structure: Structure, conditions: Mapping[str, Any] | None = None) -> str:
        raise NotImplementedError

    def decode(self, text: str) -> Structure:
        raise NotImplementedError

    def decode_with_conditions(self, text: str) -> tuple[Structure, dict[str, Any]]:
        conditions, _, _ = split_header(text)
        return self.decode(text), conditions
