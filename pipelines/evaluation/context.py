"""What every metric reads: the samples, their crystals, the references, and the pieces several
metrics share (validity flags, uniqueness, novelty, groups), each computed once, when first asked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from xtallm.tokenization.errors import XtallmError
from xtallm.tokenization.record import CrystalRecord, detect_group
from xtallm.tokenization.symmetry import GroupId

from ..parallel import Workers, as_workers, map_ordered
from ..samples import Sample, read_cif
from . import metrics as M


def parse(cif: str | None) -> Structure | None:
    """The structure of a CIF, None for none or one pymatgen cannot read."""
    return read_cif(cif) if cif else None


def parse_many(cifs: list[str | None], workers: Workers | int, desc: str) -> list[Structure | None]:
    """Each distinct CIF text parsed once; a repeated one gets its own copy (no two rows share a Structure)."""
    parsed = map_ordered(parse, cifs, as_workers(workers), desc, chunksize=64, keys=cifs)
    seen: set[int] = set()
    out = []
    for s in parsed:
        if s is not None and id(s) in seen:
            s = s.copy()
        elif s is not None:
            seen.add(id(s))
        out.append(s)
    return out


SYMMETRY_VERSION = "1"  # of the cached reference symmetry (groups and Wyckoff labels)
STRUCTURES_VERSION = "1"  # of the cached parsed structures of a reference or training table


def read_structures(path: Path, column: str, cifs: list[str | None], workers: Workers | int, use_cache: bool = True) -> list[Structure | None]:
    """The parsed CIFs of a table, cached on disk beside the fingerprints (keyed by the file's content hash): a
    training table of 32k crystals is parsed once, not on every evaluation. Plain arrays (lattices, atomic numbers,
    fractional coordinates; no pickle); a table with a disordered or charged site is parsed every time."""
    import numpy as np

    from .coverage import cache_dir, file_hash

    cache = cache_dir().parent / "structures" / f"{file_hash(path, f'{column}:structures{STRUCTURES_VERSION}')}.npz"
    if use_cache and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                sizes, lattices, numbers, coords = z["sizes"], z["lattices"], z["numbers"], z["coords"]
            if len(sizes) == len(cifs):
                ends = np.cumsum(np.clip(sizes, 0, None))
                return [None if n < 0 else Structure(lattices[i], numbers[e - n : e].tolist(), coords[e - n : e])
                        for i, (n, e) in enumerate(zip(sizes, ends))]
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale: parsed again below, and rewritten
    parsed = parse_many(cifs, workers, f"reading {path.name}")
    plain = all(s is None or (s.is_ordered and all(type(sp).__name__ == "Element" for sp in s.species)) for s in parsed)
    if use_cache and plain:
        kept = [s for s in parsed if s is not None]
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".partial.npz")
        np.savez(tmp, sizes=np.array([-1 if s is None else len(s) for s in parsed], dtype=np.int64),
                 lattices=np.array([s.lattice.matrix for s in parsed if s is not None] or np.zeros((0, 3, 3))).reshape(-1, 3, 3),
                 numbers=np.array([z for s in kept for z in s.atomic_numbers], dtype=np.int64),
                 coords=np.array([c for s in kept for c in s.frac_coords]).reshape(-1, 3))
        os.replace(tmp, cache)
    return parsed


def symmetry_of(item: tuple[Structure | None, int]) -> tuple[GroupId | None, list[str]]:
    """The group (layer group for dim 2, symprec 0.1) and Wyckoff `group:site` labels of one crystal.

    One unit of work: both read the crystal's symmetry, and each sample and reference needs both."""
    structure, dim = item
    if structure is None:
        return None, []
    number = detect_group(structure, dim, 0.1)
    try:
        labels = M.wyckoff_labels(CrystalRecord.from_structure(structure, dim=dim))
    except (XtallmError, ValueError):
        labels = []
    return (GroupId(dim, number) if number is not None else None), labels


def cif_column(table: pd.DataFrame, csv: str | Path) -> str:
    """`cif_layer_std` for layer tables (vacuum along c), else `cif`."""
    for column in ("cif_layer_std", "cif"):
        if column in table.columns:
            return column
    split = Path(csv).name.split(".")[0]
    if split in ("mp20-heldout-v1", "twod-heldout-v1"):  # a held-out split names its crystals by id only
        raise ValueError(f"{csv}: lists the split's crystals by id only; build their structures once with "
                         f"`xtallm data reference {split} --data DIR --out FOLDER` (DIR: your copy of the source tables)")
    raise ValueError(f"{csv}: no 'cif' (or 'cif_layer_std') column")


@dataclass
class CrystalTable:
    """Known crystals of a CSV: the readable ones, their CIF text and which are monolayers.

    A row is a monolayer when the table's CIFs are `cif_layer_std` (2DMatPedia, MC2D) or its
    `dim` column says 2 (the references `pipelines.training_data` writes, bulk and 2D mixed)."""

    path: Path
    column: str
    structures: list[Structure]
    cifs: list[str]
    is_layer: list[bool]
    n_rows: int
    workers: Workers = field(default_factory=Workers)
    use_cache: bool = True

    @classmethod
    def read(cls, csv: str | Path, workers: Workers | int, use_cache: bool = True) -> "CrystalTable":
        path = Path(csv)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such reference table")
        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
            raise ValueError(f"{path}: not a readable CSV table ({type(exc).__name__}: {str(exc)[:200]})") from None
        column = cif_column(table, path)
        cifs = table[column].tolist()
        if column == "cif_layer_std":
            layer = [True] * len(table)
        else:
            layer = (table["dim"] == 2).tolist() if "dim" in table else [False] * len(table)
        parsed = read_structures(path, column, [c if isinstance(c, str) else None for c in cifs], workers, use_cache)
        kept = [(s, c, is2d) for s, c, is2d in zip(parsed, cifs, layer) if s is not None]
        return cls(path, column, [s for s, _, _ in kept], [c for _, c, _ in kept], [k for _, _, k in kept], len(table),
                   as_workers(workers), use_cache)

    @property
    def n_unreadable(self) -> int:
        return self.n_rows - len(self.structures)

    @cached_property
    def symmetry(self) -> list[tuple[GroupId | None, list[str]]]:
        """Group and Wyckoff labels of every reference (`symmetry_of`), computed once per table content:
        cached beside the fingerprints, keyed by the file's hash."""
        from .coverage import cache_dir, file_hash

        path = cache_dir().parent / "symmetry" / f"{file_hash(self.path, f'{self.column}:symmetry{SYMMETRY_VERSION}')}.json"
        if self.use_cache and path.exists():
            rows = json.loads(path.read_text())
            return [(GroupId(*g) if g else None, labels) for g, labels in rows]
        items = [(s, 2 if is2d else 3) for s, is2d in zip(self.structures, self.is_layer)]
        found = map_ordered(symmetry_of, items, self.workers, f"symmetry of {self.path.name}", chunksize=16)
        if self.use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps([[[g.dim, g.number] if g else None, labels] for g, labels in found]))
            os.replace(tmp, path)
        return found

    @property
    def groups(self) -> list[GroupId | None]:
        """Detected group of every reference (layer group for monolayers), symprec 0.1."""
        return [g for g, _ in self.symmetry]

    @property
    def wyckoff(self) -> list[list[str]]:
        """Wyckoff `group:site` labels of every reference (none where the analysis fails)."""
        return [labels for _, labels in self.symmetry]


def as_layer(s: Structure | None) -> Structure | None:
    """A monolayer at the common vacuum used for matching (as it is when it is no slab)."""
    if s is None:
        return None
    try:
        return M.with_vacuum(s)
    except Exception:  # not a slab at all: matched as it is
        return s


@dataclass
class EvalContext:
    samples: list[Sample]
    structures: list[Structure | None]
    reference: CrystalTable
    options: Any  # EvaluateOptions
    train: list[str] = field(default_factory=list)
    train_meta: list[str] = field(default_factory=list)
    not_computed: dict[str, str] = field(default_factory=dict)
    plots: dict[str, Any] = field(default_factory=dict)
    input_problems: dict[str, Any] = field(default_factory=dict)
    stability: Any = None  # stability.StabilityJob, or None without --hull/--mlff
    result: dict[str, Any] = field(default_factory=dict)  # what the metrics run so far returned

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def workers(self) -> Workers:
        """Where the per-sample work runs: the local processes, or the Ray cluster of --ray."""
        return Workers(self.options.num_proc, self.options.ray)

    @cached_property
    def layer(self) -> list[bool]:
        return [s.is_layer for s in self.samples]

    @cached_property
    def struct_ok(self) -> list[bool]:
        return [M.structurally_valid(s) for s in tqdm(self.structures, desc="structural validity", leave=False)]

    @cached_property
    def comp_ok(self) -> list[bool]:
        return [M.compositionally_valid(s.composition if s is not None else None) for s in self.structures]

    @cached_property
    def valid(self) -> list[bool]:
        return [a and b for a, b in zip(self.struct_ok, self.comp_ok)]

    @cached_property
    def valid_structures(self) -> list[Structure]:
        return [s for s, ok in zip(self.structures, self.valid) if ok]

    @cached_property
    def matchable(self) -> list[Structure | None]:
        """Monolayers at one vacuum (StructureMatcher compares cell lengths), bulk as it is."""
        return [as_layer(s) if is2d else s for s, is2d in zip(self.structures, self.layer)]

    @cached_property
    def unique(self) -> set[int]:
        return set(M.unique_indices(self.matchable, self.workers))

    @cached_property
    def novel(self) -> list[bool] | None:
        """Matches no training crystal (2D samples against 2D references, bulk against bulk and the cell tables)."""
        if not (self.train or self.train_meta):
            return None
        bulk_refs: list[Structure] = []
        layer_refs: list[Structure] = []
        for t in self.train:
            table = CrystalTable.read(t, self.workers, self.options.use_cache)
            layer_refs += [x for x in (as_layer(s) for s, is2d in zip(table.structures, table.is_layer) if is2d) if x is not None]
            bulk_refs += [s for s, is2d in zip(table.structures, table.is_layer) if not is2d]
        self.train_sizes = {"bulk": len(bulk_refs), "2d": len(layer_refs)}
        bulk_index, layer_index = M.ReferenceIndex(bulk_refs), M.ReferenceIndex(layer_refs)
        lattices = M.LatticeIndex(pd.concat([pd.read_csv(t) for t in self.train_meta])) if self.train_meta else None
        self.train_sizes["cells"] = len(lattices) if lattices else 0
        flags = [False] * self.n
        for is2d, known, cells in ((False, bulk_index, lattices), (True, layer_index, None)):
            chosen = [i for i, layer in enumerate(self.layer) if layer == is2d]
            found = M.novelty_flags([self.matchable[i] for i in chosen], known, cells, self.workers)
            for i, novel in zip(chosen, found):
                flags[i] = novel
        return flags

    @cached_property
    def _analysed(self) -> dict[int, tuple[GroupId | None, list[str]]]:
        """`symmetry_of` the parsed samples whose text states no group or no Wyckoff record, fanned out."""
        todo = [i for i, (sample, s) in enumerate(zip(self.samples, self.structures))
                if s is not None and (sample.group is None or sample.record is None)]
        items = [(self.structures[i], self.samples[i].dim or (2 if self.samples[i].is_layer else 3)) for i in todo]
        keys = [(self.samples[i].cif, dim) for i, (_, dim) in zip(todo, items)]  # the same crystal text: analysed once
        return dict(zip(todo, map_ordered(symmetry_of, items, self.workers, "sample symmetry", chunksize=16, keys=keys)))

    @cached_property
    def groups(self) -> list[GroupId | None]:
        """The group a sample states (its text), else the detected one (layer group for monolayers), symprec 0.1."""
        return [None if s is None else sample.group if sample.group is not None else self._analysed[i][0]
                for i, (sample, s) in enumerate(zip(self.samples, self.structures))]

    @cached_property
    def wyckoff(self) -> list[list[str]]:
        """`group:site` labels of every sample: its own Wyckoff text when it is one, else by analysis."""
        return [[] if s is None else M.wyckoff_labels(sample.record) if sample.record is not None else self._analysed[i][1]
                for i, (sample, s) in enumerate(zip(self.samples, self.structures))]
