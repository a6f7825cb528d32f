"""Release building: turn trained runs into the models shipped with xtallm (cards, portable configs, bf16 shards).

    python -m xtallm.pipelines.release ship --work runs/mix --dest llm/pretrained [--what model,adapter]
    python -m xtallm.pipelines.release adapter runs/smollm2_lora --name smollm2-135m-crystal-lora --hardware "2 CPU cores"

`work` holds `joint_bf16/` (the from-scratch default, bf16 shards from `to_bf16`) and `lora/` (the
layer-group adapter trained on it), as the training runs of benchmarks/bench_training_mix.py leave
them. Benchmarks measure; this module decides what a release contains.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from xtallm.llm.model import DEFAULT_ADAPTERS, DEFAULT_MODEL, PRETRAINED_DIR

DEFAULT_NAME = DEFAULT_MODEL
ADAPTER_NAME = DEFAULT_ADAPTERS["layer_group"]
SHIPPED_DATA = ("MP-20 (train_partial+val), MPTS-52 val, perov_5 val, carbon_24 val, WBM 10k, 2DMatPedia, MC2D; "
                "held out: mp20-heldout-v1, twod-heldout-v1")


def to_bf16(src: Path, dst: Path, max_shard_size: str = "15MB") -> None:
    """A copy of a saved model with bf16 weights in shards under 16 MiB (config, tokenizer, cards kept)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.bfloat16)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dst), safe_serialization=True, max_shard_size=max_shard_size)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(f, dst / f.name)


def ship(work: Path, dest: Path, what: set[str] = frozenset({"model", "adapter"}), dataset_name: str = SHIPPED_DATA) -> list[Path]:
    """The trained joint model (`work/joint_bf16`) and/or its adapter (`work/lora`) into `dest` with portable cards and configs.

    Only the two release folders under `dest` are replaced."""
    from xtallm.llm.card import write_model_card
    from xtallm.llm.config import load_config

    dest = Path(dest)
    model_dir, adapter_dir = dest / DEFAULT_NAME, dest / ADAPTER_NAME
    pairs = []
    if "model" in what and (work / "joint_bf16" / "config.json").exists():
        pairs.append((work / "joint_bf16", model_dir))
    if "adapter" in what and (work / "lora" / "adapter_config.json").exists():
        pairs.append((work / "lora", adapter_dir))
    for src, dst in pairs:
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith("events.") and f.name not in ("metrics.partial.json",):
                shutil.copy2(f, dst / f.name)
    shipped = [dst for _, dst in pairs]
    if adapter_dir in shipped:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = DEFAULT_NAME  # portable: the loader resolves it to llm/pretrained/
        (adapter_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    for folder, hub_name in [(f, n) for f, n in ((model_dir, DEFAULT_NAME), (adapter_dir, ADAPTER_NAME)) if f in shipped]:
        config = load_config(folder / "finetune_config.yaml")
        if folder == adapter_dir:
            config.model.base = DEFAULT_NAME
        config.hub.dataset_name = dataset_name
        config.save(folder / "finetune_config.yaml")
        metrics = json.loads((folder / "metrics.json").read_text())
        card = write_model_card(folder, config, metrics)
        steps, planned = metrics.get("steps"), metrics.get("planned_steps")
        note = (f"\n## Training run\n\nOne H100 (bf16{', compiled' if config.train.compile else ''}, packed 64 x 512-token rows), "
                f"{metrics.get('parameters', 0) / 1e6:.1f}M parameters ({metrics.get('trainable_parameters', 0) / 1e6:.2f}M trained), "
                f"{steps} optimizer steps in {metrics.get('train_seconds', 0):.0f} s"
                + (f" (stopped by the time limit; {planned} planned)" if metrics.get("time_limit_reached") else "")
                + f"; held-out eval loss {metrics.get('initial_eval_loss', 0):.3f} -> {metrics.get('final_eval_loss', 0):.3f}. "
                "Held-out splits: `mp20-heldout-v1`, `twod-heldout-v1` (configs/data/ in the xtallm repository). "
                "Logs and loss curves: docs/training/. Weights are bf16; `llm.model.load_default_model()` loads them "
                "as fp32 on CPU.\n")
        card.write_text(card.read_text() + note)
        info = json.loads((folder / "xtallm.json").read_text())
        info["base_model"] = config.model.base
        (folder / "xtallm.json").write_text(json.dumps(info, indent=2))
    return shipped


def ship_adapter(src: Path, name: str, dest: Path = PRETRAINED_DIR, hardware: str = "") -> Path:
    """A LoRA adapter trained by llm/finetune.py (its output_dir) into `dest/name`: bf16 weights (a 135M base's r=16
    adapter is 19.5 MB in fp32, 9.8 MB in bf16: every shipped file stays under 16 MiB), the run's card, loss curve
    and metrics. The adapter keeps its portable base name (`smollm2`); only `dest/name` is replaced."""
    import torch
    from safetensors.torch import load_file, save_file

    if not (src / "adapter_config.json").exists():
        raise FileNotFoundError(f"{src}: no adapter_config.json (not a finished LoRA run)")
    dst = Path(dest) / name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    keep = ("adapter_config.json", "finetune_config.yaml", "xtallm.json", "metrics.json", "README.md", "loss_curve.csv",
            "loss_curve.png", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
    for f in src.iterdir():
        if f.name in keep:
            shutil.copy2(f, dst / f.name)
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, str(dst / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    metrics = json.loads((src / "metrics.json").read_text())
    note = (f"\n## Training run\n\n{hardware or 'see metrics.json'}: {metrics.get('trainable_parameters', 0) / 1e6:.2f}M trained "
            f"parameters of {metrics.get('parameters', 0) / 1e6:.1f}M, {metrics.get('steps')} optimizer steps in "
            f"{metrics.get('train_seconds', 0) / 60:.0f} min of training"
            + (f" (stopped by the time limit; {metrics.get('planned_steps')} planned)" if metrics.get("time_limit_reached") else "")
            + f"; held-out eval loss {metrics.get('initial_eval_loss', 0):.3f} -> {metrics.get('final_eval_loss', 0):.3f} "
            "(`mp20-heldout-v1`). Loss curve: loss_curve.png. Adapter weights are stored in bf16.\n")
    card = dst / "README.md"
    card.write_text(card.read_text() + note)
    too_big = [f.name for f in dst.iterdir() if f.stat().st_size >= 16 * 2**20]
    if too_big:
        raise ValueError(f"{dst}: {', '.join(too_big)} not under 16 MiB")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("ship", help="copy trained runs into the shipped-model folder")
    s.add_argument("--work", required=True, help="folder with joint_bf16/ and/or lora/")
    s.add_argument("--dest", default=str(PRETRAINED_DIR), help="where shipped models live (default: the package's)")
    s.add_argument("--what", default="model,adapter")
    a = sub.add_parser("adapter", help="ship a LoRA run (bf16 weights, card, loss curve) under llm/pretrained/NAME")
    a.add_argument("src", help="the run's output_dir")
    a.add_argument("--name", required=True)
    a.add_argument("--dest", default=str(PRETRAINED_DIR))
    a.add_argument("--hardware", default="", help="what it was trained on, for the card")
    b = sub.add_parser("bf16", help="a bf16 copy of a saved model in shards under 16 MiB")
    b.add_argument("src")
    b.add_argument("dst")
    args = parser.parse_args(argv)
    if args.command == "bf16":
        to_bf16(Path(args.src), Path(args.dst))
        return 0
    if args.command == "adapter":
        print(f"shipped {ship_adapter(Path(args.src), args.name, Path(args.dest), args.hardware)}")
        return 0
    for folder in ship(Path(args.work), Path(args.dest), set(args.what.split(","))):
        print(f"shipped {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
