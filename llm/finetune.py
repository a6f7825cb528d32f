"""Fine-tune (or train from scratch) a causal LM on crystal text with Accelerate.

    accelerate launch llm/finetune.py --config configs/llm/<recipe>.yaml [section.key=value ...]

One CPU, one GPU or many (DDP; FSDP through configs/accelerate/fsdp.yaml), without code
changes. Full fine-tune, LoRA or QLoRA (model.method). Checkpoints under
`<output_dir>/checkpoints/` restore model, optimizer, schedule, RNG and the position in the
epoch: re-running the same command after a kill continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from xtallm.configs.logs import quiet_third_party

if __name__ == "__main__":  # before torch, transformers and bitsandbytes load: some of them warn on import
    quiet_third_party("--verbose" in sys.argv)

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from xtallm.configs.recipe import check_data_paths
from xtallm.configs.training import Progress, RecipeRun, TimeLimit, flat, fresh_accelerator, mixed_precision, run_entry_point
from xtallm.llm.card import write_model_card
from xtallm.llm.config import FinetuneConfig, load_config
from xtallm.llm.data import PackedExamples, build_examples, collate
from xtallm.llm.hf_generate import sample_texts
from xtallm.llm.model import base_identity, count_parameters, load_model, load_tokenizer, name_adapter_base, save_xtallm_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (configs/llm/*.yaml)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="publish the result to the Hub")
    parser.add_argument("--no-resume", action="store_true", help="ignore checkpoints in output_dir")
    parser.add_argument("--verbose", action="store_true", help="third-party warnings and logs")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-4")
    return parser.parse_args(argv)


def build_optimizer(model, config: FinetuneConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "norm" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.train.lr, betas=tuple(config.train.betas))


@torch.no_grad()
def evaluate_loss(model, loader, accelerator: Accelerator) -> float:
    """Token-weighted mean cross-entropy over the held-out split (all processes)."""
    model.eval()
    total = torch.zeros(2, device=accelerator.device)
    for batch in loader:
        loss = model(**batch).loss
        n = (batch["labels"][:, 1:] != -100).sum()
        total += torch.stack([loss.float() * n, n.float()])
    total = accelerator.reduce(total, reduction="sum")
    model.train()
    return (total[0] / total[1].clamp(min=1)).item()


def parse_rate(model, tokenizer, config: FinetuneConfig, accelerator: Accelerator) -> float:
    """Share of unconditional samples that decode into a crystal (main process only)."""
    from xtallm.tokenization import get_format
    from xtallm.tokenization.errors import XtallmError

    fmt = get_format(config.data.fmt)
    texts = sample_texts(
        accelerator.unwrap_model(model),
        tokenizer,
        prompts=[""],
        n_per_prompt=config.train.sample_n,
        max_new_tokens=config.data.max_length,
        temperature=config.train.sample_temperature,
        seed=config.train.seed,
    )
    ok = 0
    for text in texts:
        try:
            fmt.decode(text)
            ok += 1
        except (XtallmError, ValueError):
            pass
    return ok / max(len(texts), 1)


def save_final(model, tokenizer, config: FinetuneConfig, metrics: dict, accelerator: Accelerator, output_dir: Path) -> None:
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(
            str(output_dir), state_dict=state, safe_serialization=True, max_shard_size=config.train.max_shard_size
        )
        tokenizer.save_pretrained(str(output_dir))
        name_adapter_base(output_dir, config.model.base)  # a name that means the same from any folder
        config.save(output_dir / "finetune_config.yaml")
        adapter = (output_dir / "adapter_config.json").exists()
        save_xtallm_config(output_dir, config, base_identity(unwrapped.config, tokenizer) if adapter else None)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_loss_curve(output_dir, metrics.get("history", []), plot=True)
        write_model_card(output_dir, config, metrics)
    accelerator.wait_for_everyone()


def write_loss_curve(output_dir: Path, history: list[dict], plot: bool = False) -> None:
    """loss_curve.csv (step, train_loss, eval_loss, lr, tokens_per_s) and, with `plot`, loss_curve.png."""
    keys = ("step", "train_loss", "eval_loss", "lr", "tokens_per_s", "epoch")
    lines = [",".join(keys)] + [",".join("" if h.get(k) is None else f"{h[k]:.6g}" for k in keys) for h in history]
    Path(output_dir, "loss_curve.csv").write_text("\n".join(lines) + "\n")
    if not plot or not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "eval_loss"):
        points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=key.replace("_", " "))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(Path(output_dir, "loss_curve.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


@dataclass
class Run(RecipeRun):
    """One training run, set up: what the loop touches."""

    config: FinetuneConfig
    accelerator: Accelerator
    tokenizer: Any
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    eval_loader: Any
    train_set: Any
    eval_set: Any
    total_steps: int
    progress: Progress = field(default_factory=Progress)
    metrics: dict = field(default_factory=dict)



def setup(config: FinetuneConfig) -> Run:
    """Accelerator, tokenizer, data, model, optimizer and schedule of a recipe (nothing trained yet)."""
    tc = config.train
    output_dir = Path(tc.output_dir)
    trackers = [t for t in tc.report_to if t != "wandb" or _has("wandb")]
    accelerator = fresh_accelerator(
        cpu=not torch.cuda.is_available(),  # several CPU processes then talk over gloo
        mixed_precision=mixed_precision(tc.mixed_precision),
        gradient_accumulation_steps=tc.grad_accum,
        log_with=trackers or None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(tc.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.model, config.data.max_length)
    train_set, eval_set = build_examples(config.data, tokenizer, tc.seed, accelerator.main_process_first)
    if config.data.packing:
        train_set = PackedExamples(train_set, config.data.max_length, tc.seed)
    pad, multiple = tokenizer.pad_token_id, 16 if tc.compile else 1

    def loader(dataset, shuffle: bool):
        return torch.utils.data.DataLoader(dataset, batch_size=tc.batch_size, shuffle=shuffle, num_workers=tc.num_workers,
                                           collate_fn=lambda b: collate(b, pad, multiple), drop_last=False)

    train_loader, eval_loader = loader(train_set, True), loader(eval_set, False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    model = load_model(config, tokenizer, dtype)
    optimizer = build_optimizer(model, config)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    if tc.compile:  # in place: the module (state-dict keys, unwrap, save) stays the same object
        model.compile(dynamic=True)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / tc.grad_accum))
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * steps_per_epoch))
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(tc.warmup_ratio * total_steps), num_training_steps=total_steps, min_lr_rate=tc.min_lr_ratio)
    return Run(config, accelerator, tokenizer, model, optimizer, scheduler, train_loader, eval_loader, train_set, eval_set, total_steps)


def _start(run: Run, resume: bool) -> None:
    """Resume from the newest complete checkpoint (if asked), say what will run, set up metrics."""
    accelerator, config = run.accelerator, run.config
    total, trainable = count_parameters(accelerator.unwrap_model(run.model))
    accelerator.init_trackers("xtallm", config={k: v for k, v in flat(config.to_dict()).items() if isinstance(v, (int, float, str, bool))})
    packed = isinstance(run.train_set, PackedExamples)
    texts = run.train_set.examples if packed else run.train_set
    rows = f", packed into {len(run.train_set)} rows of <= {config.data.max_length} tokens" if packed else ""
    accelerator.print(
        f"{total / 1e6:.1f}M parameters ({trainable / 1e6:.2f}M trainable); {len(texts)} training texts{rows} "
        f"({texts.dropped} longer than {config.data.max_length} tokens dropped), {len(run.eval_set)} texts held out for the eval loss; "
        f"{run.total_steps} steps on {accelerator.num_processes} process(es), mixed precision {accelerator.mixed_precision}; "
        f"writing to {run.output_dir}"
    )
    run.metrics = {"parameters": total, "trainable_parameters": trainable, "train_examples": len(run.train_set),
                   "eval_examples": len(run.eval_set), "history": []}
    if getattr(texts, "trained_on", None):  # dims and conditions the examples hold: the model card says these
        run.metrics["trained_on"] = texts.trained_on
    run.resume(resume)  # restores the model, optimizer, schedule, RNG, position and the metrics so far
    if run.progress.step == 0:
        run.metrics["initial_eval_loss"] = evaluate_loss(run.model, run.eval_loader, accelerator)


def _after_step(run: Run, stop_at: int, window: dict) -> dict:
    """Logs, evaluation, samples and checkpoints due after optimizer step `run.progress.step`."""
    tc, accelerator, step = run.config.train, run.accelerator, run.progress.step
    logs: dict = {}
    if step % tc.log_every == 0 or step == stop_at:
        mean_loss = accelerator.reduce(torch.stack(window["losses"]).mean(), reduction="mean").item()
        elapsed = time.perf_counter() - window["started"]
        logs.update(train_loss=mean_loss, lr=run.optimizer.param_groups[0]["lr"],
                    tokens_per_s=int(window["tokens"]) * accelerator.num_processes / max(elapsed, 1e-9),
                    epoch=run.progress.epoch + run.progress.batches_in_epoch / max(len(run.train_loader), 1))
        window.update(losses=[], tokens=0, started=time.perf_counter())
    if step % tc.eval_every == 0 or step == run.total_steps:
        logs["eval_loss"] = evaluate_loss(run.model, run.eval_loader, accelerator)
    if tc.sample_every and (step % tc.sample_every == 0 or step == run.total_steps) and accelerator.distributed_type.name != "FSDP":
        logs["sample_parse_rate"] = parse_rate(run.model, run.tokenizer, run.config, accelerator) if accelerator.is_main_process else 0.0
        accelerator.wait_for_everyone()
    if logs:
        accelerator.log(logs, step=step)
        run.metrics["history"].append({"step": step, **logs})
        if accelerator.is_main_process:
            write_loss_curve(run.output_dir, run.metrics["history"])
    if step % tc.save_every == 0 and step < run.total_steps:
        run.checkpoint()
    return logs


def _loop(run: Run, stop_at: int, limit: TimeLimit) -> bool:
    """Optimizer steps until `stop_at` (or the time limit: then True); resumes mid-epoch exactly."""
    tc, accelerator, model, progress = run.config.train, run.accelerator, run.model, run.progress
    bar = tqdm(total=run.total_steps, initial=progress.step, desc="training", disable=not accelerator.is_local_main_process)
    window = {"losses": [], "tokens": 0, "started": time.perf_counter()}
    model.train()
    while progress.step < stop_at:
        run.train_set.set_epoch(progress.epoch)
        run.train_loader.set_epoch(progress.epoch)
        batches = run.train_loader
        if progress.batches_in_epoch:
            batches = accelerator.skip_first_batches(run.train_loader, progress.batches_in_epoch)
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            progress.batches_in_epoch += 1
            window["losses"].append(loss.detach().float())
            window["tokens"] = window["tokens"] + batch["attention_mask"].sum()  # a device tensor: no host sync every step
            if not accelerator.sync_gradients:
                continue
            run.scheduler.step()
            progress.step += 1
            if tc.schedule_by_time and tc.time_limit_s:
                _schedule_by_time(run, limit.elapsed / tc.time_limit_s)
            bar.update(1)
            run.metrics["train_seconds_done"] = limit.elapsed  # checkpointed with the metrics: the time limit spans resumes
            logs = _after_step(run, stop_at, window)
            _show(bar, logs)
            if limit.reached and progress.step < stop_at:  # out of time: the final model is what there is
                if "eval_loss" not in logs:
                    logs = {"eval_loss": evaluate_loss(model, run.eval_loader, accelerator)}
                    accelerator.log(logs, step=progress.step)
                    run.metrics["history"].append({"step": progress.step, **logs})
                bar.close()
                return True
            if progress.step >= stop_at:
                break
        else:
            progress.next_epoch()
    bar.close()
    return False


def _show(bar, logs: dict) -> None:
    """The latest losses and speed on the progress bar (each kept until a newer one comes)."""
    names = {"train_loss": "loss", "eval_loss": "eval", "tokens_per_s": "tok/s", "sample_parse_rate": "parse"}
    shown = {short: logs[key] for key, short in names.items() if logs.get(key) is not None}
    if shown:
        bar.postfix_values = {**getattr(bar, "postfix_values", {}), **shown}
        bar.set_postfix({k: f"{v:.0f}" if k == "tok/s" else f"{v:.3g}" for k, v in bar.postfix_values.items()})


def summary_line(metrics: dict, output_dir: Path) -> str:
    """What a finished run says: eval loss before and after, its sample's parse rate, where it wrote."""
    first, last = metrics.get("initial_eval_loss"), metrics.get("final_eval_loss")
    loss = f"eval loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else "no eval loss"
    parse = metrics.get("final_sample_parse_rate")
    parsed = f", {parse:.2f} of its samples parse" if parse is not None else ""
    stopped = " (time limit reached)" if metrics.get("time_limit_reached") else ""
    return (f"{metrics.get('steps')} steps in {metrics.get('train_seconds', 0):.0f} s{stopped}: {loss}{parsed} -> {output_dir} "
            "(metrics.json, loss_curve.csv/.png, README.md)")


def _schedule_by_time(run: Run, fraction: float) -> None:
    """Set the LR the schedule has at max(this step, the share of the time budget used): on a machine
    slower than planned the run still warms up, decays and ends at the minimum LR within its time limit."""
    at = max(run.progress.step, min(fraction, 1.0) * run.total_steps)
    for group, base, factor in zip(run.optimizer.param_groups, run.scheduler.base_lrs, run.scheduler.lr_lambdas):
        group["lr"] = base * factor(int(at))


def train(config: FinetuneConfig, resume: bool = True) -> dict:
    """Train (or resume) a recipe; returns the metrics (also metrics.json next to the final model)."""
    run = setup(config)
    _start(run, resume)
    tc = config.train
    limit = TimeLimit(tc.time_limit_s)
    limit.started -= run.metrics.get("train_seconds_done", 0.0)  # training time before a resume counts
    timed_out = _loop(run, min(run.total_steps, tc.stop_after_steps or run.total_steps), limit)
    metrics, accelerator = run.metrics, run.accelerator
    if run.progress.step < run.total_steps and not timed_out:  # stopped early on purpose: leave a checkpoint to resume from
        run.checkpoint()
        accelerator.end_training()
        return metrics
    evals = [h["eval_loss"] for h in metrics["history"] if "eval_loss" in h]
    parses = [h["sample_parse_rate"] for h in metrics["history"] if "sample_parse_rate" in h]
    if timed_out:
        metrics.update(time_limit_reached=True, planned_steps=run.total_steps)
    metrics.update(steps=run.progress.step, train_seconds=limit.elapsed, final_eval_loss=evals[-1] if evals else None,
                   final_sample_parse_rate=parses[-1] if parses else None)
    save_final(run.model, run.tokenizer, config, metrics, accelerator, run.output_dir)
    run.finish_partial()
    accelerator.end_training()
    accelerator.print(summary_line(metrics, run.output_dir))
    return metrics


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_entry_point("llm/finetune.py", _main, args)


def _main(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    check_data_paths([*config.data.train, *config.data.eval], args.config)
    if args.push_to_hub:
        config.hub.push_to_hub = args.push_to_hub
    metrics = train(config, resume=not args.no_resume)
    if config.hub.push_to_hub and metrics.get("steps"):
        from xtallm.llm.card import push_to_hub

        url = push_to_hub(config.train.output_dir, config.hub.push_to_hub, private=config.hub.private)
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
