"""The sample schema that `xtallm sample`, `refine` and `evaluate` read and write (JSONL).

One object per sample: id, prompt, conditions, text, ok, error, cif, dim, group. Every
sample is kept: one that does not parse has ok=false and the ParseError message.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from pymatgen.io.cif import CifWriter

from tokenization import get_format
from tokenization.errors import XtallmError
from tokenization.record import detect_group

FIELDS = ("id", "prompt", "conditions", "text", "ok", "error", "cif", "dim", "group")


def decode_sample(text: str, fmt: str = "wyckoff", vacuum: float = 15.0) -> dict[str, Any]:
    """ok/error/cif/dim/group of one generated text."""
    try:
        if fmt == "wyckoff":
            # overlapping atoms from a collapsed orbit are a validity problem, not a parse failure
            f = get_format("wyckoff", vacuum=vacuum, strict=False)
            record = f.decode_record(text)
            structure = f.decode(text)
            dim, group = record.dim, record.group
        else:
            structure = get_format(fmt).decode(text)
            dim = 3
            group = detect_group(structure, 3, symprec=0.1)
        cif = structure_cif(structure, dim, group)
        return {"ok": True, "error": None, "cif": cif, "dim": dim, "group": group}
    except (XtallmError, ValueError, ArithmeticError, IndexError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "cif": None, "dim": None, "group": None}


LAYER_GROUP_TAG = "_xtallm_layer_group_IT_number"


def structure_cif(structure, dim: int, group: int | None) -> str:
    """CIF text (P1 setting); a monolayer also carries its layer group, which CIF has no tag for."""
    cif = str(CifWriter(structure))
    if dim == 2 and group:
        cif = cif.replace("_symmetry_space_group_name_H-M", f"{LAYER_GROUP_TAG}   {int(group)}\n_symmetry_space_group_name_H-M", 1)
    return cif


def declared_group(cif: str) -> tuple[int | None, int | None]:
    """(dim, group) a CIF declares: the xtallm layer-group tag, else a space group other than P1."""
    layer = re.search(rf"^{LAYER_GROUP_TAG}\s+(\d+)", cif, re.M)
    if layer:
        return 2, int(layer.group(1))
    bulk = re.search(r"^_(?:symmetry_Int_Tables_number|space_group_IT_number)\s+(\d+)", cif, re.M)
    if bulk and int(bulk.group(1)) > 1:
        return 3, int(bulk.group(1))
    return None, None


def read_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a samples.jsonl; a torn last line (killed writer) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


class SampleWriter:
    """Appends rows and flushes each batch, so a killed run loses at most the batch in flight."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = {row["id"] for row in read_samples(self.path)}
        self._repair_torn_tail()
        self.file = self.path.open("a")

    def _repair_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(keep)

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.file.write(json.dumps(row) + "\n")
            self.done.add(row["id"])
        self.file.flush()

    def close(self) -> None:
        self.file.close()
