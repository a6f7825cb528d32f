"""The sample row every stage reads and writes: `xtallm sample` -> `refine` -> `relax` / `evaluate`.

One `Sample` per crystal, one JSON object per line of a samples.jsonl:

    id, prompt, conditions, text, ok, error, cif, dim, group,          (every row)
    n_tokens, model, adapter, constrained, draws,                       (the sampler's)
    raw_cif, refined, refine_note, refined_text, refine_tau, detected_group,  (the refiner's)
    valid, invalid_reason                                               (the refiner's verdict on the row)

`dim` + `group` are one `GroupId` in code (a bare number is a space group or a layer group
depending on dim). The Wyckoff record of a row is parsed from its text once, when first asked
for. Unknown keys (a benchmark's own tags) are kept in `extra` and written back as they came.
Every sample is kept: one that does not parse has ok=false and the reason in `error`.

`read_samples` takes a samples.jsonl or a folder of CIFs (their declared group: the xtallm
layer-group tag, or a space group other than P1); `JsonlWriter` appends batch by batch, repairs
a torn last line left by a killed run and knows the ids already written, so stages resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from xtallm.tokenization import get_format
from xtallm.tokenization.errors import XtallmError
from xtallm.tokenization.record import CrystalRecord
from xtallm.tokenization.symmetry import GroupId

LAYER_GROUP_TAG = "_xtallm_layer_group_IT_number"
FIELDS = ("id", "prompt", "conditions", "text", "ok", "error", "cif", "dim", "group")  # in every row
_SAMPLER_FIELDS = ("n_tokens", "model", "adapter", "constrained", "draws")
_REFINER_FIELDS = ("raw_cif", "refined", "refine_note", "refined_text", "refine_tau", "detected_group", "valid", "invalid_reason")


@dataclass
class Sample:
    id: str
    text: str | None = None
    ok: bool = False
    error: str | None = None
    cif: str | None = None
    group: GroupId | None = None
    dim: int | None = None  # 3 bulk, 2 monolayer; the group's when there is one (a row may state dim alone)
    prompt: str | None = None
    conditions: dict[str, Any] = field(default_factory=dict)
    # the sampler's
    n_tokens: int | None = None
    model: str | None = None
    adapter: str | None = None
    constrained: bool | None = None
    draws: int | None = None
    # the refiner's (refined is None for a row that never went through refinement)
    raw_cif: str | None = None
    refined: bool | None = None
    refine_note: str | None = None
    refined_text: str | None = None
    refine_tau: float | None = None
    detected_group: int | None = None
    group_checked: bool = False  # detected_group was looked for (written only then)
    valid: bool | None = None  # after refinement: 0.5 Å protocol, per-species-pair rule and SMACT all pass
    invalid_reason: str | None = None  # which of them failed
    extra: dict[str, Any] = field(default_factory=dict)
    _record: CrystalRecord | None = field(default=None, repr=False, compare=False)
    _record_parsed: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.group is not None:
            if self.dim is not None and self.dim != self.group.dim:
                raise ValueError(f"sample {self.id}: dim={self.dim} but group {self.group}")
            self.dim = self.group.dim

    # ------------------------------------------------------------------ meaning
    @property
    def is_layer(self) -> bool:
        """Claims to be a monolayer: dim 2, or a prompt that asked for one (dim=2, lg=)."""
        return self.dim == 2 or self.conditions.get("dim") == 2 or "lg" in self.conditions

    @property
    def requested_group(self) -> GroupId | None:
        if "sg" in self.conditions:
            return GroupId(3, int(self.conditions["sg"]))
        if "lg" in self.conditions:
            return GroupId(2, int(self.conditions["lg"]))
        return None

    @property
    def record(self) -> CrystalRecord | None:
        """The Wyckoff record the text states (None for other formats or bad text), parsed once."""
        if not self._record_parsed:
            self._record_parsed = True
            if self.text and _states_group(self.text):
                try:
                    self._record = get_format("wyckoff", strict=False).decode_record(self.text)
                except (XtallmError, ValueError):
                    self._record = None
        return self._record

    def structure(self):
        """The crystal of this row (pymatgen Structure from its CIF), or None when it has none that reads."""
        if not (self.ok and self.cif):
            return None
        return read_cif(self.cif)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "prompt": self.prompt, "conditions": self.conditions, "text": self.text, "ok": self.ok,
            "error": self.error, "cif": self.cif, "dim": self.dim, "group": self.group.number if self.group else None,
        }
        for name in _SAMPLER_FIELDS:
            if getattr(self, name) is not None or name in ("model", "adapter"):
                out[name] = getattr(self, name)
        if self.refined is not None:
            out.update(raw_cif=self.raw_cif, refined=self.refined, refine_note=self.refine_note)
            if self.refined:
                out.update(refined_text=self.refined_text, refine_tau=self.refine_tau)
            if self.group_checked:
                out["detected_group"] = self.detected_group
            if self.valid is not None:
                out.update(valid=self.valid, invalid_reason=self.invalid_reason)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, row: dict[str, Any], where: str = "row") -> "Sample":
        """A row as written by `to_json` (or an older writer); a row without a usable id is an error row."""
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        sid = row.get("id")
        if sid is None or (isinstance(sid, str) and not sid.strip()):
            raise ValueError(f"{where}: no 'id'")
        group, dim = None, row.get("dim")
        if dim is not None and dim not in (2, 3):
            raise ValueError(f"{where}: dim={dim!r}, expected 2 or 3")
        if row.get("group") is not None:
            try:
                group = GroupId(int(dim or 3), int(row["group"]))
            except (TypeError, ValueError):
                raise ValueError(f"{where}: dim={dim!r} group={row.get('group')!r} is not a space or layer group") from None
        conditions = row.get("conditions") or {}
        if not isinstance(conditions, dict):
            raise ValueError(f"{where}: 'conditions' must be an object, got {conditions!r}")
        values = {k: v for k, v in row.items() if k in known and k not in ("id", "group", "dim", "conditions", "extra")
                  and not k.startswith("_")}
        sample = cls(id=str(sid), group=group, dim=dim, conditions=conditions, **values,
                     extra={k: v for k, v in row.items() if k not in known})
        sample.group_checked = "detected_group" in row
        sample.ok = bool(sample.ok) and bool(sample.cif)
        return sample


def _states_group(text: str) -> bool:
    lines = [ln.strip() for ln in text.strip().split("\n") if ln.strip()]
    body = lines[1:] if lines and "=" in lines[0] else lines
    return bool(body) and body[0].startswith(("sg ", "lg "))


def decode_sample(sample_id: str, text: str, fmt: str = "wyckoff", vacuum: float = 15.0) -> Sample:
    """A generated text as a Sample: the crystal, its CIF and group, or ok=False and the parse error.

    Overlapping atoms from a collapsed orbit are a validity problem, not a parse failure (strict=False)."""
    options = {"vacuum": vacuum, "strict": False} if fmt == "wyckoff" else {}
    try:
        decoded = get_format(fmt, **options).read(text)
        group = decoded.group
        cif = structure_cif(decoded.structure, group)
    except (XtallmError, ValueError, ArithmeticError, IndexError) as exc:
        return Sample(sample_id, text=text, ok=False, error=f"{type(exc).__name__}: {exc}")
    sample = Sample(sample_id, text=text, ok=True, cif=cif, group=group)
    sample._record, sample._record_parsed = decoded.record, True
    return sample


def structure_cif(structure, group: GroupId | None) -> str:
    """CIF text (P1 setting); a monolayer also carries its layer group, which CIF has no tag for."""
    from pymatgen.io.cif import CifWriter

    cif = str(CifWriter(structure))
    if group is not None and group.dim == 2:
        cif = cif.replace("_symmetry_space_group_name_H-M", f"{LAYER_GROUP_TAG}   {group.number}\n_symmetry_space_group_name_H-M", 1)
    return cif


def declared_group(cif: str) -> GroupId | None:
    """The group a CIF declares: the xtallm layer-group tag, else a space group other than P1."""
    layer = re.search(rf"^{LAYER_GROUP_TAG}\s+(\d+)", cif, re.M)
    if layer and 1 <= int(layer.group(1)) <= 80:
        return GroupId(2, int(layer.group(1)))
    bulk = re.search(r"^_(?:symmetry_Int_Tables_number|space_group_IT_number)\s+(\d+)", cif, re.M)
    if bulk and 1 < int(bulk.group(1)) <= 230:
        return GroupId(3, int(bulk.group(1)))
    return None


def read_cif(cif: str):
    """A pymatgen Structure from CIF text, or None when pymatgen cannot read it (warnings silenced)."""
    from xtallm.tokenization.formats import parse_cif

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parse_cif(cif)
    except ValueError:
        return None


# ---------------------------------------------------------------------------- reading


def output_folder(path: str | Path, writes: str) -> Path:
    """`--out` of a command that writes one file (`writes`) into a folder: refused when it is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--out {path}: is a file; --out is a folder (this command writes {path}/{writes})")
    return path


@dataclass
class ReadReport:
    """Lines or files a reader could not use, with the reason (torn last line of a killed run included)."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.skipped.append((where, reason))

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> dict[str, Any]:
        return {"n_skipped": len(self.skipped), "skipped": [{"where": w, "reason": r} for w, r in self.skipped[:50]]}


def _open_text(path: Path):
    """A text file, read through xz or gzip when its name says so (samples.jsonl.xz)."""
    if path.suffix == ".xz":
        import lzma

        return lzma.open(path, "rt")
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt")
    return path.open()


def read_jsonl(path: str | Path, report: ReadReport | None = None) -> Iterator[dict[str, Any]]:
    """JSON objects of a .jsonl file; a line that is not one is skipped and reported."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, expected a .jsonl file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                if report is not None:
                    report.add(f"{path.name}:{n}", f"not JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                if report is not None:
                    report.add(f"{path.name}:{n}", f"not a JSON object ({type(row).__name__})")
                continue
            yield row


def read_samples(path: str | Path, report: ReadReport | None = None) -> Iterator[Sample]:
    """Samples of a samples.jsonl, or of a folder of *.cif files (id = file name)."""
    path = Path(path)
    if path.is_dir():
        cifs = sorted(path.glob("*.cif"))
        if not cifs:
            raise FileNotFoundError(f"{path}: no *.cif files")
        for cif_path in cifs:
            text = cif_path.read_text(errors="replace")
            yield Sample(cif_path.stem, ok=True, cif=text, group=declared_group(text))
        return
    for n, row in enumerate(read_jsonl(path, report), 1):
        try:
            yield Sample.from_json(row, where=f"{path.name} row {n}")
        except ValueError as exc:
            if report is None:
                raise
            report.add(f"{path.name} row {n}", str(exc))


def load_samples(path: str | Path, report: ReadReport | None = None) -> list[Sample]:
    """All samples of a file or folder; an error naming the path when it holds none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such samples file or folder")
    samples = list(read_samples(path, report))
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


# ---------------------------------------------------------------------------- writing


class JsonlWriter:
    """Appends rows batch by batch (flushed and synced), so a killed run loses at most the batch in flight.

    A torn last line (the write a kill interrupted) is cut off before appending; `done` holds the
    ids already in the file, so a re-run writes only what is missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path}: is a folder, expected a .jsonl file")
        if self.path.exists() and not self.path.is_file():
            raise ValueError(f"{self.path}: not a regular file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()  # two runs appending to one file would interleave and duplicate rows
        self._repair_torn_tail()
        self.done = {str(row["id"]) for row in read_jsonl(self.path) if "id" in row}
        self.file = self.path.open("a")

    def _lock(self) -> None:
        import fcntl

        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise FileExistsError(f"{self.path}: another xtallm run is writing it; wait for it to end or use another --out") from None
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def _repair_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.file.write(json.dumps(row) + "\n")
            self.done.add(str(row["id"]))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()
        lock = Path(self._lock_file.name)
        self._lock_file.close()  # releases the lock
        lock.unlink(missing_ok=True)

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SampleWriter(JsonlWriter):
    """A JsonlWriter of Samples."""

    def write(self, rows: list[Sample]) -> None:  # type: ignore[override]
        super().write([row.to_json() for row in rows])
