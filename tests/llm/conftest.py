"""Models the LLM tests train themselves (nothing can be downloaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xtallm.llm.config import load_config
from xtallm.llm.finetune import train
from tests.conftest import REPO, SHARED_DATA

TINY = REPO / "configs" / "llm" / "tiny_test.yaml"
MP20_VAL = SHARED_DATA / "mp20" / "val.csv.xz"


def tiny(tmp: Path, *overrides: str):
    return load_config(TINY, [f"train.output_dir={tmp}", "train.report_to=[]", *overrides])


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
    """A tiny crystal LM trained from scratch on real MP-20 text (the shipped examples if absent)."""
    out = tmp_path_factory.mktemp("base")
    data = [f"data.train=[{MP20_VAL}]", "data.limit=400"] if MP20_VAL.exists() else []
    metrics = train(tiny(out, "train.max_steps=40", *data))
    return out, metrics


@pytest.fixture(scope="session")
def adapter(base_model, tmp_path_factory):
    """A LoRA adapter on the tiny LM, trained hard enough to change its outputs."""
    out = tmp_path_factory.mktemp("adapter")
    train(tiny(out, f"model.base={base_model[0]}", "model.method=lora", "model.lora.r=8",
               "train.max_steps=10", "train.sample_every=0", "train.lr=2e-2"))
    return out
