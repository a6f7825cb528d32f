"""Refiner training data: crystal tables -> records (tokenization/) -> arrays in one file.

The file holds numpy arrays only, so training needs neither pymatgen nor the group tables:
it runs on any machine with torch (e.g. a GPU box without the crystal stack). Batches are
formed from crystals of similar size, so padding to the largest crystal wastes little.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .crystal import CrystalArrays, CrystalBatch, collate, record_to_arrays


def build_arrays(
    sources: list[str],
    max_atoms: int = 80,
    dims: tuple[int, ...] = (2, 3),
    symprec: float = 0.1,
    num_proc: int | None = None,
    exclude: "HeldOut | None" = None,
    include: "HeldOut | None" = None,
) -> tuple[list[CrystalArrays], list[str], list[str]]:
    """Arrays of every crystal in `sources` (tables or prepared datasets) with <= max_atoms in the conventional cell.

    Returns the arrays, their ids ("<source>:<id>") and record JSON. Rows of a held-out split (same id, or
    the same formula in the same group: that material from another database) are left out;
    with `include`, only the rows of that split are kept (benchmarks on the held-out set).
    """
    from xtallm.tokenization.data import PrepareOptions, prepare_dataset
    from xtallm.tokenization.record import CrystalRecord

    crystals, ids, records = [], [], []
    for source in sources:
        path = Path(source)
        if path.is_dir() and (path / "dataset_info.json").exists():
            import datasets

            ds = datasets.load_from_disk(str(path))
        else:
            ds = prepare_dataset(source, PrepareOptions(symprec=symprec), num_proc=num_proc).dataset
        ds = ds.select_columns(["id", "dim", "group", "formula", "n_atoms", "record"])
        for row in tqdm(ds, desc=f"arrays {path.name}", leave=False):
            if row["dim"] not in dims or row["n_atoms"] > max_atoms:
                continue
            if exclude is not None and exclude.contains(str(row["id"]), row["formula"], row["group"]):
                continue
            if include is not None and str(row["id"]) not in include.ids:
                continue
            crystals.append(record_to_arrays(CrystalRecord.from_dict(json.loads(row["record"]))))
            ids.append(f"{path.name}:{row['id']}")
            records.append(row["record"])
    return crystals, ids, records


class HeldOut:
    """Held-out split tables (CSV with an id column and optionally reduced_formula + group)."""

    ID_COLUMNS = ("material_id", "id")

    def __init__(self, paths: list[str]):
        import pandas as pd

        self.ids: set[str] = set()
        self.pairs: set[tuple[str, int]] = set()
        for path in paths:
            table = pd.read_csv(path, dtype=str)
            column = next((c for c in self.ID_COLUMNS if c in table.columns), None)
            if column is None:
                raise ValueError(f"{path}: held-out table needs one of the columns {self.ID_COLUMNS}")
            self.ids.update(table[column].dropna())
            if {"reduced_formula", "group"} <= set(table.columns):
                self.pairs.update(zip(table["reduced_formula"], table["group"].astype(int)))

    def contains(self, row_id: str, formula: str, group: int) -> bool:
        return row_id in self.ids or (formula, int(group)) in self.pairs


def site_vocabulary(crystals: list[CrystalArrays]) -> dict[str, int]:
    """Site-symmetry symbols seen in training, most frequent first; index 0 = unknown."""
    counts: dict[str, int] = {}
    for c in crystals:
        for s in c.site_symmetry:
            counts[s] = counts.get(s, 0) + 1
    ordered = sorted(counts, key=lambda s: (-counts[s], s))
    return {"<unk>": 0, **{s: i + 1 for i, s in enumerate(ordered)}}


_SITE_FIELDS = ("site_a0", "site_t0", "site_free", "site_v")
_ATOM_FIELDS = ("atom_site", "atom_rot", "atom_trans", "atom_z")


def save_arrays(path: str | Path, crystals: list[CrystalArrays], ids: list[str], records: list[str] | None = None) -> None:
    """One compressed .npz: per-crystal arrays concatenated with offsets (orbit matrices repeat, so they compress well)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_sites = np.array([len(c.site_v) for c in crystals])
    n_atoms = np.array([c.n_atoms for c in crystals])
    arrays = {
        "dim": np.array([c.dim for c in crystals]),
        "group": np.array([c.group for c in crystals]),
        "k": np.stack([c.k for c in crystals]),
        "k_free": np.stack([c.k_free for c in crystals]),
        "k_fixed": np.stack([c.k_fixed for c in crystals]),
        "n_sites": n_sites,
        "n_atoms": n_atoms,
        **{f: np.concatenate([getattr(c, f) for c in crystals]) for f in _SITE_FIELDS + _ATOM_FIELDS},
    }
    meta = {"ids": ids, "site_symmetry": [c.site_symmetry for c in crystals], "records": records}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)


def load_arrays(path: str | Path) -> tuple[list[CrystalArrays], list[str]]:
    crystals, ids, _ = load_arrays_with_records(path)
    return crystals, ids


def load_arrays_with_records(path: str | Path) -> tuple[list[CrystalArrays], list[str], list[str] | None]:
    """Crystals, ids and (when saved) the record JSON of each crystal."""
    with np.load(path) as npz:
        blob = {key: npz[key] for key in npz.files}  # each npz[key] access decompresses again
    meta = json.loads(blob["meta"].tobytes().decode())
    site_end = np.cumsum(blob["n_sites"])
    atom_end = np.cumsum(blob["n_atoms"])
    fields = {f: blob[f] for f in _SITE_FIELDS + _ATOM_FIELDS}
    crystals = []
    for i in range(len(blob["dim"])):
        s0, s1 = site_end[i] - blob["n_sites"][i], site_end[i]
        a0, a1 = atom_end[i] - blob["n_atoms"][i], atom_end[i]
        crystals.append(
            CrystalArrays(
                dim=int(blob["dim"][i]),
                group=int(blob["group"][i]),
                k=blob["k"][i],
                k_free=blob["k_free"][i],
                k_fixed=blob["k_fixed"][i],
                site_symmetry=meta["site_symmetry"][i],
                **{f: fields[f][s0:s1] for f in _SITE_FIELDS},
                **{f: fields[f][a0:a1] for f in _ATOM_FIELDS},
            )
        )
    return crystals, list(meta["ids"]), meta.get("records")


class SizeBucketBatches:
    """Deterministic batches per (seed, epoch): shuffled, sorted by size within chunks, shuffled again."""

    def __init__(self, sizes: list[int], batch_size: int, seed: int, chunk_batches: int = 50):
        self.sizes = np.asarray(sizes)
        self.batch_size = batch_size
        self.seed = seed
        self.chunk = batch_size * chunk_batches

    def epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng((self.seed, epoch))
        order = rng.permutation(len(self.sizes))
        batches = []
        for start in range(0, len(order), self.chunk):
            chunk = order[start : start + self.chunk]
            chunk = chunk[np.argsort(self.sizes[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        return -(-len(self.sizes) // self.batch_size)


def make_batch(crystals: list[CrystalArrays], indices, vocab: dict[str, int]) -> CrystalBatch:
    return collate([crystals[int(i)] for i in indices], vocab)
