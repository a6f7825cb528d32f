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
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch llm/finetune.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from llm.card import write_model_card
from llm.config import FinetuneConfig, load_config
from llm.data import PackedExamples, build_examples, collate
from llm.hf_generate import sample_texts
from llm.model import count_parameters, load_model, load_tokenizer, save_xtallm_config


class Progress:
    """Where training stands; saved in every checkpoint."""

    def __init__(self) -> None:
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.batches_in_epoch = 0  # micro-batches of the current epoch already consumed

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (configs/llm/*.yaml)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="publish the result to the Hub")
    parser.add_argument("--no-resume", action="store_true", help="ignore checkpoints in output_dir")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-4")
    return parser.parse_args(argv)


def mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = sorted(
        (p for p in (output_dir / "checkpoints").glob("step_*") if (p / "progress.json").exists()),
        key=lambda p: int(p.name.split("_")[1]),
    )
    return checkpoints[-1] if checkpoints else None


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
    from tokenization import get_format
    from tokenization.errors import XtallmError

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


def save_checkpoint(accelerator: Accelerator, progress: Progress, output_dir: Path, keep: int) -> None:
    path = output_dir / "checkpoints" / f"step_{progress.step:08d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "progress.json").write_text(json.dumps(progress.state_dict()))
        old = sorted((output_dir / "checkpoints").glob("step_*"), key=lambda p: p.name)[:-keep]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_final(model, tokenizer, config: FinetuneConfig, metrics: dict, accelerator: Accelerator, output_dir: Path) -> None:
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(
            str(output_dir), state_dict=state, safe_serialization=True, max_shard_size=config.train.max_shard_size
        )
        tokenizer.save_pretrained(str(output_dir))
        config.save(output_dir / "finetune_config.yaml")
        save_xtallm_config(output_dir, config)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_model_card(output_dir, config, metrics)
    accelerator.wait_for_everyone()


def train(config: FinetuneConfig, resume: bool = True) -> dict:
    tc = config.train
    output_dir = Path(tc.output_dir)
    trackers = [t for t in tc.report_to if t != "wandb" or _has("wandb")]
    accelerator = Accelerator(
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
    pad = tokenizer.pad_token_id
    multiple = 16 if tc.compile else 1

    def loader(dataset, shuffle: bool):
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=tc.batch_size,
            shuffle=shuffle,
            collate_fn=lambda b: collate(b, pad, multiple),
            num_workers=tc.num_workers,
            drop_last=False,
        )

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
        optimizer,
        num_warmup_steps=int(tc.warmup_ratio * total_steps),
        num_training_steps=total_steps,
        min_lr_rate=tc.min_lr_ratio,
    )
    progress = Progress()
    accelerator.register_for_checkpointing(scheduler, progress)

    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resumed from {checkpoint} at step {progress.step}")

    total, trainable = count_parameters(accelerator.unwrap_model(model))
    hparams = {k: v for k, v in _flat(config.to_dict()).items() if isinstance(v, (int, float, str, bool))}
    accelerator.init_trackers("xtallm", config=hparams)
    accelerator.print(
        f"{total / 1e6:.1f}M parameters ({trainable / 1e6:.2f}M trainable), {len(train_set)} training examples "
        f"({train_set.examples.dropped if isinstance(train_set, PackedExamples) else train_set.dropped} longer than "
        f"{config.data.max_length} tokens dropped), {len(eval_set)} held out, {total_steps} steps on "
        f"{accelerator.num_processes} process(es), mixed precision {accelerator.mixed_precision}"
    )

    metrics: dict = {"parameters": total, "trainable_parameters": trainable, "train_examples": len(train_set), "eval_examples": len(eval_set), "history": []}
    if checkpoint is not None and (output_dir / "metrics.partial.json").exists():
        metrics = json.loads((output_dir / "metrics.partial.json").read_text())
    if progress.step == 0:
        metrics["initial_eval_loss"] = evaluate_loss(model, eval_loader, accelerator)
    bar = tqdm(total=total_steps, initial=progress.step, desc="training", disable=not accelerator.is_local_main_process)
    model.train()
    running, tokens, started = [], 0, time.perf_counter()
    stop_at = min(total_steps, tc.stop_after_steps or total_steps)
    run_started, timed_out = time.perf_counter(), False

    while progress.step < stop_at:
        train_set.set_epoch(progress.epoch)
        train_loader.set_epoch(progress.epoch)
        batches = train_loader
        if progress.batches_in_epoch:
            batches = accelerator.skip_first_batches(train_loader, progress.batches_in_epoch)
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            progress.batches_in_epoch += 1
            running.append(loss.detach().float())
            tokens = tokens + batch["attention_mask"].sum()  # a device tensor: no host sync every step
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            progress.step += 1
            bar.update(1)
            logs = {}
            if progress.step % tc.log_every == 0 or progress.step == stop_at:
                mean_loss = accelerator.reduce(torch.stack(running).mean(), reduction="mean").item()
                elapsed = time.perf_counter() - started
                logs.update(
                    train_loss=mean_loss,
                    lr=scheduler.get_last_lr()[0],
                    tokens_per_s=int(tokens) * accelerator.num_processes / max(elapsed, 1e-9),
                    epoch=progress.epoch + progress.batches_in_epoch / max(len(train_loader), 1),
                )
                running, tokens, started = [], 0, time.perf_counter()
                bar.set_postfix(loss=f"{mean_loss:.4f}")
            if progress.step % tc.eval_every == 0 or progress.step == total_steps:
                logs["eval_loss"] = evaluate_loss(model, eval_loader, accelerator)
            if tc.sample_every and (progress.step % tc.sample_every == 0 or progress.step == total_steps):
                if accelerator.distributed_type.name != "FSDP":
                    rate = parse_rate(model, tokenizer, config, accelerator) if accelerator.is_main_process else 0.0
                    logs["sample_parse_rate"] = rate
                    accelerator.wait_for_everyone()
            if logs:
                accelerator.log(logs, step=progress.step)
                metrics["history"].append({"step": progress.step, **logs})
            if progress.step % tc.save_every == 0 and progress.step < total_steps:
                if accelerator.is_main_process:
                    (output_dir / "metrics.partial.json").write_text(json.dumps(metrics))
                save_checkpoint(accelerator, progress, output_dir, tc.keep_checkpoints)
            if tc.time_limit_s and time.perf_counter() - run_started > tc.time_limit_s and progress.step < stop_at:
                timed_out = True  # out of time: save what there is as the final model, say so in metrics
                if "eval_loss" not in logs:
                    logs["eval_loss"] = evaluate_loss(model, eval_loader, accelerator)
                    accelerator.log(logs, step=progress.step)
                    metrics["history"].append({"step": progress.step, **logs})
                break
            if progress.step >= stop_at:
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
        if timed_out:
            break
    bar.close()

    if progress.step < total_steps and not timed_out:  # stopped early on purpose: leave a checkpoint to resume from
        if accelerator.is_main_process:
            (output_dir / "metrics.partial.json").write_text(json.dumps(metrics))
        save_checkpoint(accelerator, progress, output_dir, tc.keep_checkpoints)
        accelerator.end_training()
        return metrics
    evals = [h["eval_loss"] for h in metrics["history"] if "eval_loss" in h]
    parses = [h["sample_parse_rate"] for h in metrics["history"] if "sample_parse_rate" in h]
    if timed_out:
        metrics.update(time_limit_reached=True, planned_steps=total_steps)
    metrics.update(steps=progress.step, train_seconds=time.perf_counter() - run_started, final_eval_loss=evals[-1] if evals else None, final_sample_parse_rate=parses[-1] if parses else None)
    save_final(model, tokenizer, config, metrics, accelerator, output_dir)
    if accelerator.is_main_process:
        (output_dir / "metrics.partial.json").unlink(missing_ok=True)
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


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    if args.push_to_hub:
        config.hub.push_to_hub = args.push_to_hub
    metrics = train(config, resume=not args.no_resume)
    if config.hub.push_to_hub and metrics.get("steps"):
        from llm.card import push_to_hub

        url = push_to_hub(config.train.output_dir, config.hub.push_to_hub, private=config.hub.private)
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
