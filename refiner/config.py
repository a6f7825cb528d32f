"""Refiner recipes: one YAML file (configs/refiner/*.yaml) + `section.key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from xtallm.configs.recipe import load_recipe, save_recipe

from .diffusion import NoiseSchedule
from .model import DenoiserConfig


@dataclass
class RefinerDataConfig:
    train: list[str] = field(default_factory=list)  # tables / prepared datasets, or one arrays file (*.npz)
    exclude: list[str] = field(default_factory=list)  # held-out split CSVs (configs/data/*.csv) kept out of training
    eval_fraction: float = 0.02
    max_atoms: int = 80  # atoms in the conventional cell
    dims: list[int] = field(default_factory=lambda: [2, 3])
    symprec: float = 0.1
    num_proc: int | None = None


@dataclass
class RefinerTrainConfig:
    output_dir: str = "runs/refiner"
    epochs: float = 100
    max_steps: int | None = None
    stop_after_steps: int | None = None  # stop early, checkpoint, keep the schedule (tests, preemption drills)
    time_limit_s: float | None = None  # finish (save the model) when training has run this long (seconds)
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    min_lr_ratio: float = 0.05
    max_grad_norm: float = 1.0
    t_min: float = 0.0  # noise levels trained on; refinement lives at the low end
    t_max: float = 0.8
    lattice_weight: float = 1.0
    corruption: float = 0.0  # share of each batch given LLM-like errors first (refiner/corrupt.py)
    corruption_t_min: float = 0.3  # a corrupted crystal is trained at levels >= this and >= its displacement's level
    init_from: str | None = None  # fine-tune a saved refiner (its architecture, schedule and site vocabulary)
    ema_decay: float = 0.999
    mixed_precision: str = "auto"  # auto = bf16 on GPUs that have it, else fp32
    compile: bool = False
    log_every: int = 50
    eval_every: int = 1000
    save_every: int = 2000
    keep_checkpoints: int = 2
    seed: int = 0


@dataclass
class RefinerConfig:
    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    data: RefinerDataConfig = field(default_factory=RefinerDataConfig)
    train: RefinerTrainConfig = field(default_factory=RefinerTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        save_recipe(self, path)


def load_refiner_config(path: str | Path | None, overrides: list[str] | None = None) -> RefinerConfig:
    config = load_recipe(RefinerConfig, path, overrides)
    if not config.data.train:
        raise ValueError("data.train: no training data given")
    t = config.train
    if not 0.0 <= t.t_min < t.t_max <= 1.0:
        raise ValueError(f"train.t_min/t_max must satisfy 0 <= t_min < t_max <= 1, got {t.t_min}, {t.t_max}")
    if not 0.0 <= t.corruption <= 1.0 or not 0.0 <= t.corruption_t_min <= t.t_max:
        raise ValueError(f"train.corruption must be in [0, 1] and corruption_t_min in [0, t_max], got {t.corruption}, {t.corruption_t_min}")
    if t.init_from is not None and not Path(t.init_from, "refiner.json").exists():
        raise FileNotFoundError(f"train.init_from={t.init_from}: not a refiner checkpoint (no refiner.json)")
    return config
