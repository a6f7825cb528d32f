"""Errors raised by the representation layer.

`ParseError` is what a caller sees for bad *text* (model output, hand-written records);
`EncodeError` is what a caller sees for a *structure* that cannot be represented
(disorder, unknown symmetry, too many atoms). Both carry a message that names the input
and the problem, so a data-preparation report or a sampler log is readable on its own.
"""

from __future__ import annotations


class XtallmError(ValueError):
    """Base class: every error here is a ValueError so generic handlers still catch it."""


class ParseError(XtallmError):
    """Text could not be turned into a crystal.

    `line` (1-based) says where in the text; `site` (1-based) which orbit of a record, so a
    format can translate it into a line.
    """

    def __init__(self, message: str, line: int | None = None, site: int | None = None):
        self.message = message
        self.line = line
        self.site = site
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}")


class EncodeError(XtallmError):
    """A structure could not be represented (disorder, symmetry not found, too large...)."""


class ConditionError(XtallmError):
    """A property condition has an unknown key or a value outside its range."""
