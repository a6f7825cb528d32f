"""Training data for the embedded default models: held-out splits, data mixes, pretokenized sets.

    python -m xtallm.pipelines.training_data splits --data ../shared/data      # configs/data/*.csv (ids + rule)
    python -m xtallm.pipelines.training_data build  --data ../shared/data --out .devdata
    python -m xtallm.pipelines.training_data lm --tokenizer smollm2 --variants 2 --data ../shared/data --out .devdata/smollm2

Held-out splits (named, versioned, deterministic, no RNG state involved):
- `mp20-heldout-v1`: MP-20 rows (train_partial + val) whose key u = sha256("mp20-heldout-v1:" +
  material_id) read as a fraction is < 0.08 (about 1,000 crystals).
- `twod-heldout-v1`: monolayers (2DMatPedia `cif_layer_std`, MC2D) with u = sha256("twod-heldout-v1:"
  + source + ":" + id) < 0.05 (about 300); 2DMatPedia has no ids, its id is the row number.
A training row is dropped from EVERY source when it has a held-out material_id, or the same
reduced formula, dimension and (space/layer) group as a held-out crystal: the same material
from another database (MPTS-52, WBM, MC2D vs 2DMatPedia) never leaks into training.

Pretokenized sets (llm/data.py `PretokenizedExamples`) for `bulk`, `2d` (the joint mix trains on
both folders) and `lora_lg` (2D with dim and lg in every prompt) hold K condition-draw + site-permutation
variants per crystal, drawn exactly as `CrystalExamples` draws them in epoch 0..K-1, so the GPU
machine needs only torch + transformers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from importlib import resources

SPLIT_DIR = Path(str(resources.files("xtallm.configs") / "data"))  # the committed split files (package data)

MP20_SPLIT = "mp20-heldout-v1"
TWOD_SPLIT = "twod-heldout-v1"
MP20_FRACTION = 0.08
TWOD_FRACTION = 0.05

# name -> file under the data folder
BULK_SOURCES = {
    "mp20_train_partial": "mp20/train_partial.csv.xz",
    "mp20_val": "mp20/val.csv.xz",
    "mpts52_val": "mpts52/val.csv.xz",
    "perov5_val": "perov_5/val.csv.xz",
    "carbon24_val": "carbon_24/val.csv.xz",
    "wbm": "wbm/wbm_10k.csv.xz",  # WBM (no ids: id = row number); same exclusion rule as every source
}
TWOD_SOURCES = {"2dmatpedia": "twod/2dmatpedia_5914.csv.xz", "mc2d": "twod/mc2d_258.csv.xz"}
MP20_KEYS = ("mp20_train_partial", "mp20_val")
MIXES = {"joint": (*BULK_SOURCES, *TWOD_SOURCES), "bulk": tuple(BULK_SOURCES), "2d": tuple(TWOD_SOURCES)}
# pretokenized sets and their sources: WBM has its own folder (added later, the others stay as built)
PRETOK_SETS = {
    "bulk": tuple(s for s in BULK_SOURCES if s != "wbm"),
    "wbm": ("wbm",),
    "2d": tuple(TWOD_SOURCES),
    "lora_lg": tuple(TWOD_SOURCES),
}
# pretokenized folders per training set: the joint mix is the bulk, WBM and 2D folders together
MIX_FOLDERS = {"joint": ("bulk", "wbm", "2d"), "bulk": ("bulk", "wbm"), "2d": ("2d",), "lora_lg": ("lora_lg",)}


def data_folder(data: str | Path | None = None) -> Path:
    """The folder of source tables: `data`, else $XTALLM_DATA; an error naming both when neither is there."""
    value = data if data is not None else os.environ.get("XTALLM_DATA")
    if value is None:
        raise FileNotFoundError("no data folder: pass --data (the team's shared/data) or set XTALLM_DATA")
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path}: no such folder")
    return path


def split_fraction(split: str, key: str) -> float:
    """A row's position in [0, 1) for `split`: a hash, so the split never depends on row order."""
    return int(hashlib.sha256(f"{split}:{key}".encode()).hexdigest()[:12], 16) / 16**12


def reduced_formula(formula: str) -> str:
    from pymatgen.core import Composition

    return Composition(formula).reduced_formula


def _source_path(data: Path, name: str) -> str:
    rel = {**BULK_SOURCES, **TWOD_SOURCES}[name]
    path = (data / rel).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing training source {name!r} (see shared/data/MANIFEST.md)")
    return str(path)


def prepared(data: Path, name: str, num_proc: int | None = None) -> pd.DataFrame:
    """Encoded rows of one source (tokenization.data cache) with the keys the split needs."""
    from xtallm.tokenization.data import PrepareOptions, prepare_dataset

    ds = prepare_dataset(_source_path(data, name), PrepareOptions(), num_proc=num_proc).dataset
    df = ds.select_columns(["id", "dim", "group", "formula"]).to_pandas()
    df["source"] = name
    df["reduced_formula"] = [reduced_formula(f) for f in df["formula"]]
    return df


@dataclass
class Splits:
    mp20: pd.DataFrame  # material_id, source, reduced_formula, group
    twod: pd.DataFrame  # key, source, id, reduced_formula, group

    def excluded(self, df: pd.DataFrame) -> np.ndarray:
        """Mask of rows that must not be trained on: held-out ids and same-material duplicates."""
        ids = set(self.mp20["material_id"]) | set(self.twod["key"])
        same = set(zip(self.mp20["reduced_formula"], [3] * len(self.mp20), self.mp20["group"]))
        same |= set(zip(self.twod["reduced_formula"], [2] * len(self.twod), self.twod["group"]))
        keys = df["source"] + ":" + df["id"].astype(str)
        by_id = df["id"].astype(str).isin(ids) | keys.isin(ids)
        by_material = pd.Series([t in same for t in zip(df["reduced_formula"], df["dim"], df["group"])], index=df.index)
        return (by_id | by_material).to_numpy()


def make_splits(data: Path, num_proc: int | None = None) -> Splits:
    """Both held-out splits from the encoded sources (deterministic; see the module docstring)."""
    mp = pd.concat([prepared(data, n, num_proc) for n in MP20_KEYS]).drop_duplicates("id")
    mp = mp[[split_fraction(MP20_SPLIT, i) < MP20_FRACTION for i in mp["id"]]]
    mp20 = mp.rename(columns={"id": "material_id"})[["material_id", "source", "reduced_formula", "group"]]
    twod = pd.concat([prepared(data, n, num_proc) for n in TWOD_SOURCES])
    twod["key"] = twod["source"] + ":" + twod["id"].astype(str)
    twod = twod[[split_fraction(TWOD_SPLIT, k) < TWOD_FRACTION for k in twod["key"]]]
    twod = twod[["key", "source", "id", "reduced_formula", "group"]]
    return Splits(mp20.sort_values("material_id").reset_index(drop=True), twod.sort_values("key").reset_index(drop=True))


def write_splits(splits: Splits, out: Path = SPLIT_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{MP20_SPLIT}.csv", out / f"{TWOD_SPLIT}.csv"]
    splits.mp20.to_csv(paths[0], index=False)
    splits.twod.to_csv(paths[1], index=False)
    return paths


def read_splits(out: Path = SPLIT_DIR) -> Splits:
    """The committed split files (what others evaluate against)."""
    return Splits(pd.read_csv(out / f"{MP20_SPLIT}.csv", dtype={"material_id": str}), pd.read_csv(out / f"{TWOD_SPLIT}.csv", dtype={"id": str}))


def heldout_reference(split: str, data: Path | None = None, splits: Splits | None = None) -> pd.DataFrame:
    """The held-out crystals as a table with a `cif` column (for `xtallm evaluate --reference`)."""
    data = data_folder(data)
    splits = splits or read_splits()
    if split == MP20_SPLIT:
        frames = [pd.read_csv(_source_path(data, n)) for n in MP20_KEYS]
        df = pd.concat(frames).drop_duplicates("material_id")
        df = df[df["material_id"].astype(str).isin(set(splits.mp20["material_id"]))].reset_index(drop=True)
        return df.assign(dim=3)
    if split == TWOD_SPLIT:
        parts = []
        for name in TWOD_SOURCES:
            df = pd.read_csv(_source_path(data, name))
            ids = df["mc2d_structure_label"].astype(str) if "mc2d_structure_label" in df else pd.Series(range(len(df))).astype(str)
            keep = (name + ":" + ids).isin(set(splits.twod["key"])).to_numpy()
            part = df[keep].copy()
            part["key"] = (name + ":" + ids)[keep].to_numpy()
            part["cif"] = part["cif_layer_std"]  # the layer cell (vacuum along c) is what the models write
            parts.append(part[["key", "cif", "formula"] + [c for c in ("band_gap_eV",) if c in part]])
        return pd.concat(parts).reset_index(drop=True).assign(dim=2)  # `dim`: xtallm evaluate reads them as monolayers
    raise ValueError(f"unknown split {split!r}: {MP20_SPLIT} or {TWOD_SPLIT}")


def trained_rows(data: Path, name: str, splits: Splits, num_proc: int | None = None) -> pd.DataFrame:
    """`cif` and `dim` of the rows of one source that training kept: the novelty reference.

    The held-out crystals and their same-material duplicates are not training data, so a sample
    that reproduces one counts as novel; rows the encoder could not read were not trained on either."""
    from xtallm.tokenization.data import ID_COLUMNS

    keys = prepared(data, name, num_proc)
    kept = set(keys["id"][~splits.excluded(keys)].astype(str))
    df = pd.read_csv(_source_path(data, name))
    id_col = next((c for c in ID_COLUMNS if c in df.columns), None)  # as tokenization.data assigns ids
    ids = df[id_col].astype(str) if id_col else pd.Series(range(len(df))).astype(str)
    df = df[ids.isin(kept).to_numpy()]
    cif = df["cif_layer_std"] if "cif_layer_std" in df else df["cif"]
    return pd.DataFrame({"cif": cif.to_numpy(), "dim": 2 if name in TWOD_SOURCES else 3})


def training_rows(data: Path, sources: tuple[str, ...], splits: Splits, num_proc: int | None = None):
    """The encoded rows of `sources` minus the held-out crystals, as one `datasets.Dataset`."""
    import datasets

    from xtallm.tokenization.data import PrepareOptions, prepare_dataset

    parts, report = [], {}
    for name in sources:
        ds = prepare_dataset(_source_path(data, name), PrepareOptions(), num_proc=num_proc).dataset
        keys = ds.select_columns(["id", "dim", "group", "formula"]).to_pandas()
        keys["source"] = name
        keys["reduced_formula"] = [reduced_formula(f) for f in keys["formula"]]
        drop = splits.excluded(keys)
        report[name] = {"rows": len(ds), "held_out_or_duplicate": int(drop.sum())}
        parts.append(ds.select(np.flatnonzero(~drop)).select_columns(["id", "dim", "group", "text", "record", "conditions"]))
    return datasets.concatenate_datasets(parts), report


def heldout_rows(data: Path, splits: Splits, which: tuple[str, ...], num_proc: int | None = None):
    """Encoded held-out rows (eval loss during training)."""
    import datasets

    from xtallm.tokenization.data import PrepareOptions, prepare_dataset

    parts = []
    names = (MP20_KEYS if MP20_SPLIT in which else ()) + (tuple(TWOD_SOURCES) if TWOD_SPLIT in which else ())
    seen: set[str] = set()
    for name in names:
        ds = prepare_dataset(_source_path(data, name), PrepareOptions(), num_proc=num_proc).dataset
        ids = [str(i) for i in ds["id"]]
        want = set(splits.mp20["material_id"]) if name in MP20_KEYS else {k.split(":", 1)[1] for k in splits.twod["key"] if k.startswith(name + ":")}
        keep = [j for j, i in enumerate(ids) if i in want and (name not in MP20_KEYS or i not in seen)]
        seen |= {ids[j] for j in keep}
        parts.append(ds.select(keep).select_columns(["id", "dim", "group", "text", "record", "conditions"]))
    return datasets.concatenate_datasets(parts)


def pretokenize(rows, tokenizer, cfg, out: Path, n_variants: int, seed: int = 0, train: bool = True) -> dict:
    """Write K variants of every example, drawn by `CrystalExamples` exactly as in epochs 0..K-1."""
    from xtallm.llm.data import IGNORE_INDEX, PRETOKENIZED_META, CrystalExamples

    columns = rows.select_columns(["dim", "text", "record", "conditions"]).to_dict()  # lists: 2x faster than Arrow lookups
    examples = CrystalExamples(columns, tokenizer, cfg, seed, train=train)
    n = len(examples)
    chunks, offsets, prompt_len = [], [0], []
    for i in range(n):
        for v in range(n_variants):
            examples.set_epoch(v)
            ex = examples[i]
            chunks.append(np.asarray(ex["input_ids"], dtype=np.uint16))
            offsets.append(offsets[-1] + len(ex["input_ids"]))
            prompt_len.append(sum(1 for t in ex["labels"] if t == IGNORE_INDEX))
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "input_ids.npy", np.concatenate(chunks))
    np.save(out / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(out / "prompt_len.npy", np.asarray(prompt_len, dtype=np.int32))
    lengths = np.diff(offsets)
    meta = {
        "n_examples": n, "n_variants": n_variants, "dropped_too_long": examples.dropped, "seed": seed,
        "mean_tokens": float(lengths.mean()), "tokens_per_epoch": int(lengths.sum() / n_variants),
        "dims": sorted({int(d) for d in columns["dim"]}), "conditions": list(cfg.conditions),
        "always_conditions": list(cfg.always_conditions), "max_length": cfg.max_length,
    }
    (out / PRETOKENIZED_META).write_text(json.dumps(meta, indent=2))
    compact(out)
    tokenizer.save_pretrained(str(out.parent / "tokenizer"))
    return meta


def compact(folder: Path) -> int:
    """npy arrays -> one compressed tokens.npz (uint8 ids when the vocabulary allows): 64 MiB carry limit."""
    ids = np.load(folder / "input_ids.npy")
    arrays = {
        "input_ids": ids.astype(np.uint8) if ids.max() < 256 else ids,
        "offsets": np.load(folder / "offsets.npy"),
        "prompt_len": np.load(folder / "prompt_len.npy").astype(np.int16),
    }
    np.savez_compressed(folder / "tokens.npz", **arrays)
    for name in ("input_ids.npy", "offsets.npy", "prompt_len.npy"):
        (folder / name).unlink()
    return (folder / "tokens.npz").stat().st_size


def sampling_prompts(tokenizer, splits: Splits, n_bulk: int = 1000, n_2d: int = 2600, per_lg: int = 25,
                     n_cond: int = 300, seed: int = 0) -> dict[str, list[dict]]:
    """Prompt sets for the comparison: unconditional bulk (`dim=3`); 2D prompts `dim=2 lg=N`:
    `per_lg` for each of the 80 layer groups (`uniform`), the rest following the held-out 2D split's
    groups (`heldout`); and issue 7's conditional prompts (`cond`): `n_cond` each of `dim=3 sg=N`,
    `dim=3 elements=...` and `dim=3 formula=...`, drawn (seeded) from the mp20-heldout-v1 crystals."""
    from pymatgen.core import Composition

    from xtallm.llm.prompts import prompt_ids
    from xtallm.tokenization.conditions import _elements, plain_formula

    bulk = [{"id": f"bulk-{k}", "conditions": {"dim": 3}} for k in range(n_bulk)]
    lgs = [g for g in range(1, 81) for _ in range(per_lg)]
    heldout = splits.twod["group"].astype(int).tolist()
    lgs += [heldout[k % len(heldout)] for k in range(n_2d - len(lgs))]
    twod = [{"id": f"2d-{k}", "conditions": {"dim": 2, "lg": g}, "set": "uniform" if k < 80 * per_lg else "heldout"} for k, g in enumerate(lgs)]
    rng = np.random.default_rng(seed)
    mp = splits.mp20.reset_index(drop=True)
    cond = []
    for kind in ("sg", "elements", "formula"):
        for k, j in enumerate(rng.choice(len(mp), n_cond, replace=len(mp) < n_cond)):
            comp = Composition(mp.loc[j, "reduced_formula"])
            value = {"sg": int(mp.loc[j, "group"]), "elements": _elements([e.symbol for e in comp.elements]),
                     "formula": plain_formula(comp)}[kind]
            cond.append({"id": f"cond-{kind}-{k}", "conditions": {"dim": 3, kind: value}, "set": kind})
    for row in bulk + twod + cond:
        row["prompt_ids"] = prompt_ids(tokenizer, row["conditions"])
    return {"bulk": bulk, "2d": twod, "cond": cond}


def build(data: Path, out: Path, variants: dict[str, int], num_proc: int | None = None, max_length: int = 512,
          only: tuple[str, ...] = ("bulk", "wbm", "2d", "lora_lg")) -> dict:
    """Pretokenized train/eval sets for every mix + the layer-group adapter, prompts, references."""
    from xtallm.llm.config import DataConfig
    from xtallm.tokenization.tokenizer import build_crystal_tokenizer

    tokenizer = build_crystal_tokenizer(model_max_length=max_length)
    splits = make_splits(data, num_proc)
    shared = "bulk" in only or "shared" in only  # one of several parallel builds writes the shared files
    if shared:
        write_splits(splits)
    report: dict = {"splits": {MP20_SPLIT: len(splits.mp20), TWOD_SPLIT: len(splits.twod)}}
    base_cfg = DataConfig(max_length=max_length)
    lg_cfg = DataConfig(max_length=max_length, dims=[2], always_conditions=["dim", "lg"], unconditional_prob=0.0)
    evals = {"bulk": (MP20_SPLIT,), "wbm": (), "2d": (TWOD_SPLIT,), "lora_lg": (TWOD_SPLIT,)}  # WBM: bulk_eval serves
    for mix, sources in PRETOK_SETS.items():
        if mix not in only:
            continue
        cfg = lg_cfg if mix == "lora_lg" else base_cfg
        rows, excluded = training_rows(data, sources, splits, num_proc)
        meta = pretokenize(rows, tokenizer, cfg, out / "pretok" / f"{mix}_train", variants.get(mix, 8))
        eval_meta = None
        if evals[mix]:
            eval_rows = heldout_rows(data, splits, evals[mix], num_proc)
            eval_meta = pretokenize(eval_rows, tokenizer, cfg, out / "pretok" / f"{mix}_eval", 1, train=False)
        report[mix] = {"sources": excluded, "train": meta, "eval": eval_meta}
        print(mix, json.dumps(report[mix]), flush=True)
    if not shared:
        return report
    prompts = sampling_prompts(tokenizer, splits)
    (out / "pretok").mkdir(parents=True, exist_ok=True)  # `--only shared` builds no set folder first
    (out / "pretok" / "prompts.json").write_text(json.dumps(prompts))
    ref = out / "ref"
    ref.mkdir(parents=True, exist_ok=True)
    for split in (MP20_SPLIT, TWOD_SPLIT):
        heldout_reference(split, data, splits).to_csv(ref / f"{split}.csv.gz", index=False)
    for mix, sources in MIXES.items():  # novelty references: the rows each mix trains on, with their CIFs
        pd.concat([trained_rows(data, name, splits, num_proc) for name in sources]).to_csv(ref / f"train_{mix}.csv.gz", index=False)
    meta = pd.read_csv(data / "mp20" / "train_meta_no_positions.csv.xz")  # MP-20 train cells without positions
    meta[~meta["material_id"].astype(str).isin(set(splits.mp20["material_id"]))].to_csv(ref / "train_meta_mp20.csv.gz", index=False)
    (out / "pretok" / f"build_report_{'_'.join(only) or 'none'}.json").write_text(json.dumps(report, indent=2))
    return report


def build_lm(data: Path, out: Path, tokenizer_name: str, variants: int = 2, max_length: int = 512, n_eval: int | None = 256,
             num_proc: int | None = None) -> dict:
    """Pretokenized MP-20 sets for a pretrained LM's own tokenizer (`smollm2`, a folder, a hub id):
    `out/pretok/mp20_train` (train_partial + val minus mp20-heldout-v1 and its same-material duplicates,
    exactly as the default's bulk set excludes them) and `out/pretok/mp20_eval` (held-out crystals, the
    first `n_eval` of a seeded shuffle: eval loss during training costs forward passes on a CPU)."""
    from transformers import AutoTokenizer

    from xtallm.llm.config import DataConfig
    from xtallm.llm.model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_name, "--tokenizer"), model_max_length=max_length)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    splits = read_splits()
    cfg = DataConfig(max_length=max_length)
    rows, excluded = training_rows(data, MP20_KEYS, splits, num_proc)
    meta = pretokenize(rows, tokenizer, cfg, out / "pretok" / "mp20_train", variants)
    eval_rows = heldout_rows(data, splits, (MP20_SPLIT,), num_proc)
    if n_eval and n_eval < len(eval_rows):
        eval_rows = eval_rows.shuffle(seed=0).select(range(n_eval))
    eval_meta = pretokenize(eval_rows, tokenizer, cfg, out / "pretok" / "mp20_eval", 1, train=False)
    report = {"tokenizer": tokenizer_name, "sources": excluded, "train": meta, "eval": eval_meta}
    (out / "pretok" / "build_report_lm.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["splits", "build", "lm"],
                        help="lm: MP-20 sets pretokenized with a pretrained LM's tokenizer (--tokenizer)")
    parser.add_argument("--data", default=os.environ.get("XTALLM_DATA"), required="XTALLM_DATA" not in os.environ,
                        help="folder with mp20/, twod/, ... (the team's shared/data; default: $XTALLM_DATA)")
    parser.add_argument("--out", default=".devdata", help="where pretokenized sets, prompts and references go")
    parser.add_argument("--variants", default="bulk=4,wbm=4,2d=12,lora_lg=6", help="variants per crystal, per mix")
    parser.add_argument("--only", default="bulk,wbm,2d,lora_lg",
                        help="pretokenize only these sets ('' for none; 'shared' = splits, prompts, references only)")
    parser.add_argument("--num-proc", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--tokenizer", default="smollm2", help="lm: the model whose tokenizer is used (short name, GGUF, folder)")
    parser.add_argument("--n-eval", type=int, default=256, help="lm: held-out crystals in the eval set (0: all)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if args.command == "lm":
        variants = int(args.variants) if args.variants.isdigit() else 2
        report = build_lm(data, Path(args.out), args.tokenizer, variants, n_eval=args.n_eval or None, num_proc=args.num_proc)
        print(json.dumps({k: report[k] for k in ("sources", "train", "eval")}))
        return 0
    if args.command == "splits":
        for path in write_splits(make_splits(data, args.num_proc)):
            print(path)
        return 0
    variants = {k: int(v) for k, v in (item.split("=") for item in args.variants.split(","))}
    build(data, Path(args.out), variants, args.num_proc, only=tuple(x for x in args.only.split(",") if x))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
