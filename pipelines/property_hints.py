"""Element hints for property requests: which elements known crystals with the requested property are made of.

The embedded LM follows `band_gap=` and `formation_energy=` weakly (it draws what it usually draws), but it follows
`elements=` closely. A property request can therefore be helped by the empirical p(elements | property) of the
training data: each hinted draw writes, in its prompt text only, the element set of a training crystal whose
property is within the predictor's tolerance of the request (the 20 nearest where fewer are). The grammar does not
enforce the hint, the model picks the stoichiometry and the structure, and `--screen` keeps the draw whose
predicted property is closest, so a hint that does not help is simply not kept (docs/benchmarks.md, issue 29).

The table (`configs/data/property_elements.csv.xz`: elements, band_gap, formation_energy) holds the MP-20 train
split (CDVAE's, from its metadata) and MP-20 val, minus the `mp20-heldout-v1` ids; Materials Project values,
CC BY 4.0. Bulk crystals only: a monolayer request gets no hint. Rebuilt by

    python -m xtallm.pipelines.property_hints --data ../shared/data
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xtallm.configs.recipe import shipped

from .training_data import SPLIT_DIR

TABLE = "data/property_elements.csv.xz"  # under xtallm/configs
COLUMNS = {"band_gap": "band_gap", "formation_energy": "formation_energy_per_atom"}  # request key -> MP-20 column
MIN_CANDIDATES = 20


@lru_cache(maxsize=1)
def table() -> pd.DataFrame:
    return pd.read_csv(shipped(TABLE), keep_default_na=False)


def hint_keys(conditions: dict[str, Any]) -> list[str]:
    """The requested properties a hint can follow; none where the prompt already decides the elements or is not bulk."""
    if "elements" in conditions or "formula" in conditions or conditions.get("dim", 3) != 3 or "lg" in conditions:
        return []
    return [k for k in COLUMNS if k in conditions]


@lru_cache(maxsize=256)
def _candidates(request: tuple[tuple[str, float], ...]) -> np.ndarray:
    """Element sets of the training crystals within tolerance of every requested value (else the nearest few)."""
    from .evaluation.properties import predictor

    t = table()
    off = np.stack([np.abs(t[key].to_numpy(float) - asked) / predictor(key).tolerance for key, asked in request])
    inside = np.flatnonzero(off.max(axis=0) <= 1 + 1e-9)
    if len(inside) < MIN_CANDIDATES:
        inside = np.argsort(off.sum(axis=0), kind="stable")[:MIN_CANDIDATES]
    return t["elements"].to_numpy()[inside]


RANGE_SHARE = 0.998  # the central share of the training crystals whose values a request must lie among


def trained_range(key: str) -> tuple[float, float]:
    """Where the central 99.8% of the MP-20 training crystals' `key` values lie: what the default model and the
    CGCNN predictors (trained on the Materials Project) have seen."""
    values = table()[key]
    tail = (1 - RANGE_SHARE) / 2
    return float(values.quantile(tail)), float(values.quantile(1 - tail))


def check_trained_range(conditions: dict[str, Any]) -> None:
    """Refuse, in one line, a band gap or formation energy request beyond what the model and predictor were trained on."""
    from .evaluation.properties import predictor

    for key in COLUMNS:
        if key in conditions:
            low, high = trained_range(key)
            value = float(conditions[key])
            if not low - 1e-9 <= value <= high + 1e-9:
                unit = predictor(key).unit
                raise ValueError(f"{key}={value:g}: outside what the default model and its {key} predictor were trained on "
                                 f"({RANGE_SHARE:.1%} of the MP-20 training crystals lie in [{low:.2f}, {high:.2f}] {unit}); "
                                 "ask within that range")


def check_share(share: float) -> None:
    """The one check of `screen.hints`."""
    if not 0 <= share <= 1:
        raise ValueError(f"screen.hints must be in [0, 1], got {share}")


class ElementHints:
    """hint(conditions, seed): with probability `share`, an `elements` hint drawn for the request (seeded: resumable)."""

    def __init__(self, share: float):
        check_share(share)
        self.share = share

    def __call__(self, conditions: dict[str, Any], seed: int) -> dict[str, Any] | None:
        keys = hint_keys(conditions)
        rng = np.random.default_rng(seed)
        if not keys or rng.random() >= self.share:
            return None
        candidates = _candidates(tuple((k, float(conditions[k])) for k in keys))
        return {"elements": str(candidates[rng.integers(len(candidates))])}


def build_table(data: Path) -> pd.DataFrame:
    """The hint table from the MP-20 tables of `data` (../shared/data layout), held-out ids removed."""
    heldout = set(pd.read_csv(SPLIT_DIR / "mp20-heldout-v1.csv")["material_id"])
    train = pd.read_csv(data / "mp20" / "train_meta_no_positions.csv.xz")
    train["elements"] = [sorted(set(s.split())) for s in train["species"]]
    val = pd.read_csv(data / "mp20" / "val.csv.xz", usecols=["material_id", "elements", *COLUMNS.values()])
    val["elements"] = [sorted(set(eval_list(e))) for e in val["elements"]]
    rows = pd.concat([train, val], ignore_index=True).drop_duplicates("material_id")
    rows = rows[~rows["material_id"].isin(heldout)]
    from xtallm.tokenization.conditions import validate_conditions

    # written as a prompt writes them (the conditions' own normalisation: by atomic number)
    out = pd.DataFrame({"elements": [validate_conditions({"elements": e})["elements"] for e in rows["elements"]]})
    for key, column in COLUMNS.items():
        out[key] = rows[column].round(4).to_numpy()
    return out.sort_values(["elements", *COLUMNS]).reset_index(drop=True)


def eval_list(text: str) -> list[str]:
    """`["Hg", "Mg"]` or `['Hg', 'Mg']` (MP-20's elements column) -> ['Hg', 'Mg'], without evaluating code."""
    return [e.strip().strip("'\"") for e in text.strip("[]").split(",") if e.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the element-hint table from MP-20 (see the module docstring)")
    parser.add_argument("--data", required=True, help="folder with mp20/train_meta_no_positions.csv.xz and mp20/val.csv.xz")
    parser.add_argument("--out", default=str(SPLIT_DIR / "property_elements.csv.xz"))
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "mp20").is_dir():
        raise SystemExit(f"--data {data}: no mp20/ folder there")
    out = build_table(data)
    out.to_csv(args.out, index=False)
    print(f"{len(out)} crystals -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
