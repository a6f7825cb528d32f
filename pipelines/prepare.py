"""`xtallm data prepare`: encode a crystal table into a dataset folder with a failure report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenization.data import PrepareOptions, PreparedData, prepare_dataset


def prepare(
    source: str,
    out: str | Path,
    options: PrepareOptions,
    num_proc: int | None = None,
    use_cache: bool = True,
) -> PreparedData:
    """Prepare `source` and write `out/` (a `datasets` folder), `out/failures.csv`, `out/summary.json`."""
    out = Path(out)
    prepared = prepare_dataset(source, options, num_proc=num_proc, use_cache=use_cache)
    if out.exists():
        shutil.rmtree(out)
    prepared.dataset.save_to_disk(str(out))
    prepared.failures.to_csv(out / "failures.csv", index=False)
    summary = {"source": str(source), **prepared.summary, "options": options.__dict__}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return prepared
