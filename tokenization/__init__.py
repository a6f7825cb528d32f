"""Crystal <-> symmetry-aware record <-> text, for space groups and layer groups."""

from __future__ import annotations

from typing import Any, Mapping

from pymatgen.core import Structure

from .conditions import format_header, parse_header, validate_conditions
from .errors import ConditionError, EncodeError, ParseError, XtallmError
from .formats import FORMATS, get_format, split_header
from .record import CrystalRecord, Site, detect_group
from .symmetry import get_group


def encode(structure: Structure, fmt: str = "wyckoff", conditions: Mapping[str, Any] | None = None, **options) -> str:
    """Text of `structure` in format `fmt`, with an optional conditions header line."""
    return get_format(fmt, **options).encode(structure, conditions)


def decode(text: str, fmt: str = "wyckoff", **options) -> Structure:
    """Structure from text; raises ParseError saying what is wrong and where."""
    return get_format(fmt, **options).decode(text)


__all__ = [
    "encode", "decode", "get_format", "FORMATS", "split_header", "CrystalRecord", "Site", "get_group", "detect_group",
    "ParseError", "EncodeError", "ConditionError", "XtallmError", "format_header", "parse_header", "validate_conditions",
]
