"""A trained refiner on disk: refiner.json (model config, noise schedule, site vocabulary) + safetensors.

Weights are sharded under 16 MiB per file so checkpoints travel and live in git.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .diffusion import NoiseSchedule
from .model import Denoiser, DenoiserConfig

MAX_SHARD_BYTES = 15 * 1024 * 1024


@dataclass
class Refiner:
    model: Denoiser
    schedule: NoiseSchedule
    vocab: dict[str, int]
    info: dict[str, Any]


def save_refiner(path: str | Path, model: Denoiser, schedule: NoiseSchedule, vocab: dict[str, int], info: dict[str, Any] | None = None) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("refiner-*.safetensors"):
        old.unlink()
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    files = []
    for i, shard in enumerate(shards):
        name = f"refiner-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name))
        files.append(name)
    meta = {
        "format": "xtallm-refiner",
        "model": dataclasses.asdict(model.config),
        "schedule": dataclasses.asdict(schedule),
        "vocab": vocab,
        "weights": files,
        "info": info or {},
    }
    (path / "refiner.json").write_text(json.dumps(meta, indent=1))


def load_refiner(path: str | Path, device: str | torch.device = "cpu") -> Refiner:
    """A refiner saved by save_refiner (a folder, or its refiner.json)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    meta_path = path / "refiner.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{path}: not a refiner checkpoint (no refiner.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != "xtallm-refiner":
        raise ValueError(f"{meta_path}: not an xtallm refiner checkpoint")
    model = Denoiser(DenoiserConfig(**meta["model"]))
    state: dict[str, torch.Tensor] = {}
    for name in meta["weights"]:
        state.update(load_file(str(path / name)))
    model.load_state_dict(state)
    model.to(device).eval()
    return Refiner(model, NoiseSchedule(**meta["schedule"]), dict(meta["vocab"]), meta.get("info", {}))
