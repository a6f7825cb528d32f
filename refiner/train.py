"""Train the symmetry-exact diffusion refiner with Accelerate.

    accelerate launch refiner/train.py --config configs/refiner/<recipe>.yaml [section.key=value ...]

Data: crystal tables or prepared datasets (encoded through tokenization/, cached), or an
arrays file made by `python refiner/train.py --config C --build-data OUT.npz` (then the
training machine needs only torch). bf16 on GPUs, EMA weights, TensorBoard, a progress bar,
checkpoints under <output_dir>/checkpoints/ that a re-run resumes from exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch refiner/train.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from refiner.checkpoint import save_refiner
from refiner.config import RefinerConfig, load_refiner_config
from refiner.crystal import CrystalArrays
from refiner.data import HeldOut, SizeBucketBatches, build_arrays, load_arrays, make_batch, save_arrays, site_vocabulary
from refiner.diffusion import training_loss
from refiner.model import Denoiser, count_parameters


class Progress:
    """Where training stands; saved in every checkpoint."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def load_training_arrays(config: RefinerConfig) -> tuple[list[CrystalArrays], list[str]]:
    d = config.data
    if len(d.train) == 1 and d.train[0].endswith(".npz"):
        return load_arrays(d.train[0])
    exclude = HeldOut(d.exclude) if d.exclude else None
    crystals, ids, _ = build_arrays(d.train, d.max_atoms, tuple(d.dims), d.symprec, d.num_proc, exclude)
    return crystals, ids


def split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_eval = min(max(1, int(round(fraction * n))), n - 1) if n > 1 else 0
    return order[n_eval:], order[:n_eval]


@torch.no_grad()
def evaluate(model, crystals, indices, vocab, config: RefinerConfig, accelerator: Accelerator) -> dict[str, float]:
    """Loss at fixed noise levels and fixed noise draws, so evaluations compare across steps."""
    model.eval()
    state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(1234)
    totals: dict[str, float] = {}
    batches = [indices[i : i + config.train.batch_size] for i in range(0, len(indices), config.train.batch_size)]
    for t_value in (0.1, 0.3, 0.5):
        coord = []
        for idx in batches:
            batch = make_batch(crystals, idx, vocab).to(accelerator.device)
            t = torch.full((batch.size,), t_value, device=accelerator.device)
            losses = training_loss(model, batch, config.schedule, t)
            coord.append(losses["coord"].item())
        totals[f"eval_coord_t{t_value}"] = float(np.mean(coord)) if coord else float("nan")
    torch.random.set_rng_state(state)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)
    model.train()
    return totals


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted((p for p in (output_dir / "checkpoints").glob("step_*") if (p / "done").exists()), key=lambda p: int(p.name[5:]))
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, progress: Progress, output_dir: Path, keep: int) -> None:
    target = output_dir / "checkpoints" / f"step_{progress.step}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        (target / "done").write_text("ok")
        old = sorted((output_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))[:-keep]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)


def train(config: RefinerConfig, resume: bool = True) -> dict:
    tc = config.train
    mixed = tc.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    output_dir = Path(tc.output_dir)
    import importlib.util

    trackers = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(), log_with=trackers, project_dir=str(output_dir))
    set_seed(tc.seed)
    crystals, ids = load_training_arrays(config)
    if len(crystals) < 2:
        raise ValueError(f"data.train gave {len(crystals)} usable crystal(s); need at least 2")
    vocab = site_vocabulary(crystals)
    config.model.site_vocab_size = len(vocab)
    train_idx, eval_idx = split(len(crystals), config.data.eval_fraction, tc.seed)
    sampler = SizeBucketBatches([crystals[i].n_atoms for i in train_idx], tc.batch_size, tc.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        config.save(output_dir / "config.yaml")

    model = Denoiser(config.model)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema_decay))
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    batches_per_epoch = math.ceil(len(sampler) / accelerator.num_processes)
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * batches_per_epoch))
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, min(tc.warmup_steps, total_steps // 10), total_steps, min_lr_rate=tc.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    if tc.compile:
        model = torch.compile(model, dynamic=True)
    progress = Progress()
    accelerator.register_for_checkpointing(scheduler, progress, ema)
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resumed from {checkpoint} at step {progress.step}")

    n_params = count_parameters(accelerator.unwrap_model(model))
    accelerator.init_trackers("refiner", config={k: v for k, v in _flat(config.to_dict()).items() if isinstance(v, (int, float, str, bool))})
    accelerator.print(
        f"{n_params / 1e6:.2f}M parameters, {len(train_idx)} training / {len(eval_idx)} eval crystals, "
        f"{total_steps} steps, batch {tc.batch_size} x {accelerator.num_processes} process(es), mixed precision {mixed}"
    )
    metrics_path = output_dir / "metrics.partial.json"
    metrics: dict = {"parameters": n_params, "train_crystals": len(train_idx), "eval_crystals": len(eval_idx), "history": []}
    if checkpoint is not None and metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
    if progress.step == 0:
        metrics["initial_eval"] = evaluate(model, crystals, eval_idx, vocab, config, accelerator)
    stop_at = min(total_steps, tc.stop_after_steps or total_steps)
    deadline = time.monotonic() + 60 * tc.time_limit_minutes if tc.time_limit_minutes else None
    bar = tqdm(total=total_steps, initial=progress.step, desc="refiner", disable=not accelerator.is_local_main_process)
    running: list[torch.Tensor] = []
    seen, started = 0, time.perf_counter()
    generator = torch.Generator().manual_seed(tc.seed)
    model.train()
    while progress.step < stop_at:
        epoch_batches = sampler.epoch(progress.epoch)[accelerator.process_index :: accelerator.num_processes]
        for local in epoch_batches[progress.batches_in_epoch :]:
            batch = make_batch(crystals, train_idx[local], vocab).to(accelerator.device)
            generator.manual_seed(tc.seed * 1_000_003 + progress.step * 101 + accelerator.process_index)
            t = tc.t_min + (tc.t_max - tc.t_min) * torch.rand(batch.size, generator=generator)
            losses = training_loss(model, batch, config.schedule, t.to(accelerator.device))  # the prepared model autocasts itself
            loss = losses["coord"] + tc.lattice_weight * losses["lattice"]
            accelerator.backward(loss)
            if tc.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            ema.update_parameters(accelerator.unwrap_model(model))
            progress.step += 1
            progress.batches_in_epoch += 1
            seen += batch.size
            running.append(torch.stack([losses["coord"].detach(), losses["lattice"].detach()]).float())
            bar.update(1)
            logs: dict[str, float] = {}
            if progress.step % tc.log_every == 0 or progress.step == stop_at:
                mean = accelerator.reduce(torch.stack(running).mean(0), reduction="mean").tolist()
                elapsed = time.perf_counter() - started
                logs.update(train_coord=mean[0], train_lattice=mean[1], lr=scheduler.get_last_lr()[0], crystals_per_s=seen * accelerator.num_processes / max(elapsed, 1e-9))
                running, seen, started = [], 0, time.perf_counter()
                bar.set_postfix(coord=f"{mean[0]:.3f}", lattice=f"{mean[1]:.3f}")
            if progress.step % tc.eval_every == 0 or progress.step == total_steps:
                logs.update(evaluate(ema.module, crystals, eval_idx, vocab, config, accelerator))
            if logs:
                accelerator.log(logs, step=progress.step)
                metrics["history"].append({"step": progress.step, **logs})
            if progress.step % tc.save_every == 0 and progress.step < total_steps:
                if accelerator.is_main_process:
                    metrics_path.write_text(json.dumps(metrics))
                save_checkpoint(accelerator, progress, output_dir, tc.keep_checkpoints)
            if deadline is not None and time.monotonic() > deadline and progress.step < stop_at:
                accelerator.print(f"time limit of {tc.time_limit_minutes} min reached at step {progress.step}: finishing here")
                metrics["stopped_by_time_limit"] = progress.step
                stop_at = total_steps = progress.step
            if progress.step >= stop_at:
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    bar.close()
    if accelerator.is_main_process:
        metrics_path.write_text(json.dumps(metrics))
    if progress.step < total_steps:
        save_checkpoint(accelerator, progress, output_dir, tc.keep_checkpoints)
        accelerator.end_training()
        return metrics
    metrics["steps"] = progress.step
    if accelerator.is_main_process:
        info = {"steps": progress.step, "train_crystals": len(train_idx), "final": metrics["history"][-1] if metrics["history"] else {}}
        save_refiner(output_dir / "model", ema.module, config.schedule, vocab, info)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        metrics_path.unlink(missing_ok=True)
    accelerator.end_training()
    return metrics


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (configs/refiner/*.yaml)")
    parser.add_argument("--build-data", metavar="OUT.npz", default=None, help="only encode data.train into an arrays file and exit")
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-4")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after flags
    config = load_refiner_config(args.config, args.overrides)
    if args.build_data:
        crystals, ids = load_training_arrays(config)
        save_arrays(args.build_data, crystals, ids)
        print(f"{len(crystals)} crystals -> {args.build_data}")
        return 0
    metrics = train(config, resume=not args.no_resume)
    last = metrics["history"][-1] if metrics["history"] else {}
    print(json.dumps({k: v for k, v in last.items() if isinstance(v, float)}, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
