"""`xtallm export`: samples in the format another benchmark takes.

    xtallm export samples.jsonl --benchmark lemat-genbench --out submission/ [--size 2500] [--relaxed RELAXED_FOLDER]

`lemat-genbench` (LeMat-GenBench, whose leaderboard MatterGen, PLaID++, DiffCSP and others report):
the first N samples that hold a crystal, in id order (no selection by quality), as
- `structures.csv`: `material_id`, `structure` (pymatgen Structure JSON, the format its loader
  prefers), the format both its `run_benchmarks.py --csv` and the leaderboard's upload read;
- `cifs.zip`: one `<id>.cif` per structure, the leaderboard's other upload format;
- `export.json`: how many samples were read to get N, whether the structures are relaxed (and
  with which potential: the leaderboard marks pre-relaxed submissions), and the source files.
The leaderboard's stability numbers come from its own ORB + MACE + UMA ensemble, which cannot be
loaded here (the weights download at run time): xtallm's own SevenNet/CHGNet figures are not those.
An extension: one function plus a line in `EXPORTERS`.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path
from typing import Any, Callable

from .samples import ReadReport, load_samples, read_cif, read_jsonl

LEMAT_DEFAULT_N = 2500


def _relaxed_cifs(path: str | None) -> tuple[dict[str, str], str | None]:
    if path is None:
        return {}, None
    from .evaluation.relax import relaxed_file

    rows = list(read_jsonl(relaxed_file(path)))
    mlffs = {r.get("mlff") for r in rows}
    return {str(r["id"]): r["relaxed_cif"] for r in rows if r.get("relaxed_cif") and not r.get("error")}, ",".join(sorted(map(str, mlffs)))


def export_lemat_genbench(samples: str, out: str, n: int = LEMAT_DEFAULT_N, relaxed: str | None = None) -> dict[str, Any]:
    """Write a LeMat-GenBench submission of the first `n` samples with a crystal."""
    out_dir = Path(out)
    if n < 1:
        raise ValueError(f"--size must be >= 1, got {n}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"--out {out_dir}: not empty; choose a new folder")
    report = ReadReport()
    rows = load_samples(samples, report)
    relaxed_by_id, mlff = _relaxed_cifs(relaxed)
    chosen, read, no_crystal, unrelaxed = [], 0, 0, 0
    for sample in rows:
        if len(chosen) == n:
            break
        read += 1
        cif = relaxed_by_id.get(sample.id) if relaxed else sample.cif
        if relaxed and cif is None:
            unrelaxed += 1
            cif = sample.cif
        structure = read_cif(cif) if sample.ok and cif else None
        if structure is None:
            no_crystal += 1
            continue
        chosen.append((sample.id, structure))
    if not chosen:
        raise ValueError(f"{samples}: no sample holds a readable crystal")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "structures.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["material_id", "structure"])
        for sid, structure in chosen:
            writer.writerow([sid, json.dumps(structure.as_dict())])
    with zipfile.ZipFile(out_dir / "cifs.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for sid, structure in chosen:
            z.writestr(f"{_safe(sid)}.cif", structure.to(fmt="cif"))
    info = {
        "format": "lemat-genbench", "n_structures": len(chosen), "n_requested": n, "samples_read": read,
        "samples_without_a_crystal": no_crystal, "relaxed": bool(relaxed), "relaxed_with": mlff,
        "not_relaxed_in_relaxed_set": unrelaxed if relaxed else None, "source": str(samples),
        "unreadable_sample_lines": report.summary(),
        "note": "LeMat-GenBench scores stability with its own ORB+MACE+UMA ensemble (not available offline here); "
                "upload structures.csv or cifs.zip in the leaderboard Space, problem type 'unconditional' for prompts without conditions",
    }
    if len(chosen) < n:
        info["warning"] = f"only {len(chosen)} of the requested {n} structures: the samples hold no more crystals"
    (out_dir / "export.json").write_text(json.dumps(info, indent=2))
    return info


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


EXPORTERS: dict[str, Callable[..., dict[str, Any]]] = {"lemat-genbench": export_lemat_genbench}


def export(fmt: str, samples: str, out: str, **options: Any) -> dict[str, Any]:
    if fmt not in EXPORTERS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(EXPORTERS)}")
    return EXPORTERS[fmt](samples, out, **options)
