"""`xtallm refine`: SDEdit refinement of sampled crystals, written in the sampler's schema.

Input: the sampler's samples.jsonl (a row needs ok, cif and group; the Wyckoff text, when
present, gives the exact site assignment the model wrote) or a folder of CIF files (group
from the CIF, re-detected when it declares none). Output: DIR/samples.jsonl with the
refined structure in `cif`, the input in `raw_cif`, the same `id`, plus DIR/cif/<id>.cif.
Rows that cannot be refined pass through unchanged with `refine_note` saying why. A re-run
refines only the ids not yet in the output.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from refiner.checkpoint import load_refiner
from refiner.refine import RefineOptions, default_device, refine_records
from tokenization import get_format
from tokenization.errors import XtallmError
from tokenization.formats.wyckoff import guess_dim
from tokenization.record import CrystalRecord, detect_group

from .records import SampleWriter, declared_group, read_samples, structure_cif

SYMPRECS = (0.1, 0.01, 0.001)


@dataclass
class RefineJob:
    samples: str  # samples.jsonl or a folder of *.cif
    out: str
    checkpoint: str | None = None  # None: the refiner shipped with xtallm
    options: RefineOptions = field(default_factory=RefineOptions)
    vacuum: float = 15.0  # Å, monolayers
    device: str | None = None
    check_symmetry: bool = True  # re-detect the group of every refined crystal (symprec 0.01)
    write_cifs: bool = True


def read_inputs(path: str | Path) -> list[dict[str, Any]]:
    """Rows in the sampler's schema, from a JSONL file or a folder of CIFs."""
    path = Path(path)
    if path.is_dir():
        rows = []
        for cif_path in sorted(path.glob("*.cif")):
            text = cif_path.read_text()
            dim, group = declared_group(text)
            rows.append({"id": cif_path.stem, "ok": True, "error": None, "cif": text, "dim": dim, "group": group, "text": None})
        if not rows:
            raise FileNotFoundError(f"{path}: no *.cif files")
        return rows
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such samples file or folder")
    return list(read_samples(path))


def input_record(row: dict[str, Any]) -> tuple[CrystalRecord | None, str | None]:
    """The record to refine, or None and the reason it cannot be refined."""
    if not row.get("ok") or not row.get("cif"):
        return None, f"not a parsed sample ({row.get('error') or 'no cif'})"
    text = row.get("text")
    if text:
        try:  # the model's own Wyckoff assignment, exactly as written
            return get_format("wyckoff", strict=False).decode_record(text), None
        except (XtallmError, ValueError):
            pass
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(row["cif"], fmt="cif")
    except Exception as exc:  # pymatgen raises many types on bad CIF text
        return None, f"CIF does not parse: {type(exc).__name__}: {exc}"
    dim = row.get("dim") or guess_dim(structure)
    want = row.get("group")
    first = None
    for symprec in SYMPRECS:
        try:
            record = CrystalRecord.from_structure(structure, dim=dim, symprec=symprec)
        except XtallmError:
            continue
        if want is None or record.group == want:
            return record, None
        first = first or record
    if first is None:
        return None, "no symmetry found (group search failed)"
    return first, None


def run_refine(job: RefineJob) -> dict[str, Any]:
    """Refine every input row not yet in out/samples.jsonl; returns the summary (also summary.json)."""
    if not 0.0 < job.options.tau <= 1.0:
        raise ValueError(f"--tau must be in (0, 1], got {job.options.tau}")
    rows = read_inputs(job.samples)
    out = Path(job.out)
    writer = SampleWriter(out / "samples.jsonl")
    todo = [r for r in rows if r["id"] not in writer.done]
    refiner = None
    started = time.perf_counter()
    if todo:
        from refiner.pretrained import default_refiner_path

        checkpoint = job.checkpoint or default_refiner_path()
        refiner = load_refiner(checkpoint, job.device or default_device())
        cif_dir = out / "cif"
        if job.write_cifs:
            cif_dir.mkdir(parents=True, exist_ok=True)
        chunk = max(job.options.batch_size * 4, 256)  # written chunk by chunk: a killed run keeps what it finished
        for start in tqdm(range(0, len(todo), chunk), desc="refine", disable=len(todo) <= chunk):
            part = todo[start : start + chunk]
            prepared = [input_record(r) for r in part]
            index = [i for i, (record, _) in enumerate(prepared) if record is not None]
            refined = refine_records(refiner, [prepared[i][0] for i in index], job.options, progress=False)
            results: dict[int, tuple] = {i: (None, prepared[i][1]) for i in range(len(part)) if prepared[i][0] is None}
            results.update({i: result for i, result in zip(index, refined)})
            out_rows = [_output_row(row, *results[i], job) for i, row in enumerate(part)]
            if job.write_cifs:
                for r in out_rows:
                    if r.get("cif"):
                        (cif_dir / f"{_safe(r['id'])}.cif").write_text(r["cif"])
                    if r.get("refined") and r.get("dim") == 2:
                        write_layer_extxyz(r["cif"], r["group"], cif_dir / f"{_safe(r['id'])}.extxyz")
            writer.write(out_rows)
    writer.close()
    elapsed = time.perf_counter() - started
    done = [r for r in read_samples(out / "samples.jsonl") if r["id"] in {row["id"] for row in rows}]
    refined = [r for r in done if r.get("refined")]
    checked = [r for r in refined if "detected_group" in r]
    summary = {
        "samples": len(done),
        "refined": len(refined),
        "passed_through": len(done) - len(refined),
        "refined_now": len(todo),
        "seconds": elapsed,
        "structures_per_s": len(todo) / elapsed if todo and elapsed > 0 else None,
        "group_kept_rate": sum(r["detected_group"] == r["group"] for r in checked) / len(checked) if checked else None,
        "tau": job.options.tau,
        "steps": job.options.steps,
        "checkpoint": str(job.checkpoint) if job.checkpoint else "default",
        "pass_reasons": _count(r.get("refine_note") for r in done if not r.get("refined")),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _output_row(row: dict[str, Any], record: CrystalRecord | None, note: str | None, job: RefineJob) -> dict[str, Any]:
    out = dict(row)
    out["raw_cif"] = row.get("cif")
    out["refined"] = False
    out["refine_note"] = note
    if record is None or note is not None:
        return out
    try:
        structure = record.to_structure(vacuum=job.vacuum, strict=False)
    except (XtallmError, ValueError) as exc:
        out["refine_note"] = f"refined record does not build: {exc}"
        return out
    out.update(
        cif=structure_cif(structure, record.dim, record.group),
        dim=record.dim,
        group=record.group,
        refined=True,
        refined_text=get_format("wyckoff", vacuum=job.vacuum).format_record(record),
        refine_tau=job.options.tau,
    )
    if job.check_symmetry:
        out["detected_group"] = detect_group(structure, record.dim, symprec=0.01)
    return out


def write_layer_extxyz(cif: str, group: int, path: Path) -> None:
    """A monolayer as extended XYZ with pbc (True, True, False) and its layer group, for ASE users."""
    from ase.io import write
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atoms = AseAtomsAdaptor.get_atoms(Structure.from_str(cif, fmt="cif"))
    atoms.pbc = (True, True, False)
    atoms.info["layer_group"] = int(group)
    write(str(path), atoms, format="extxyz")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        key = str(v).split(":")[0] if v else "unknown"
        counts[key] = counts.get(key, 0) + 1
    return counts
