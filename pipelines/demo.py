"""`xtallm demo`: the representation on the embedded example crystals, end to end.

Encodes the shipped bulk (MP-20) and monolayer (MC2D) examples, decodes every text back,
checks the rebuilt crystal against the original (same group, StructureMatcher match) and
writes the datasets, a few example texts and a summary to the output folder.
"""

from __future__ import annotations

import json
import warnings
from importlib import resources
from pathlib import Path

from pymatgen.analysis.structure_matcher import StructureMatcher
from tqdm import tqdm

import tokenization
from tokenization.data import PrepareOptions
from tokenization.formats import parse_cif
from tokenization.record import CrystalRecord, detect_group
from tokenization.tokenizer import build_crystal_tokenizer

from .prepare import prepare

EXAMPLES = {"bulk": "bulk_examples.csv", "layers": "layer_examples.csv"}


def example_path(name: str) -> Path:
    return Path(str(resources.files("tokenization.examples") / EXAMPLES[name]))


def run_demo(out: str | Path, num_proc: int | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_crystal_tokenizer()
    tokenizer.save_pretrained(str(out / "tokenizer"))
    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    summary: dict = {}
    lines: list[str] = []
    for name in EXAMPLES:
        prepared = prepare(str(example_path(name)), out / name, PrepareOptions(), num_proc=num_proc)
        ds = prepared.dataset
        matched = same_group = 0
        n_tokens = []
        for row in tqdm(ds, desc=f"round trip {name}", leave=False):
            record = CrystalRecord.from_dict(json.loads(row["record"]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                original = parse_cif(row["cif"])
            rebuilt = tokenization.decode(row["text"], vacuum=_vacuum(original) if row["dim"] == 2 else 15.0)
            same_group += int(detect_group(rebuilt, row["dim"], symprec=0.01) == record.group)
            matched += int(matcher.fit(original if row["dim"] == 3 else _layer(original), rebuilt))
            n_tokens.append(len(tokenizer(row["text"])["input_ids"]))
        summary[name] = {
            "rows": prepared.n_rows,
            "encoded": len(ds),
            "failed": len(prepared.failures),
            "same_group_after_decode": same_group,
            "structure_matcher_match": matched,
            "mean_tokens": round(sum(n_tokens) / max(len(n_tokens), 1), 1),
        }
        for row in ds.select(range(min(3, len(ds)))):
            header = tokenization.format_header(json.loads(row["conditions"]))
            lines += [f"# {name}: {row['id']}", header, row["text"], ""]
    (out / "examples.txt").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _layer(structure):
    from tokenization.record import layer_cell

    return layer_cell(structure)


def _vacuum(structure) -> float:
    layer = _layer(structure)
    z = layer.cart_coords[:, 2]
    return float(layer.lattice.c - (z.max() - z.min()))
