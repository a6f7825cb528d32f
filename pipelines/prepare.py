"""`xtallm data prepare`: encode a crystal table into a dataset folder with a failure report.

The output folder must be new, empty, or one this command wrote before (it leaves a marker
file): then only the files it wrote are replaced. Nothing else is ever deleted.
"""

from __future__ import annotations

import json
from pathlib import Path

from xtallm.tokenization.data import PrepareOptions, PreparedData, prepare_dataset

MARKER = ".xtallm-prepared"
_OURS = ("dataset_info.json", "state.json", "failures.csv", "summary.json", MARKER)


def _claim(out: Path) -> None:
    """Make `out` ready for writing, refusing a folder that holds anything we did not write."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: is a file, expected a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by xtallm data prepare\n")  # claims it, and finds a read-only disk before the work
        return
    if not (out / MARKER).exists():
        raise FileExistsError(f"--out {out}: the folder is not empty and was not written by `xtallm data prepare`; "
                              "choose a new or empty folder (nothing was deleted)")
    ours = [p for p in out.iterdir() if p.name in _OURS or (p.name.startswith("data-") and p.suffix == ".arrow")]
    others = [p.name for p in out.iterdir() if p not in ours]
    if others:
        raise FileExistsError(f"--out {out}: holds files xtallm did not write ({', '.join(sorted(others)[:5])}); "
                              "choose another folder (nothing was deleted)")
    for p in ours:
        if p.name != MARKER:
            p.unlink()


def prepare(
    source: str,
    out: str | Path,
    options: PrepareOptions,
    num_proc: int | None = None,
    use_cache: bool = True,
) -> PreparedData:
    """Prepare `source` and write `out/` (a `datasets` folder), `out/failures.csv`, `out/summary.json`."""
    out = Path(out)
    _claim(out)  # before the work: a refused folder costs nothing
    prepared = prepare_dataset(source, options, num_proc=num_proc, use_cache=use_cache)
    prepared.dataset.save_to_disk(str(out))
    prepared.failures.to_csv(out / "failures.csv", index=False)
    summary = {"source": str(source), **prepared.summary, "options": options.__dict__}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / MARKER).write_text("written by xtallm data prepare\n")
    return prepared
