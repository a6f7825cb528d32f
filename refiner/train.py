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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


from xtallm.configs.logs import quiet_third_party

if __name__ == "__main__":  # before torch, transformers and bitsandbytes load: some of them warn on import
    quiet_third_party("--verbose" in sys.argv)

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from xtallm.configs.recipe import check_data_paths
from xtallm.configs.training import Progress, RecipeRun, TimeLimit, flat, fresh_accelerator, mixed_precision, run_entry_point
from xtallm.refiner.checkpoint import load_refiner, save_refiner
from xtallm.refiner.config import RefinerConfig, load_refiner_config
from xtallm.refiner.corrupt import corrupt, training_levels
from xtallm.refiner.crystal import CrystalArrays
from xtallm.refiner.data import HeldOut, SizeBucketBatches, build_arrays, load_arrays, make_batch, save_arrays, site_vocabulary
from xtallm.refiner.diffusion import training_loss
from xtallm.refiner.model import Denoiser, count_parameters


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
    if config.train.corruption > 0:  # the same LLM-like errors every time (seeded), at the level refinement starts them
        generator = torch.Generator().manual_seed(4321)
        coord = []
        for idx in batches:
            batch = make_batch(crystals, idx, vocab)
            v, k, _ = corrupt(batch, 1.0, generator)
            t = training_levels(batch, v, config.schedule, torch.zeros(batch.size), config.train.corruption_t_min, config.train.t_max)
            batch, start = batch.to(accelerator.device), (v.to(accelerator.device), k.to(accelerator.device))
            coord.append(training_loss(model, batch, config.schedule, t.to(accelerator.device), start)["coord"].item())
        totals["eval_corrupted_coord"] = float(np.mean(coord)) if coord else float("nan")
    torch.random.set_rng_state(state)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)
    model.train()
    return totals


@dataclass
class Run(RecipeRun):
    config: RefinerConfig
    accelerator: Accelerator
    model: Denoiser
    ema: torch.optim.swa_utils.AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: object
    crystals: list[CrystalArrays]
    vocab: dict[str, int]
    train_idx: np.ndarray
    eval_idx: np.ndarray
    sampler: SizeBucketBatches
    total_steps: int
    progress: Progress = field(default_factory=Progress)
    metrics: dict = field(default_factory=dict)

    def checkpoint_modules(self) -> dict:
        return {"ema": self.ema}


def setup(config: RefinerConfig) -> Run:
    """Accelerator, data, model, EMA, optimizer and schedule of a recipe (nothing trained yet)."""
    import importlib.util

    tc = config.train
    accelerator = fresh_accelerator(mixed_precision=mixed_precision(tc.mixed_precision, allow_fp16=False), cpu=not torch.cuda.is_available(),
                              log_with="tensorboard" if importlib.util.find_spec("tensorboard") else None, project_dir=tc.output_dir)
    set_seed(tc.seed)
    crystals, _ = load_training_arrays(config)
    if len(crystals) < 2:
        raise ValueError(f"data.train gave {len(crystals)} usable crystal(s); need at least 2")
    start = load_refiner(tc.init_from) if tc.init_from else None
    if start is not None:  # fine-tuning: the saved network, noise schedule and site vocabulary
        vocab, config.model, config.schedule = start.vocab, start.model.config, start.schedule
    else:
        vocab = site_vocabulary(crystals)
        config.model.site_vocab_size = len(vocab)
    train_idx, eval_idx = split(len(crystals), config.data.eval_fraction, tc.seed)
    sampler = SizeBucketBatches([crystals[i].n_atoms for i in train_idx], tc.batch_size, tc.seed)
    if accelerator.is_main_process:
        Path(tc.output_dir).mkdir(parents=True, exist_ok=True)
        config.save(Path(tc.output_dir) / "config.yaml")
    model = Denoiser(config.model)
    if start is not None:
        model.load_state_dict(start.model.state_dict())
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema_decay))
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * math.ceil(len(sampler) / accelerator.num_processes)))
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, min(tc.warmup_steps, total_steps // 10), total_steps, min_lr_rate=tc.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    if tc.compile:
        model = torch.compile(model, dynamic=True)
    return Run(config, accelerator, model, ema, optimizer, scheduler, crystals, vocab, train_idx, eval_idx, sampler, total_steps)


def _start(run: Run, resume: bool) -> None:
    accelerator, config = run.accelerator, run.config
    n_params = count_parameters(accelerator.unwrap_model(run.model))
    accelerator.init_trackers("refiner", config={k: v for k, v in flat(config.to_dict()).items() if isinstance(v, (int, float, str, bool))})
    accelerator.print(
        f"{n_params / 1e6:.2f}M parameters, {len(run.train_idx)} training / {len(run.eval_idx)} eval crystals, "
        f"{run.total_steps} steps, batch {config.train.batch_size} x {accelerator.num_processes} process(es), "
        f"mixed precision {accelerator.mixed_precision}"
    )
    run.metrics = {"parameters": n_params, "train_crystals": len(run.train_idx), "eval_crystals": len(run.eval_idx), "history": []}
    run.resume(resume)  # restores the model, optimizer, schedule, RNG, position and the metrics so far
    if run.progress.step == 0:
        run.metrics["initial_eval"] = evaluate(run.model, run.crystals, run.eval_idx, run.vocab, config, accelerator)


def _step(run: Run, local: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """One optimizer step on one batch; returns the (coord, lattice) losses."""
    tc, accelerator = run.config.train, run.accelerator
    batch = make_batch(run.crystals, run.train_idx[local], run.vocab)
    generator.manual_seed(tc.seed * 1_000_003 + run.progress.step * 101 + accelerator.process_index)
    t = tc.t_min + (tc.t_max - tc.t_min) * torch.rand(batch.size, generator=generator)
    start = None
    if tc.corruption > 0:  # LLM-like errors on a share of the batch, drawn on the host (seeded, resumable)
        v, k, chosen = corrupt(batch, tc.corruption, generator)
        t = torch.where(chosen, training_levels(batch, v, run.config.schedule, t, tc.corruption_t_min, tc.t_max), t)
        start = (v.to(accelerator.device), k.to(accelerator.device))
    batch = batch.to(accelerator.device)
    losses = training_loss(run.model, batch, run.config.schedule, t.to(accelerator.device), start)  # the prepared model autocasts itself
    accelerator.backward(losses["coord"] + tc.lattice_weight * losses["lattice"])
    if tc.max_grad_norm:
        accelerator.clip_grad_norm_(run.model.parameters(), tc.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.ema.update_parameters(accelerator.unwrap_model(run.model))
    run.progress.step += 1
    run.progress.batches_in_epoch += 1
    return torch.stack([losses["coord"].detach(), losses["lattice"].detach()]).float(), batch.size


def _after_step(run: Run, stop_at: int, window: dict) -> None:
    tc, accelerator, step = run.config.train, run.accelerator, run.progress.step
    logs: dict[str, float] = {}
    if step % tc.log_every == 0 or step == stop_at:
        mean = accelerator.reduce(torch.stack(window["losses"]).mean(0), reduction="mean").tolist()
        elapsed = time.perf_counter() - window["started"]
        logs.update(train_coord=mean[0], train_lattice=mean[1], lr=run.scheduler.get_last_lr()[0],
                    crystals_per_s=window["seen"] * accelerator.num_processes / max(elapsed, 1e-9))
        window.update(losses=[], seen=0, started=time.perf_counter())
        window["bar"].set_postfix(coord=f"{mean[0]:.3f}", lattice=f"{mean[1]:.3f}")
    if step % tc.eval_every == 0 or step == run.total_steps:
        logs.update(evaluate(run.ema.module, run.crystals, run.eval_idx, run.vocab, run.config, accelerator))
    if logs:
        accelerator.log(logs, step=step)
        run.metrics["history"].append({"step": step, **logs})
    if step % tc.save_every == 0 and step < run.total_steps:
        run.checkpoint()


def _loop(run: Run, stop_at: int, limit: TimeLimit) -> int:
    """Steps until `stop_at` or the time limit; returns where it stopped."""
    accelerator, progress = run.accelerator, run.progress
    bar = tqdm(total=run.total_steps, initial=progress.step, desc="refiner", disable=not accelerator.is_local_main_process)
    window = {"losses": [], "seen": 0, "started": time.perf_counter(), "bar": bar}
    generator = torch.Generator().manual_seed(run.config.train.seed)
    run.model.train()
    while progress.step < stop_at:
        epoch_batches = run.sampler.epoch(progress.epoch)[accelerator.process_index :: accelerator.num_processes]
        for local in epoch_batches[progress.batches_in_epoch :]:
            losses, size = _step(run, local, generator)
            window["losses"].append(losses)
            window["seen"] += size
            bar.update(1)
            _after_step(run, stop_at, window)
            if limit.reached and progress.step < stop_at:
                accelerator.print(f"time limit of {limit.seconds:.0f} s reached at step {progress.step}: finishing here")
                run.metrics["stopped_by_time_limit"] = progress.step
                stop_at = run.total_steps = progress.step
            if progress.step >= stop_at:
                break
        else:
            progress.next_epoch()
    bar.close()
    return stop_at


def train(config: RefinerConfig, resume: bool = True) -> dict:
    """Train (or resume) a refiner recipe; the EMA weights become <output_dir>/model."""
    run = setup(config)
    _start(run, resume)
    tc = config.train
    _loop(run, min(run.total_steps, tc.stop_after_steps or run.total_steps), TimeLimit(tc.time_limit_s))
    accelerator, metrics = run.accelerator, run.metrics
    if run.progress.step < run.total_steps:  # stopped early on purpose: leave a checkpoint to resume from
        run.checkpoint()
        accelerator.end_training()
        return metrics
    metrics["steps"] = run.progress.step
    if accelerator.is_main_process:
        info = {"steps": run.progress.step, "train_crystals": len(run.train_idx), "final": metrics["history"][-1] if metrics["history"] else {}}
        save_refiner(run.output_dir / "model", run.ema.module, config.schedule, run.vocab, info)
        (run.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (run.output_dir / "metrics.partial.json").unlink(missing_ok=True)
    accelerator.end_training()
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (configs/refiner/*.yaml)")
    parser.add_argument("--build-data", metavar="OUT.npz", default=None, help="only encode data.train into an arrays file and exit")
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="third-party warnings and logs")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-4")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after flags
    return run_entry_point("refiner/train.py", _main, args)


def _main(args: argparse.Namespace) -> int:
    config = load_refiner_config(args.config, args.overrides)
    check_data_paths([*config.data.train, *config.data.exclude], args.config)
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
