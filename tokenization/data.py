"""Crystal tables -> Hugging Face `datasets` with record, text and conditions, in parallel.

Sources: a local CSV/JSON/parquet file (compressed or not), a URL, or a hub dataset id.
Bulk tables follow CDVAE's columns (material_id, cif, formation_energy_per_atom, band_gap,
e_above_hull, ...); layer tables carry a `cif_layer_std` column (vacuum along c).
A row that cannot be encoded is skipped and listed, with its reason, in the report;
the other rows are kept. Results are cached on disk, keyed by the input and the options.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from .conditions import PROPERTY_COLUMNS, structure_conditions, validate_conditions
from .errors import XtallmError
from xtallm.configs.recipe import default_num_proc, option

from .formats import FORMATS, get_format, parse_cif
from .formats.wyckoff import WyckoffFormat

CACHE_VERSION = "2"
ID_COLUMNS = ("material_id", "mc2d_structure_label", "id")
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


@dataclass
class PrepareOptions:
    """How a table becomes records and text (part of the cache key)."""

    fmt: str = option("wyckoff", "text format", choices=tuple(FORMATS))
    dim: int | None = option(None, "2 = monolayers, 3 = bulk (default: a dim column, else 2 for cif_layer_std tables, else 3)",
                             choices=(2, 3))
    symprec: float = option(0.1, "symmetry tolerance of the group search (Å)")
    max_atoms: int | None = option(None, "skip crystals with more atoms (input cell)")
    cif_column: str | None = option(None, "column holding the CIFs (default: cif_layer_std, else cif)")
    limit: int | None = option(None, "first N rows only")
    fmt_options: dict[str, Any] = option(factory=dict, help="format settings (precision...)", flag=False)

    def check(self) -> None:
        if self.symprec <= 0:
            raise ValueError(f"symprec must be > 0, got {self.symprec}")
        if self.max_atoms is not None and self.max_atoms < 1:
            raise ValueError(f"max_atoms (--max-input-atoms) must be >= 1, got {self.max_atoms}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


@dataclass
class PreparedData:
    dataset: Any  # datasets.Dataset of the rows that were encoded
    failures: pd.DataFrame  # row, id, error
    n_rows: int
    path: Path | None = None

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "n_ok": len(self.dataset),
            "n_failed": len(self.failures),
            "failure_reasons": self.failures["error"].str.split(":").str[0].value_counts().head(10).to_dict(),
        }


# ---------------------------------------------------------------------- reading


def _is_table_path(source: str) -> bool:
    name = source.lower()
    for ext in (".xz", ".gz", ".bz2", ".zip", ".zst"):
        name = name.removesuffix(ext)
    return name.endswith(TABLE_SUFFIXES)


def read_table(source: str | os.PathLike, split: str = "train") -> pd.DataFrame:
    """A crystal table from a file, a URL or a Hugging Face hub dataset id (`owner/name`)."""
    text = str(source)
    if os.path.isdir(text):
        raise IsADirectoryError(f"{text}: is a folder, expected a table file (csv, json, parquet)")
    if os.path.exists(text) or text.startswith(("http://", "https://", "s3://", "gs://")):
        name = text.lower()
        for ext in (".xz", ".gz", ".bz2", ".zip", ".zst"):
            name = name.removesuffix(ext)
        try:
            if name.endswith(".parquet"):
                return pd.read_parquet(text)
            if name.endswith(".jsonl"):
                return pd.read_json(text, lines=True)
            if name.endswith(".json"):
                return pd.read_json(text)
            return pd.read_csv(text, sep="\t" if name.endswith(".tsv") else ",")
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, EOFError) as exc:
            raise ValueError(f"{text}: not a readable table ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if _is_table_path(text):
        raise FileNotFoundError(f"no such file: {text}")
    hub_id = text.removeprefix("hf://datasets/").removeprefix("hf://")
    if hub_id.count("/") != 1:
        raise FileNotFoundError(f"{text!r} is neither a file, a URL nor a hub dataset id (owner/name)")
    import datasets

    return datasets.load_dataset(hub_id, split=split).to_pandas()


def _column(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in df.columns), None)


# ---------------------------------------------------------------------- one row


@lru_cache(maxsize=8)
def _formats(fmt: str, symprec: float, options_json: str):
    options = json.loads(options_json)
    record_fmt = WyckoffFormat(symprec=symprec, **(options if fmt == "wyckoff" else {}))
    text_fmt = record_fmt if fmt == "wyckoff" else get_format(fmt, **options)
    return record_fmt, text_fmt


def encode_row(cif: str, dim: int, properties: dict[str, Any], opts: PrepareOptions) -> dict[str, Any]:
    """Record + text + conditions of one CIF; raises XtallmError with the reason."""
    record_fmt, text_fmt = _formats(opts.fmt, opts.symprec, json.dumps(opts.fmt_options, sort_keys=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = parse_cif(cif)
    record = record_fmt.record(structure, dim=dim, max_atoms=opts.max_atoms)
    body = record_fmt.encode_record(record)  # verified: the text rebuilds the group
    if text_fmt is not record_fmt:
        body = text_fmt.encode(record.to_structure(vacuum=record_fmt.vacuum))
    rebuilt = record.to_structure(vacuum=record_fmt.vacuum)
    conditions = structure_conditions(rebuilt, dim, record.group)
    clean = {k: v for k, v in properties.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    conditions.update(validate_conditions(clean))
    return {
        "dim": dim,
        "group": record.group,
        "n_atoms": record.n_atoms,
        "n_sites": len(record.sites),
        "formula": conditions["formula"],
        "text": body,
        "record": json.dumps(record.to_dict()),
        "conditions": json.dumps(conditions),
    }


def _encode_batch(batch: dict[str, list], opts: PrepareOptions) -> dict[str, list]:
    keys = ("ok", "error", "dim", "group", "n_atoms", "n_sites", "formula", "text", "record", "conditions")
    out: dict[str, list] = {k: [] for k in keys}
    n = len(batch["_cif"])
    for i in range(n):
        props = {k: batch[f"_prop_{k}"][i] for k in PROPERTY_COLUMNS if f"_prop_{k}" in batch}
        try:
            row = encode_row(batch["_cif"][i], int(batch["_dim"][i]), props, opts)
            row.update(ok=True, error=None)
        except (XtallmError, ValueError, KeyError, IndexError, TypeError, ArithmeticError) as exc:
            row = {k: None for k in keys}
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        for k in keys:
            out[k].append(row[k])
    return out


# ---------------------------------------------------------------------- whole tables


def _fingerprint(source: str, opts: PrepareOptions) -> str:
    h = hashlib.sha256()
    h.update(CACHE_VERSION.encode())
    if os.path.exists(source):
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(source.encode())
    h.update(json.dumps(asdict(opts), sort_keys=True).encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XTALLM_CACHE", Path.home() / ".cache" / "xtallm")) / "datasets"


def prepare_dataset(
    source: str | os.PathLike,
    options: PrepareOptions | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> PreparedData:
    """Encode every crystal of a table into a `datasets.Dataset` (cached on disk)."""
    import datasets

    opts = options or PrepareOptions()
    source = str(source)
    if os.path.isdir(source):
        raise IsADirectoryError(f"{source}: is a folder, expected a table file (csv, json, parquet)")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / _fingerprint(source, opts)
    if use_cache and (path / "dataset_info.json").exists():
        failures = pd.read_csv(path / "failures.csv") if (path / "failures.csv").exists() else _no_failures()
        meta = json.loads((path / "prepare.json").read_text())
        return PreparedData(datasets.load_from_disk(str(path)), failures, meta["n_rows"], path)

    df = read_table(source)
    if opts.limit:
        df = df.head(opts.limit)
    cif_col = opts.cif_column or _column(df, ("cif_layer_std", "cif"))
    if cif_col is None or cif_col not in df.columns:
        raise ValueError(f"{source}: no CIF column (looked for {opts.cif_column or 'cif_layer_std, cif'})")
    if opts.dim is not None:
        dims = [opts.dim] * len(df)
    elif "dim" in df.columns:
        dims = df["dim"].astype(int).tolist()
    else:
        dims = [2 if cif_col == "cif_layer_std" else 3] * len(df)
    id_col = _column(df, ID_COLUMNS)
    table = pd.DataFrame(
        {
            "row": range(len(df)),
            "id": df[id_col].astype(str).tolist() if id_col else [str(i) for i in range(len(df))],
            "_cif": df[cif_col].astype(str).tolist(),
            "_dim": dims,
        }
    )
    for key, names in PROPERTY_COLUMNS.items():
        col = _column(df, names)
        if col is not None:
            table[f"_prop_{key}"] = pd.to_numeric(df[col], errors="coerce").astype(float)
    raw = datasets.Dataset.from_pandas(table, preserve_index=False)
    num_proc = num_proc if num_proc is not None else default_num_proc()
    # explicit types: a chunk where every row encodes has only None errors, which datasets cannot type
    text, integer = datasets.Value("string"), datasets.Value("int64")
    features = datasets.Features(
        row=integer, id=text, _cif=text, ok=datasets.Value("bool"), error=text, dim=integer, group=integer,
        n_atoms=integer, n_sites=integer, formula=text, text=text, record=text, conditions=text,
    )
    encoded = raw.map(
        _encode_batch,
        fn_kwargs={"opts": opts},
        features=features,
        batched=True,
        batch_size=64,
        num_proc=num_proc if num_proc > 1 and len(raw) >= 128 else None,
        desc=f"encoding {Path(source).name}",
        remove_columns=[c for c in raw.column_names if c.startswith("_prop_") or c == "_dim"],
    )
    encoded = encoded.rename_column("_cif", "cif")
    failed = encoded.filter(lambda ok: not ok, input_columns="ok")
    failures = pd.DataFrame({"row": failed["row"], "id": failed["id"], "error": failed["error"]}) if len(failed) else _no_failures()
    good = encoded.filter(lambda ok: ok, input_columns="ok").remove_columns(["ok", "error"])
    if not use_cache:  # --no-cache: nothing is read from or written to the cache folder
        return PreparedData(good, failures, len(df), None)
    path.mkdir(parents=True, exist_ok=True)
    good.save_to_disk(str(path))
    failures.to_csv(path / "failures.csv", index=False)
    (path / "prepare.json").write_text(json.dumps({"source": source, "n_rows": len(df), "options": asdict(opts)}, indent=2))
    return PreparedData(datasets.load_from_disk(str(path)), failures, len(df), path)


def _no_failures() -> pd.DataFrame:
    return pd.DataFrame({"row": pd.Series(dtype=int), "id": pd.Series(dtype=str), "error": pd.Series(dtype=str)})
