"""Regular expressions for grammar-constrained decoding (vLLM structured outputs).

A regex derived from the `wyckoff` format makes every sample parse: group numbers in range,
the group's own lattice parameters, only that group's Wyckoff positions with exactly their
number of free coordinates, real elements, numbers in the ranges the parser accepts. When the
prompt fixes the group (sg=/lg=), the regex is that group's alone; otherwise an alternation
over all groups of the allowed dimensions.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pymatgen.core.periodic_table import Element

from tokenization.symmetry import ANGLES, N_GROUPS, get_group

ELEMENTS = "|".join(sorted((el.symbol for el in Element if el.Z <= 103), key=lambda s: (-len(s), s)))


def _numbers(length_decimals: int, angle_decimals: int, coord_decimals: int) -> dict[str, str]:
    return {
        "length": rf"([1-9]|[1-9][0-9]|[1-4][0-9][0-9])\.[0-9]{{{length_decimals}}}",  # 1 .. 499.9 Å
        "angle": rf"(1[1-9]|[2-9][0-9]|1[0-6][0-9])\.[0-9]{{{angle_decimals}}}",  # 11 .. 169.9 degrees
        "frac": rf"0\.[0-9]{{{coord_decimals}}}",  # [0, 1)
        "z": rf"-?([0-9]|1[0-9])\.[0-9]{{{coord_decimals}}}",  # Å from the mid-plane, |z| < 20
    }


@lru_cache(maxsize=512)
def group_regex(
    dim: int, number: int, max_sites: int = 24, length_decimals: int = 3, angle_decimals: int = 2, coord_decimals: int = 3
) -> str:
    """Body of one group: its header, lattice line and 1..max_sites site lines."""
    num = _numbers(length_decimals, angle_decimals, coord_decimals)
    table = get_group(dim, number)
    lattice = " ".join(f"{name} {num['angle'] if name in ANGLES else num['length']}" for name in table.lattice_params)
    sites = []
    for wp in table.wyckoffs:
        coords = "".join(" " + (num["z"] if (dim == 2 and j == 2) else num["frac"]) for j in wp.free)
        sites.append(f"{wp.multiplicity}{wp.letter}{coords}")
    site = f"({ELEMENTS}) ({'|'.join(sites)})"
    return f"{table.kind} {number}\\n{lattice}(\\n{site}){{1,{max_sites}}}"


def max_sites_for(max_tokens: int) -> int:
    """Site lines that surely fit in `max_tokens` (a general-position line is <= 26 tokens)."""
    return max(1, (max_tokens - 24) // 26)


def wyckoff_regex(conditions: dict[str, Any], dims: list[int] | None = None, **decimals: int) -> str:
    """The regex for a prompt's conditions (group fixed by sg/lg, or any group of the allowed dims).

    Bounding the number of sites (`max_sites`) keeps every sample inside the token budget,
    so none is cut off mid-line."""
    if "sg" in conditions:
        return group_regex(3, int(conditions["sg"]), **decimals)
    if "lg" in conditions:
        return group_regex(2, int(conditions["lg"]), **decimals)
    allowed = [conditions["dim"]] if "dim" in conditions else (dims or [3, 2])
    options = [group_regex(d, n, **decimals) for d in allowed for n in range(1, N_GROUPS[d] + 1)]
    return "(" + "|".join(options) + ")"


def matches(regex: str, text: str) -> bool:
    return re.fullmatch(regex, text) is not None
