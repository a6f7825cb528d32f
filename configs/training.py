"""What every xtallm training recipe shares (the LM's llm/finetune.py, the refiner's refiner/train.py):
mixed precision, where training stands, time limits, and checkpoints that resume exactly.

Checkpoints hold no pickle: weights are safetensors, optimizer/scheduler/RNG states are torch
files read with `weights_only=True` (tensors, numbers, strings, lists and dicts only), progress
is JSON. A folder is complete once its `progress.json` exists (written last, atomically); a folder
holding `*.pkl` files (e.g. an `accelerator.save_state` checkpoint, whose pickles run code when
loaded) is refused, never read.

    <output_dir>/checkpoints/step_00000500/
        model.safetensors  optimizer.pt  scheduler.pt  modules/<name>.safetensors  rng_<rank>.pt  progress.json
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "progress.json"  # written last: its presence marks a complete checkpoint
FORMAT = "xtallm-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot (or must not) be resumed from."""


def default_device() -> str:
    """The one place GPU presence is decided: "cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def fresh_accelerator(**kwargs):
    """An Accelerator for this recipe's settings. accelerate keeps one state per process and refuses a second
    recipe with another precision (a notebook, a test session): that state is reset first; the process group
    (PartialState) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(**kwargs)


def mixed_precision(setting: str, allow_fp16: bool = True) -> str:
    """`auto` -> bf16 on GPUs that have it, fp16 on older GPUs (if allowed), none on CPU."""
    if setting != "auto":
        if setting not in ("bf16", "fp16", "no"):
            raise ValueError(f"mixed_precision must be auto, bf16, fp16 or no, got {setting!r}")
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16" if allow_fp16 else "no"
    return "no"


@dataclass
class Progress:
    """Where training stands: optimizer steps done, the epoch, micro-batches of it consumed."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batches_in_epoch = 0


class TimeLimit:
    """Training stops (and saves what it has) once it has run `seconds` (None: no limit)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.started = time.monotonic()

    @property
    def reached(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.started > self.seconds

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class RecipeRun:
    """What a recipe's run (a dataclass with config, accelerator, model, optimizer, scheduler, progress,
    metrics) shares: where it writes, how it checkpoints and how it resumes."""

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {}  # more modules saved with the model (the refiner's EMA)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.train.output_dir)

    def checkpoint(self) -> Path:
        """Metrics so far and a complete checkpoint of this step."""
        if self.accelerator.is_main_process:
            (self.output_dir / "metrics.partial.json").write_text(json.dumps(self.metrics))
        return save_checkpoint(self.accelerator, self.output_dir, self.progress, self.model, self.optimizer, self.scheduler,
                               modules=self.checkpoint_modules(), keep=self.config.train.keep_checkpoints)

    def resume(self, allowed: bool = True) -> Path | None:
        """Continue from the newest complete checkpoint, with the metrics it had; None: a fresh start."""
        checkpoint = latest_checkpoint(self.output_dir) if allowed else None
        if checkpoint is None:
            return None
        load_checkpoint(self.accelerator, checkpoint, self.progress, self.model, self.optimizer, self.scheduler,
                        modules=self.checkpoint_modules())
        self.accelerator.print(f"resumed from {checkpoint} at step {self.progress.step}")
        partial = self.output_dir / "metrics.partial.json"
        if partial.exists():
            self.metrics = json.loads(partial.read_text())
        return checkpoint

    def finish_partial(self) -> None:
        if self.accelerator.is_main_process:
            (self.output_dir / "metrics.partial.json").unlink(missing_ok=True)


# ---------------------------------------------------------------------------- checkpoints


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:08d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (a folder with progress.json); half-written ones are passed over."""
    root = Path(output_dir) / "checkpoints"
    found = []
    for path in root.glob("step_*"):
        try:
            found.append((int(path.name.split("_", 1)[1]), path))
        except ValueError:
            continue
    for _, path in sorted(found, reverse=True):
        if (path / STATE_FILE).exists():
            return path
    return None


def _is_fsdp(accelerator) -> bool:
    return accelerator.distributed_type.name == "FSDP"


def _model_state(accelerator, model) -> dict[str, torch.Tensor]:
    """What training changes: every entry but the frozen base weights (LoRA/QLoRA keep only adapters)."""
    state = accelerator.get_state_dict(model) or {}  # gathers a sharded (FSDP) model's full state on the main process
    # remove_duplicate=False: a tied lm_head.weight is the frozen embedding under a second name (76 vs 20 MB a SmolLM2 checkpoint)
    frozen = [n for n, p in accelerator.unwrap_model(model).named_parameters(remove_duplicate=False) if not p.requires_grad]
    frozen_set = set(frozen)
    prefixes = tuple(n + "." for n in frozen)  # 4-bit weights carry their quantisation state under the weight's name

    def trained(key: str) -> bool:
        return key not in frozen_set and not key.startswith(prefixes)

    return {k: v.detach().cpu().clone() for k, v in state.items() if trained(k)}  # clone: tied weights share storage


def _optimizer_state(accelerator, model, optimizer) -> dict[str, Any]:
    if _is_fsdp(accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]), "python_pos": random.getstate()[2], "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)), "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])], "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], *state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(accelerator, output_dir: str | Path, progress: Progress, model, optimizer, scheduler,
                    modules: dict[str, torch.nn.Module] | None = None, keep: int = 2, extra: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint of this step (every process takes part), then prune old ones."""
    from safetensors.torch import save_file

    path = checkpoint_dir(Path(output_dir), progress.step)
    model_state = _model_state(accelerator, model)
    optimizer_state = _optimizer_state(accelerator, model, optimizer)
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        (path / STATE_FILE).unlink(missing_ok=True)  # incomplete until rewritten at the end
        save_file(model_state, str(path / "model.safetensors"))
        torch.save(optimizer_state, path / "optimizer.pt")
        torch.save(scheduler.state_dict(), path / "scheduler.pt")
        for name, module in (modules or {}).items():
            (path / "modules").mkdir(exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path / "modules" / f"{name}.safetensors"))
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), path / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"format": FORMAT, "progress": asdict(progress), "processes": accelerator.num_processes, **(extra or {})}
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path / STATE_FILE)
        _prune(Path(output_dir), keep)
    accelerator.wait_for_everyone()
    return path


def _prune(output_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` complete checkpoints (only folders this module wrote)."""
    complete = sorted(p for p in (output_dir / "checkpoints").glob("step_*") if _ours(p))
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def _ours(path: Path) -> bool:
    try:
        return json.loads((path / STATE_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def _safe_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but plain data (a crafted pickle lands here)
        raise CheckpointError(f"{path}: refused to load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                              "xtallm checkpoints hold plain tensors and numbers only") from None


def check_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's progress.json, after refusing pickles and foreign formats."""
    pickles = sorted(p.name for p in path.rglob("*.pkl"))
    if pickles:
        raise CheckpointError(f"{path}: holds pickle files ({', '.join(pickles[:3])}); xtallm never unpickles a checkpoint "
                              "(it could run arbitrary code): remove them or start without --resume")
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable {STATE_FILE} ({exc})") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an xtallm checkpoint (format {state.get('format')!r})")
    return state


def load_checkpoint(accelerator, path: str | Path, progress: Progress, model, optimizer, scheduler,
                    modules: dict[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """Restore a checkpoint written by save_checkpoint into the prepared objects; returns its progress.json."""
    from safetensors.torch import load_file

    path = Path(path)
    state = check_checkpoint(path)
    if state.get("processes") != accelerator.num_processes:
        raise CheckpointError(f"{path}: written by {state.get('processes')} process(es), resumed with {accelerator.num_processes}: "
                              "the data order would differ; resume with the same number of processes")
    weights = load_file(str(path / "model.safetensors"))
    optimizer_state = _safe_load(path / "optimizer.pt")
    if _is_fsdp(accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
    else:
        missing, unexpected = accelerator.unwrap_model(model).load_state_dict(weights, strict=False)
        trainable = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
        if unexpected or trainable & set(missing):
            raise CheckpointError(f"{path}: does not fit this model ({len(unexpected)} unexpected, "
                                  f"{len(trainable & set(missing))} trainable weights missing)")
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(_safe_load(path / "scheduler.pt"))
    for name, module in (modules or {}).items():
        module.load_state_dict(load_file(str(path / "modules" / f"{name}.safetensors")))
    rng = path / f"rng_{accelerator.process_index}.pt"
    if rng.exists():
        _set_rng_state(_safe_load(rng))
    for key, value in state["progress"].items():
        setattr(progress, key, int(value))
    return state


def run_entry_point(prog: str, main, args) -> int:
    """`main(args)`, with bad input (recipe, data, checkpoint) answered in one line and exit status 2."""
    import sys

    try:
        return main(args)
    except (ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def flat(tree: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (hyperparameters for the trackers)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
