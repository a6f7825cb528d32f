"""Where the refiner shipped with xtallm lives (package data, so `pip install` carries it)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_REFINER = "xtallm-refiner"


def default_refiner_path() -> Path:
    """The shipped refiner checkpoint folder; a clear error if this install has none."""
    path = Path(__file__).resolve().parent / "pretrained" / DEFAULT_REFINER
    if not (path / "refiner.json").exists():
        raise FileNotFoundError(
            f"no shipped refiner at {path}: pass --checkpoint (a folder written by refiner/train.py, e.g. runs/refiner/model)"
        )
    return path
