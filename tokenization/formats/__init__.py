"""Registry of text formats: name -> class with encode/decode."""

from __future__ import annotations

from .base import Decoded, TextFormat, join_header, split_header
from .cif import CifFormat, parse_cif
from .wyckoff import WyckoffFormat, guess_dim
from .xyz import XyzFormat

FORMATS: dict[str, type[TextFormat]] = {
    WyckoffFormat.name: WyckoffFormat,
    XyzFormat.name: XyzFormat,
    CifFormat.name: CifFormat,
}


def get_format(name: str = "wyckoff", **options) -> TextFormat:
    """A format instance by name; options (precision, symprec, vacuum...) go to its constructor."""
    try:
        cls = FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown text format {name!r}; known: {', '.join(FORMATS)}") from None
    return cls(**options)


__all__ = ["FORMATS", "Decoded", "TextFormat", "WyckoffFormat", "XyzFormat", "CifFormat", "get_format", "split_header", "join_header", "parse_cif", "guess_dim"]
