"""Prompts from property conditions, tokenized exactly as in training (BOS + header line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from transformers import PreTrainedTokenizerBase

from xtallm.tokenization.conditions import ConditionError, validate_conditions

from .data import prompt_text


def read_conditions_file(path: str | Path) -> list[dict[str, Any]]:
    """One validated condition set per CSV row (empty cells = not conditioned)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows = []
    for i, raw in enumerate(df.to_dict(orient="records"), start=2):  # line 1 is the header
        values = {k.strip(): v.strip() for k, v in raw.items() if str(v).strip() != ""}
        try:
            rows.append(validate_conditions(values))
        except ConditionError as exc:
            raise ConditionError(f"{path}, line {i}: {exc}") from None
    if not rows:
        raise ConditionError(f"{path}: no condition rows")
    return rows


def check_supported(conditions: dict[str, Any], supported: list[str] | None, model: str) -> None:
    """Reject a condition the model was never trained with (it would be ignored silently)."""
    if supported is None:
        return
    unknown = [k for k in conditions if k not in supported]
    if unknown:
        raise ConditionError(f"{model} was not trained with condition(s) {', '.join(unknown)}; it knows: {', '.join(supported)}")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, conditions: dict[str, Any]) -> list[int]:
    """Token ids of the prompt, the same way llm/data.py builds training examples."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    text = prompt_text(conditions)
    return bos + (tokenizer(text, add_special_tokens=False)["input_ids"] if text else [])
