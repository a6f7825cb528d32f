"""Fine-tuning recipes: a YAML file plus `key.sub=value` overrides, resolved into dataclasses.

A recipe is one YAML config (torchtune style); every field has a default here, so a recipe
only states what differs. The resolved config is saved next to the model it produced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtallm.configs.recipe import load_recipe, save_recipe
from xtallm.tokenization.conditions import ORDER as CONDITION_KEYS


@dataclass
class ScratchConfig:
    """A small Llama-architecture model built from nothing, with the crystal tokenizer."""

    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 8
    intermediate_size: int = 1408
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    base: str = "from_scratch"  # or a local path / hub id of any causal LM
    method: str = "full"  # full | lora | qlora
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    adapter: str | None = None  # start LoRA from an existing adapter
    tokenizer: str | None = None  # saved tokenizer folder (from_scratch: default builds the crystal tokenizer)
    trust_remote_code: bool = False
    attn_implementation: str | None = "sdpa"
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # tables (csv/json/parquet/url/hub id) or prepared folders
    eval: list[str] = field(default_factory=list)  # empty: carve `eval_fraction` off the training data
    eval_fraction: float = 0.05
    fmt: str = "wyckoff"
    dims: list[int] = field(default_factory=lambda: [2, 3])  # keep bulk (3) and/or monolayers (2)
    symprec: float = 0.1
    max_atoms: int | None = None
    max_length: int = 768  # tokens, prompt included; longer examples are dropped
    conditions: list[str] = field(default_factory=lambda: list(CONDITION_KEYS))  # every known condition by default
    unconditional_prob: float = 0.2  # share of examples with no header at all
    condition_keep_prob: float = 0.5  # otherwise each available condition is kept with this chance
    always_conditions: list[str] = field(default_factory=list)  # kept in every prompt (e.g. [dim, lg] for a layer-group adapter)
    augment: bool = True
    packing: bool = False
    limit: int | None = None  # first N rows of each source (debugging)
    num_proc: int | None = None


@dataclass
class TrainConfig:
    output_dir: str = "runs/crystal-lm"
    seed: int = 0
    epochs: float = 10
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32  # per device
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto | bf16 | fp16 | no
    log_every: int = 10
    eval_every: int = 200
    sample_every: int = 500
    sample_n: int = 16
    sample_temperature: float = 1.0
    save_every: int = 500
    keep_checkpoints: int = 2
    max_shard_size: str = "2GB"  # "15MB" to keep each weight file small enough to commit
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # add "wandb" if installed
    num_workers: int = 0
    stop_after_steps: int | None = None  # stop early without changing the schedule (tests, preemption drills)
    time_limit_s: float | None = None  # finish (save the final model) once training has run this long
    schedule_by_time: bool = False  # with time_limit_s: the LR schedule runs on max(step, time) progress, so it ends annealed
    compile: bool = False  # torch.compile the model (dynamic shapes); fuses a small model's many small kernels


@dataclass
class HubConfig:
    push_to_hub: str | None = None  # repo id
    private: bool = True
    dataset_name: str | None = None  # shown in the model card


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        save_recipe(self, path)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> FinetuneConfig:
    """The fine-tuning recipe (see load_recipe), checked for combinations that cannot work."""
    config = load_recipe(FinetuneConfig, path, overrides)
    if config.model.method not in ("full", "lora", "qlora"):
        raise ValueError(f"model.method must be full, lora or qlora, got {config.model.method!r}")
    if config.model.base == "from_scratch" and config.model.method == "qlora":
        raise ValueError("model.method=qlora needs a pretrained base model, not from_scratch")
    if not config.data.train:
        raise ValueError("data.train: no training data given")
    return config
