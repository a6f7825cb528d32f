"""Crystal <-> symmetry-aware record <-> text, for space groups and layer groups.

Names are imported on first use (PEP 562), so a light submodule (`conditions`, `tokenizer`) can be
imported on a machine without the crystal stack (a bare GPU box training on pretokenized data).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Mapping

_NAMES = {
    "get_format": ".formats", "FORMATS": ".formats", "split_header": ".formats",
    "CrystalRecord": ".record", "Site": ".record", "detect_group": ".record",
    "get_group": ".symmetry", "GroupId": ".symmetry", "fit_to_group": ".symmetrize", "GroupFit": ".symmetrize",
    "ParseError": ".errors", "EncodeError": ".errors", "ConditionError": ".errors", "XtallmError": ".errors",
    "format_header": ".conditions", "parse_header": ".conditions", "validate_conditions": ".conditions",
}


def encode(structure, fmt: str = "wyckoff", conditions: Mapping[str, Any] | None = None, **options) -> str:
    """Text of `structure` in format `fmt`, with an optional conditions header line."""
    from .formats import get_format

    return get_format(fmt, **options).encode(structure, conditions)


def decode(text: str, fmt: str = "wyckoff", **options):
    """Structure from text; raises ParseError saying what is wrong and where."""
    from .formats import get_format

    return get_format(fmt, **options).decode(text)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["encode", "decode", *_NAMES]
