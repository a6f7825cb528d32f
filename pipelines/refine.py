"""`xtallm refine`: SDEdit refinement of sampled crystals, written in the sampler's schema.

Input: the sampler's samples.jsonl (the Wyckoff text, when present, gives the exact site
assignment the model wrote) or a folder of CIF files. A row without a Wyckoff text that declares a
group (its own, else --group) is symmetrized into that group first, or refused; one that declares
none has its group detected. Output: DIR/samples.jsonl with the refined structure in `cif`, the
input in `raw_cif`, the same `id`, plus DIR/cif/<id>.cif. Every row is re-checked after refinement
(`valid`, `invalid_reason`). Rows that cannot be refined pass through unchanged with `refine_note`
saying why. A re-run refines only the ids not yet in the output.
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
from xtallm.configs.training import default_device
from xtallm.refiner.refine import RefineOptions, Refined, refine_records
from xtallm.tokenization import get_format
from xtallm.tokenization.errors import XtallmError
from xtallm.tokenization.formats.wyckoff import guess_dim
from xtallm.tokenization.record import DEFAULT_VACUUM, CrystalRecord, detect_group
from xtallm.tokenization.symmetrize import fit_to_group
from xtallm.tokenization.symmetry import GroupId

from .evaluation.metrics import validity
from .parallel import RAY_HELP, Workers, check_address, imap
from .evaluation.stability import DEFAULT_FMAX, MAX_STEPS, MLFFS
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
    group: str | None = option(None, "declared group of input rows that state none, e.g. 'sg 62' or 'lg 78' (a folder of "
                                     "P1 CIFs): each row is symmetrized into its declared group, or refused", metavar="GROUP")
    # optional relaxation stage (never part of the refiner's figures)
    relax: bool = option(False, "then relax each refined crystal in its group (MLFF + FixSymmetry) into DIR/relaxed/, "
                                "never counted in the refiner's figures; slow on a CPU (~0.2-0.5 s per FIRE step, 20 atoms)")
    relax_mlff: str = option("sevennet", "potential of the relaxation", choices=tuple(MLFFS))
    relax_steps: int = option(MAX_STEPS, "FIRE steps at most per crystal in the relaxation")
    relax_fmax: float = option(DEFAULT_FMAX, "force convergence of the relaxation, eV/Å")
    ray: str | None = option(None, RAY_HELP + "; each chunk of 2 x batch_size rows is a task (with --device cuda, one holding "
                                   "a GPU), seeded as now, so rows do not depend on where a chunk ran", metavar="ADDRESS")

    def check(self) -> None:
        super().check()
        from .relax_stage import relax_options

        relax_options(self)  # `xtallm relax`'s rules, named by this command's flags
        if self.group is not None:
            _declared_group(self.group)  # a bad --group is refused before the refiner loads
        check_address(self.ray)


@dataclass
class RefineJob:
    samples: str  # samples.jsonl or a folder of *.cif
    out: str
    options: RefineSettings = field(default_factory=RefineSettings)


def input_record(sample: Sample, group: str | None = None) -> tuple[CrystalRecord | None, str | None]:
    """(record to refine, what was done to the input or None), or (None, why it cannot be refined).

    A row that declares a group (its own, else `group`: the --group setting) is symmetrized into it
    (`fit_to_group`), or refused ("refused: ...") when it does not fit: taking another group would
    silently change what the row says. A row with a Wyckoff text is already in its group; a row that
    declares none gets the group found in its structure. A bad `group` raises ValueError (a setting error)."""
    if not sample.ok or not sample.cif:
        return None, f"not a parsed sample ({sample.error or 'no cif'})"
    if sample.record is not None:  # the model's own Wyckoff assignment, exactly as written
        return sample.record, None
    structure = read_cif(sample.cif)
    if structure is None:
        return None, "CIF does not parse"
    declared = sample.group or (_declared_group(group) if group else None)
    if declared is not None:
        if sample.dim is not None and sample.dim != declared.dim:
            return None, f"refused: the row is dim={sample.dim}, but the declared group {declared} is for dim={declared.dim}"
        try:
            fit = fit_to_group(structure, declared.dim, declared)
        except XtallmError as exc:
            return None, f"refused: {exc}"
        return fit.record, fit.note
    dim = sample.dim or guess_dim(structure)
    for symprec in SYMPRECS:
        try:
            return CrystalRecord.from_structure(structure, dim=dim, symprec=symprec), None
        except XtallmError:
            continue
    return None, "no symmetry found (group search failed)"


def _declared_group(text: str) -> GroupId:
    """--group as a GroupId: 'sg 62', 'sg=62' or 'lg 78'."""
    try:
        return GroupId.parse(text.replace("=", " ").strip())
    except ValueError as exc:
        raise ValueError(f"--group {text!r}: {exc}") from None


def run_refine(job: RefineJob) -> dict[str, Any]:
    """Refine every input row not yet in out/samples.jsonl; returns the summary (also summary.json)."""
    o = job.options
    o.check()
    report = ReadReport()
    samples = load_samples(job.samples, report)
    out = Path(job.out)
    writer = SampleWriter(out / "samples.jsonl")
    todo = [s for s in samples if s.id not in writer.done]
    started = time.perf_counter()
    if todo:
        cif_dir = out / "cif"
        if o.write_cifs:
            cif_dir.mkdir(parents=True, exist_ok=True)
        # Chunks are fixed slices of the input, each with its own seed, written whole: a resumed run
        # refines a chunk exactly as an uninterrupted one would (a half-written chunk is redone whole,
        # and only its missing rows are written). Under Ray each chunk is a task; the rows come back in
        # input order and only this process writes them.
        size = max(2 * o.batch_size, 2)
        tasks = [(samples[start : start + size], dataclasses.replace(o, seed=o.seed + 10_007 * k))
                 for k, start in enumerate(range(0, len(samples), size))]
        tasks = [task for task in tasks if any(s.id not in writer.done for s in task[0])]
        if o.ray:
            gpu = 1 if (o.device or "").startswith("cuda") else 0
            refined_chunks = imap(refine_chunk_task, tasks, Workers(ray=o.ray), num_gpus=gpu)
        else:
            from xtallm.refiner.pretrained import default_refiner_path

            refiner = load_refiner(o.checkpoint or default_refiner_path(), o.device or default_device())
            refined_chunks = (_refine_chunk(refiner, part, options) for part, options in tasks)
        with tqdm(total=len(todo), desc=f"refining (start={o.start})") as bar:
            for (part, _), chunk_rows in zip(tasks, refined_chunks):
                missing = [s for s in part if s.id not in writer.done]
                rows = [r for r in chunk_rows if r.id not in writer.done]
                if o.write_cifs:
                    write_sample_files(rows, cif_dir)
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
        "start": o.start,
        "input_level": o.input_level if o.start == "input" else None,
        "tau": o.tau,
        "steps": o.steps,
        "checkpoint": str(o.checkpoint) if o.checkpoint else "default",
        "pass_reasons": _count(r.refine_note for r in done if not r.refined),
        "valid": sum(bool(r.valid) for r in done),  # 0.5 Å protocol + per-pair rule + SMACT, over every row
        "invalid_reasons": _count(_first_reason(r.invalid_reason) for r in done if not r.valid),
        "unreadable_input_rows": report.summary(),
    }
    if o.relax:  # its own rows and figures in DIR/relaxed/; none of the figures above include it
        from .relax_stage import run_relax_stage

        summary["relax"] = run_relax_stage(out, o)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


_REFINER: tuple[tuple[str | None, str], Any] | None = None  # ((checkpoint, device), refiner): one per Ray worker


def refine_chunk_task(task: tuple[list[Sample], RefineSettings]) -> list[Sample]:
    """One chunk refined in a Ray worker; the refiner is loaded on the worker's first chunk and kept."""
    global _REFINER
    from xtallm.refiner.pretrained import default_refiner_path

    part, o = task
    key = (o.checkpoint, o.device or default_device())
    if _REFINER is None or _REFINER[0] != key:
        _REFINER = (key, load_refiner(o.checkpoint or default_refiner_path(), key[1]))
    return _refine_chunk(_REFINER[1], part, o)


def _refine_chunk(refiner, part: list[Sample], o: RefineSettings) -> list[Sample]:
    prepared = [input_record(s, o.group) for s in part]
    index = [i for i, (record, _) in enumerate(prepared) if record is not None]
    refined = refine_records(refiner, [prepared[i][0] for i in index], o, progress=False)
    results: dict[int, Refined] = {i: Refined(None, prepared[i][1], None) for i in range(len(part)) if prepared[i][0] is None}
    results.update(dict(zip(index, refined)))
    rows = [_output_sample(sample, results[i], o) for i, sample in enumerate(part)]
    for row, (record, note) in zip(rows, prepared):  # what was done to the input (symmetrized into its declared group)
        if record is not None and note:
            row.refine_note = note if row.refined else f"{row.refine_note}; input {note}"
    return rows


def _output_sample(sample: Sample, refined: Refined, o: RefineSettings) -> Sample:
    """The output row, re-checked: `valid` and what failed (the protocol's 0.5 Å, the pair rule, SMACT)."""
    out = _refined_sample(sample, refined.record, refined.note, o)
    if out.refined:
        out.refine_tau = refined.tau
    out.valid, out.invalid_reason = validity(out.structure())
    return out


def _refined_sample(sample: Sample, record: CrystalRecord | None, note: str | None, o: RefineSettings) -> Sample:
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


def write_sample_files(rows: list[Sample], cif_dir: Path) -> None:
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


def _first_reason(reason: str | None) -> str:
    """The kind of the first failed check ("pair rule", "SMACT", ...), for counting."""
    first = (reason or "no structure").split(";")[0]
    return first.split(":")[0] if ":" in first else first


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        key = str(v).split(":")[0] if v else "unknown"
        counts[key] = counts.get(key, 0) + 1
    return counts
