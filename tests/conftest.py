"""Shared test fixtures: the team's real data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("XTALLM_SHARED_DATA", REPO.parent / "shared" / "data"))
os.environ.setdefault("XTALLM_DATA", str(SHARED_DATA))  # what pipelines.training_data reads by default
# Ray (tests/test_ray.py): read when Ray is imported; keeps every test cluster on 127.0.0.1, and nothing is reported home
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {relative} not found under {SHARED_DATA} (set XTALLM_SHARED_DATA)")
    return path


def read_shared(relative: str, n: int | None = None, seed: int = 0) -> pd.DataFrame:
    df = pd.read_csv(shared_file(relative))
    if n is not None and n < len(df):
        df = df.sample(n, random_state=seed)
    return df


@pytest.fixture(autouse=True)
def _quiet_cif_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Issues encountered while parsing CIF")
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XTALLM_CACHE", str(tmp_path_factory.getbasetemp() / "xtallm-cache"))
