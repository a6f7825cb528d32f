"""Training-time augmentations that change the text but not the crystal.

`wyckoff`: the order of the orbit lines is arbitrary, so shuffle it.
`xyz`: the origin and the atom order are arbitrary, so translate and shuffle.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Structure

from .formats import WyckoffFormat, XyzFormat
from .record import CrystalRecord


def permute_sites(record: CrystalRecord, rng: np.random.Generator) -> CrystalRecord:
    return record.permuted(rng)


def translate_and_permute(structure: Structure, rng: np.random.Generator, dim: int = 3) -> Structure:
    """Random origin shift (in-plane only for layers) and random atom order."""
    shift = rng.random(3)
    if dim == 2:
        shift[2] = 0.0
    order = rng.permutation(len(structure))
    frac = (structure.frac_coords[order] + shift) % 1.0
    if dim == 2:
        frac[:, 2] = structure.frac_coords[order, 2]
    return Structure(structure.lattice, [structure.species[i] for i in order], frac)


def augmented_text(record: CrystalRecord, fmt: WyckoffFormat | XyzFormat, rng: np.random.Generator) -> str:
    """A random equivalent text of `record` in `fmt` (no header)."""
    if isinstance(fmt, WyckoffFormat):
        return fmt.format_record(permute_sites(record, rng))
    structure = translate_and_permute(record.to_structure(), rng, record.dim)
    return fmt.encode(structure)
