"""`xtallm refine`: SDEdit refinement of sampled crystals, written in the sampler's schema.

Input: the sampler's samples.jsonl (the Wyckoff text, when present, gives the exact site
assignment the model wrote) or a folder of CIF files (their declared group, else re-detected).
Output: DIR/samples.jsonl with the refined structure in `cif`, the input in `raw_cif`, the same
`id`, plus DIR/cif/<id>.cif. Rows that cannot be refined pass through unchanged with
`refine_note` saying why. A re-run refines only the ids not yet in the output.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xtallm.configs.recipe import option
from xtallm.refiner.checkpoint import load_refiner
from xtallm.refiner.refine import RefineOptions, default_device, refine_records
from xtallm.tokenization import get_format
from xtallm.tokenization.errors import XtallmError
from xtallm.tokenization.formats.wyckoff import guess_dim
from xtallm.tokenization.record import DEFAULT_VACUUM, CrystalRecord, detect_group

from .samples import ReadReport, Sample, SampleWriter, load_samples, read_cif, read_samples, structure_cif

SYMPRECS = (0.1, 0.01, 0.001)


@dataclass
class RefineSettings(RefineOptions):
    """Everything `xtallm refine` (and the refine stage of `xtallm generate`) takes, declared once."""

    checkpoint: str | None = option(None, "refiner folder (default: the one shipped with xtallm)")
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: a GPU when present)")
    check_symmetry: bool = option(True, "re-detect the group of every refined crystal (symprec 0.01)")
    vacuum: float = option(DEFAULT_VACUUM, "Å of vacuum along c in monolayer cells")
    write_cifs: bool = option(True, "also write DIR/cif/<id>.cif (and .extxyz for monolayers)", flag=False)


@dataclass
class RefineJob:
    samples: str  # samples.jsonl or a folder of *.cif
    out: str
    options: RefineSettings = field(default_factory=RefineSettings)


def input_record(sample: Sample) -> tuple[CrystalRecord | None, str | None]:
    """The record to refine, or None and the reason it cannot be refined."""
    if not sample.ok or not sample.cif:
        return None, f"not a parsed sample ({sample.error or 'no cif'})"
    if sample.record is not None:  # the model's own Wyckoff assignment, exactly as written
        return sample.record, None
    structure = read_cif(sample.cif)
    if structure is None:
        return None, "CIF does not parse"
    dim = sample.dim or guess_dim(structure)
    want = sample.group.number if sample.group is not None else None
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
    o = job.options
    if not 0.0 < o.tau <= 1.0:
        raise ValueError(f"--tau must be in (0, 1], got {o.tau}")
    report = ReadReport()
    samples = load_samples(job.samples, report)
    out = Path(job.out)
    writer = SampleWriter(out / "samples.jsonl")
    todo = [s for s in samples if s.id not in writer.done]
    started = time.perf_counter()
    if todo:
        from xtallm.refiner.pretrained import default_refiner_path

        refiner = load_refiner(o.checkpoint or default_refiner_path(), o.device or default_device())
        cif_dir = out / "cif"
        if o.write_cifs:
            cif_dir.mkdir(parents=True, exist_ok=True)
        # Chunks are fixed slices of the input, each with its own seed, written whole: a resumed run
        # refines a chunk exactly as an uninterrupted one would (a half-written chunk is redone whole,
        # and only its missing rows are written).
        size = max(2 * o.batch_size, 2)
        with tqdm(total=len(todo), desc=f"refining (tau {o.tau})") as bar:
            for k, start in enumerate(range(0, len(samples), size)):
                part = samples[start : start + size]
                missing = [s for s in part if s.id not in writer.done]
                if not missing:
                    continue
                rows = [r for r in _refine_chunk(refiner, part, dataclasses.replace(o, seed=o.seed + 10_007 * k))
                        if r.id not in writer.done]
                if o.write_cifs:
                    _write_files(rows, cif_dir)
                writer.write(rows)
                bar.update(len(missing))
    writer.close()
    elapsed = time.perf_counter() - started
    ids = {s.id for s in samples}
    done = [r for r in read_samples(out / "samples.jsonl") if r.id in ids]
    refined = [r for r in done if r.refined]
    checked = [r for r in refined if r.group_checked]
    summary = {
        "samples": len(done),
        "refined": len(refined),
        "passed_through": len(done) - len(refined),
        "refined_now": len(todo),
        "seconds": elapsed,
        "structures_per_s": len(todo) / elapsed if todo and elapsed > 0 else None,
        "group_kept_rate": sum(r.detected_group == r.group.number for r in checked) / len(checked) if checked else None,
        "tau": o.tau,
        "steps": o.steps,
        "checkpoint": str(o.checkpoint) if o.checkpoint else "default",
        "pass_reasons": _count(r.refine_note for r in done if not r.refined),
        "unreadable_input_rows": report.summary(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _refine_chunk(refiner, part: list[Sample], o: RefineSettings) -> list[Sample]:
    prepared = [input_record(s) for s in part]
    index = [i for i, (record, _) in enumerate(prepared) if record is not None]
    refined = refine_records(refiner, [prepared[i][0] for i in index], o, progress=False)
    results: dict[int, tuple] = {i: (None, prepared[i][1]) for i in range(len(part)) if prepared[i][0] is None}
    results.update(dict(zip(index, refined)))
    return [_output_sample(sample, *results[i], o) for i, sample in enumerate(part)]


def _output_sample(sample: Sample, record: CrystalRecord | None, note: str | None, o: RefineSettings) -> Sample:
    out = dataclasses.replace(sample)
    out.raw_cif, out.refined, out.refine_note = sample.cif, False, note
    if record is None or note is not None:
        return out
    try:
        structure = record.to_structure(vacuum=o.vacuum, strict=False)
    except (XtallmError, ValueError) as exc:
        out.refine_note = f"refined record does not build: {exc}"
        return out
    out.cif = structure_cif(structure, record.group_id)
    out.group, out.dim, out.refined, out.refine_tau = record.group_id, record.dim, True, o.tau
    out.refined_text = get_format("wyckoff", vacuum=o.vacuum).format_record(record)
    out._record, out._record_parsed = record, True
    if o.check_symmetry:
        out.detected_group, out.group_checked = detect_group(structure, record.dim, symprec=0.01), True
    return out


def _write_files(rows: list[Sample], cif_dir: Path) -> None:
    for r in rows:
        if r.cif:
            (cif_dir / f"{_safe(r.id)}.cif").write_text(r.cif)
        if r.refined and r.dim == 2:
            write_layer_extxyz(r.cif, r.group.number, cif_dir / f"{_safe(r.id)}.extxyz")


def write_layer_extxyz(cif: str, group: int, path: Path) -> None:
    """A monolayer as extended XYZ with pbc (True, True, False) and its layer group, for ASE users."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atoms = AseAtomsAdaptor.get_atoms(read_cif(cif))
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
