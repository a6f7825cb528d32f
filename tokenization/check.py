"""Does a crystal survive encode -> decode? Used by the tests, the demo and the benchmarks."""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from .errors import XtallmError
from .formats import WyckoffFormat, parse_cif
from .record import detect_group, layer_cell


@dataclass
class RoundTrip:
    encoded: bool
    matched: bool = False  # StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3), the pinned protocol
    group_kept: bool = False  # rebuilt group (symprec 0.01) == the record's group
    group: int | None = None
    n_tokens_chars: int = 0
    error: str | None = None


def roundtrip(structure: Structure | str, dim: int = 3, symprec: float = 0.1) -> RoundTrip:
    """Encode in `wyckoff`, decode, compare (layers are compared at their own vacuum)."""
    try:
        if isinstance(structure, str):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = parse_cif(structure)
        if dim == 2:
            structure = layer_cell(structure)
        fmt = WyckoffFormat(symprec=symprec, dim=dim)
        text = fmt.encode(structure)
    except XtallmError as exc:
        return RoundTrip(False, error=f"{type(exc).__name__}: {exc}")
    record = fmt.decode_record(text)
    vacuum = fmt.vacuum
    if dim == 2:
        z = structure.cart_coords[:, 2]
        vacuum = structure.lattice.c - (z.max() - z.min())
    rebuilt = record.to_structure(vacuum=vacuum)
    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    return RoundTrip(
        True,
        matched=bool(matcher.fit(structure, rebuilt)),
        group_kept=detect_group(rebuilt, dim, symprec=0.01) == record.group,
        group=record.group,
        n_tokens_chars=len(text),
    )


def _roundtrip_args(args: tuple) -> RoundTrip:
    return roundtrip(*args)


def roundtrip_many(cifs: list[str], dim: int = 3, num_proc: int = 2, symprec: float = 0.1) -> list[RoundTrip]:
    """`roundtrip` over many CIFs in a process pool, results in input order."""
    args = [(c, dim, symprec) for c in cifs]
    if num_proc <= 1:
        return [roundtrip(*a) for a in args]
    with ProcessPoolExecutor(num_proc) as pool:
        return list(pool.map(_roundtrip_args, args, chunksize=32))


def summarize(results: list[RoundTrip]) -> dict[str, float | int]:
    """Rates over all inputs (encoded, matched) and over the encoded ones (group kept)."""
    n = len(results)
    encoded = [r for r in results if r.encoded]
    return {
        "n": n,
        "encoded_rate": len(encoded) / n if n else 0.0,
        "match_rate": sum(r.matched for r in results) / n if n else 0.0,
        "group_kept_rate": sum(r.group_kept for r in encoded) / len(encoded) if encoded else 0.0,
    }
