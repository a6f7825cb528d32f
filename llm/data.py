"""Training examples: conditions prompt + crystal text + EOS, loss on the crystal only.

Each example draws, from a seed that depends only on (seed, epoch, index), a random subset
of its conditions (sometimes none, so one model serves conditional and unconditional prompts)
and an augmented but equivalent text of its crystal. Deterministic draws make a resumed run
see exactly the batches the interrupted one would have seen.

A *pretokenized* folder (pipelines/training_data.py) holds those draws already made: K token-id
variants per crystal, variant `epoch % K` used in each epoch. Training from it needs only torch
and transformers, not pymatgen/moyopy/datasets (so it runs on a bare GPU machine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .config import DataConfig

IGNORE_INDEX = -100
PRETOKENIZED_META = "pretokenized.json"


def load_sources(sources: list[str], cfg: DataConfig):
    """Concatenate prepared datasets: folders from `xtallm data prepare`, or tables (prepared and cached)."""
    import datasets

    from xtallm.tokenization.data import PrepareOptions, prepare_dataset

    parts = []
    for source in sources:
        path = Path(source)
        if path.is_dir() and (path / "dataset_info.json").exists():
            ds = datasets.load_from_disk(str(path))
        else:
            options = PrepareOptions(fmt=cfg.fmt, symprec=cfg.symprec, max_atoms=cfg.max_atoms, limit=cfg.limit)
            ds = prepare_dataset(source, options, num_proc=cfg.num_proc).dataset
        if cfg.limit:
            ds = ds.select(range(min(cfg.limit, len(ds))))
        parts.append(ds.select_columns(["id", "dim", "group", "text", "record", "conditions"]))
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return ds.filter(lambda d: d in cfg.dims, input_columns="dim")


def prompt_text(conditions: dict[str, Any]) -> str:
    """The prompt a model sees before the crystal: a header line, or nothing."""
    from xtallm.tokenization import format_header

    header = format_header(conditions)
    return header + "\n" if header else ""


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, body: str) -> dict[str, list[int]]:
    """input_ids and labels (prompt masked). BOS/EOS added by hand so any tokenizer works."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = bos + (tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
    target_ids = tokenizer(body, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + target_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids}


class CrystalExamples(torch.utils.data.Dataset):
    def __init__(self, rows, tokenizer: PreTrainedTokenizerBase, cfg: DataConfig, seed: int, train: bool):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.seed = seed
        self.train = train
        self.epoch = 0
        from xtallm.tokenization import get_format

        self.fmt = get_format(cfg.fmt) if cfg.fmt in ("wyckoff", "xyz") else None
        self.texts = rows["text"]
        self.records = rows["record"]
        self.conditions = [
            {k: v for k, v in json.loads(c).items() if k in cfg.conditions} for c in rows["conditions"]
        ]
        # Keep examples whose longest form (all conditions) fits; augmentations keep the length.
        lengths = [len(self._encode(i, all_conditions=True)["input_ids"]) for i in range(len(self.texts))]
        self.index = [i for i, n in enumerate(lengths) if n <= cfg.max_length]
        self.lengths = [lengths[i] for i in self.index]
        self.dropped = len(lengths) - len(self.index)
        names = rows.column_names if hasattr(rows, "column_names") else list(rows)
        dims = rows["dim"] if "dim" in names else [json.loads(c).get("dim") for c in rows["conditions"]]
        # what the kept examples hold (the model card reports this, not the recipe's wishes)
        self.trained_on = {"dims": sorted({int(dims[i]) for i in self.index if dims[i] is not None}),
                           "conditions": sorted({k for i in self.index for k in self.conditions[i]}), "examples": len(self.index)}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch if self.train else 0, i])

    def _encode(self, i: int, all_conditions: bool = False) -> dict[str, list[int]]:
        rng = self._rng(i)
        conditions = self.conditions[i]
        if not all_conditions:
            always = self.cfg.always_conditions
            if not always and rng.random() < self.cfg.unconditional_prob:
                conditions = {}
            else:
                conditions = {k: v for k, v in conditions.items() if k in always or rng.random() < self.cfg.condition_keep_prob}
        body = self.texts[i]
        if self.train and self.cfg.augment and self.fmt is not None and not all_conditions:
            from xtallm.tokenization.augment import augmented_text
            from xtallm.tokenization.record import CrystalRecord

            record = CrystalRecord.from_dict(json.loads(self.records[i]))
            body = augmented_text(record, self.fmt, rng)
        return encode_example(self.tokenizer, prompt_text(conditions), body)

    def __getitem__(self, k: int) -> dict[str, list[int]]:
        return self._encode(self.index[k])


def is_pretokenized(sources: list[str]) -> bool:
    """True when every source is a pretokenized folder (mixing with tables is refused)."""
    flags = [Path(s, PRETOKENIZED_META).exists() for s in sources]
    if any(flags) and not all(flags):
        raise ValueError(f"mix of pretokenized folders and tables in {sources}: pretokenize all or none")
    return bool(flags) and all(flags)


class PretokenizedExamples(torch.utils.data.Dataset):
    """Examples whose condition draws and augmentations were made ahead of time.

    Folder layout: `pretokenized.json` ({"n_examples", "n_variants", ...}), `input_ids.npy`
    (all token ids, flat), `offsets.npy` (n_examples * n_variants + 1), `prompt_len.npy`; or the
    same three arrays in one compressed `tokens.npz` (pipelines.training_data.compact).
    Example i in epoch e is row i * K + (e % K); the prompt part is masked from the loss.
    Several folders are concatenated (each keeps its own K).
    """

    def __init__(self, sources: list[str], max_length: int, train: bool):
        self.train = train
        self.epoch = 0
        self.parts = []
        for source in sources:
            meta = json.loads(Path(source, PRETOKENIZED_META).read_text())
            if Path(source, "tokens.npz").exists():  # compact form (uint8 ids, compressed) that travels
                arrays = np.load(Path(source, "tokens.npz"))
                ids, offsets, prompt_len = arrays["input_ids"], arrays["offsets"], arrays["prompt_len"]
            else:
                ids = np.load(Path(source, "input_ids.npy"), mmap_mode="r")
                offsets = np.load(Path(source, "offsets.npy"))
                prompt_len = np.load(Path(source, "prompt_len.npy"))
            k = int(meta["n_variants"])
            n = int(meta["n_examples"])
            if len(offsets) != n * k + 1 or len(prompt_len) != n * k:
                raise ValueError(f"{source}: offsets/prompt_len do not match {n} examples x {k} variants")
            self.parts.append((ids, offsets, prompt_len, k, n))
        self.index = [(p, i) for p, part in enumerate(self.parts) for i in range(part[4])]
        metas = [json.loads(Path(source, PRETOKENIZED_META).read_text()) for source in sources]
        dims = sorted({int(d) for m in metas for d in m.get("dims", [])})
        conditions = sorted({c for m in metas for c in m.get("conditions", [])})
        self.trained_on = {"dims": dims, "conditions": conditions, "examples": len(self.index)} if dims else None
        self.lengths = [int(self.parts[p][1][i * self.parts[p][3] + 1] - self.parts[p][1][i * self.parts[p][3]]) for p, i in self.index]
        keep = [j for j, n in enumerate(self.lengths) if n <= max_length]
        self.dropped = len(self.index) - len(keep)
        self.index = [self.index[j] for j in keep]
        self.lengths = [self.lengths[j] for j in keep]
        if self.trained_on:
            self.trained_on["examples"] = len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict[str, list[int]]:
        p, i = self.index[k]
        ids, offsets, prompt_len, n_variants, _ = self.parts[p]
        row = i * n_variants + ((self.epoch if self.train else 0) % n_variants)
        tokens = ids[offsets[row] : offsets[row + 1]].astype(np.int64).tolist()
        n_prompt = int(prompt_len[row])
        return {"input_ids": tokens, "labels": [IGNORE_INDEX] * n_prompt + tokens[n_prompt:]}


def build_examples(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int, main_process_first=None):
    """(train, eval) example sets from tables/prepared folders, or from pretokenized folders."""
    import contextlib

    if is_pretokenized(cfg.train):
        if not cfg.eval or not is_pretokenized(cfg.eval):
            raise ValueError("pretokenized training data needs data.eval pointing at pretokenized folders too")
        return (
            PretokenizedExamples(cfg.train, cfg.max_length, train=True),
            PretokenizedExamples(cfg.eval, cfg.max_length, train=False),
        )
    with (main_process_first() if main_process_first else contextlib.nullcontext()):  # first process prepares the cache
        rows = load_sources(cfg.train, cfg)
        if cfg.eval:
            eval_rows = load_sources(cfg.eval, cfg)
        else:
            split = rows.train_test_split(test_size=cfg.eval_fraction, seed=seed)
            rows, eval_rows = split["train"], split["test"]
    return CrystalExamples(rows, tokenizer, cfg, seed, train=True), CrystalExamples(eval_rows, tokenizer, cfg, seed, train=False)


class PackedExamples(torch.utils.data.Dataset):
    """Consecutive examples concatenated into blocks of at most `max_length` tokens."""

    def __init__(self, examples: CrystalExamples, max_length: int, seed: int):
        self.examples = examples
        order = np.random.default_rng(seed).permutation(len(examples))
        self.bins: list[list[int]] = [[]]
        used = 0
        for k in order:
            n = examples.lengths[k]
            if used + n > max_length and self.bins[-1]:
                self.bins.append([])
                used = 0
            self.bins[-1].append(int(k))
            used += n

    def set_epoch(self, epoch: int) -> None:
        self.examples.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, b: int) -> dict[str, list[int]]:
        input_ids: list[int] = []
        labels: list[int] = []
        for k in self.bins[b]:
            ex = self.examples[k]
            input_ids += ex["input_ids"]
            labels += ex["labels"]
        return {"input_ids": input_ids, "labels": labels}


def collate(batch: list[dict[str, list[int]]], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example (rounded up to `multiple`, fewer shapes for a compiled
    model); padding is masked out of attention and loss."""
    width = max(len(ex["input_ids"]) for ex in batch)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex["input_ids"])
        ids[row, :n] = torch.tensor(ex["input_ids"])
        labels[row, :n] = torch.tensor(ex["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
