"""Issue 8's training comparison and the embedded default models, in two halves.

On the GPU machine (needs only torch, transformers, accelerate, peft; data pretokenized here by
`python -m pipelines.training_data build --out .devdata`):

    python3 benchmarks/bench_training_mix.py device --pretok .devdata/pretok --budget-tokens 1e8 --out $OUT

trains, concurrently on one GPU and with the same token budget, the joint bulk+2D model (the
default), a 2D-only and a bulk-only model (configs/llm/xtallm_default.yaml + overrides); then the
layer-group LoRA adapter on the joint model (configs/llm/xtallm_lg_lora.yaml); samples each with
HF generate (bf16) from the prompts built here; packs models, logs and raw texts into <=15 MiB parts.

Here (CPU), after the parts came back:

    python benchmarks/bench_training_mix.py collect --parts DIR --work runs/mix

decodes the texts into `xtallm sample`-schema JSONL, ships the joint model + adapter under
llm/pretrained/ (bf16 safetensors, model cards) and writes logs/loss curves to docs/training/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = "configs/llm/xtallm_default.yaml"
LORA_RECIPE = "configs/llm/xtallm_lg_lora.yaml"
MIX_FOLDERS = {"joint": ("bulk", "2d"), "bulk": ("bulk",), "2d": ("2d",)}
MIX_DIMS = {"joint": [2, 3], "bulk": [3], "2d": [2]}
SAMPLE_SETS = {"joint": ("bulk", "2d"), "bulk": ("bulk",), "2d": ("2d",), "lora": ("2d",)}
DEFAULT_NAME = "xtallm-crystal-11m"
ADAPTER_NAME = "xtallm-crystal-11m-lg-lora"


# ---------------------------------------------------------------------- device side


def tokens_per_step(folders: list[Path], batch_size: int, max_length: int) -> float:
    """Real (unpadded) tokens in one packed batch, from the same bins finetune.py builds."""
    from llm.data import PackedExamples, PretokenizedExamples

    examples = PretokenizedExamples([str(f) for f in folders], max_length, train=True)
    packed = PackedExamples(examples, max_length, seed=0)
    return batch_size * sum(examples.lengths) / len(packed)


def train_command(config: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "llm/finetune.py", "--config", config, "--no-resume", *overrides]


def device(args: argparse.Namespace) -> int:
    import yaml

    started = time.perf_counter()
    out, runs, pretok = Path(args.out), Path(args.runs), Path(args.pretok)
    runs.mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_load(Path(RECIPE).read_text())
    batch, max_length = recipe["train"]["batch_size"], recipe["data"]["max_length"]
    report: dict = {"budget_tokens": args.budget_tokens, "runs": {}}
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, object] = {}

    def launch(name: str, cmd: list[str]) -> None:
        logs[name] = open(runs / f"{name}.log", "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        procs[name] = subprocess.Popen(cmd, stdout=logs[name], stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        report["runs"][name] = {"cmd": " ".join(cmd), "started_s": round(time.perf_counter() - started, 1)}
        print(f"[{time.perf_counter() - started:6.1f}s] start {name}: {' '.join(cmd)}", flush=True)

    for mix, folders in MIX_FOLDERS.items():
        train = [str(pretok / f"{f}_train") for f in folders]
        evals = [str(pretok / f"{f}_eval") for f in folders]
        per_step = tokens_per_step([Path(p) for p in train], batch, max_length)
        steps = math.ceil(args.budget_tokens / per_step)
        report["runs"][f"train_{mix}"] = {}
        launch(f"train_{mix}", train_command(RECIPE, [
            f"train.output_dir={runs / mix}", f"train.max_steps={steps}", f"train.time_limit_s={args.time_limit}",
            f"data.train={json.dumps(train)}", f"data.eval={json.dumps(evals)}", f"data.dims={MIX_DIMS[mix]}",
            f"model.tokenizer={pretok / 'tokenizer'}", *args.override,
        ]))
        report["runs"][f"train_{mix}"].update(planned_steps=steps, tokens_per_step=per_step)

    def finish(name: str) -> int:
        rc = procs[name].wait()
        logs[name].close()
        report["runs"][name].update(rc=rc, ended_s=round(time.perf_counter() - started, 1))
        print(f"[{time.perf_counter() - started:6.1f}s] {name} exited {rc}", flush=True)
        return rc

    def sample(name: str, model: Path, adapter: Path | None, sets: tuple[str, ...]) -> None:
        cmd = [sys.executable, __file__, "device-sample", "--model", str(model), "--prompts", str(pretok / "prompts.json"),
               "--sets", ",".join(sets), "--out", str(runs / f"samples_{name}.jsonl"), "--max-new-tokens", str(args.max_new_tokens),
               "--batch-size", str(args.sample_batch_size)]
        if adapter is not None:
            cmd += ["--adapter", str(adapter)]
        launch(f"sample_{name}", cmd)

    if finish("train_joint") == 0:
        launch("train_lora", train_command(LORA_RECIPE, [
            f"model.base={runs / 'joint'}", f"train.output_dir={runs / 'lora'}",
            f"data.train={json.dumps([str(pretok / 'lora_lg_train')])}", f"data.eval={json.dumps([str(pretok / 'lora_lg_eval')])}",
            *[o for o in args.override if not o.startswith("model.")],
        ]))
        sample("joint", runs / "joint", None, SAMPLE_SETS["joint"])
    for mix in ("2d", "bulk"):
        if finish(f"train_{mix}") == 0:
            sample(mix, runs / mix, None, SAMPLE_SETS[mix])
    if "train_lora" in procs and finish("train_lora") == 0:
        sample("lora", runs / "joint", runs / "lora", SAMPLE_SETS["lora"])
    for name in [n for n in procs if n.startswith("sample_")]:
        finish(name)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    (runs / "device_report.json").write_text(json.dumps(report, indent=2))
    pack(runs, out)
    return 0


def pack(runs: Path, out: Path, part_mib: int = 15) -> None:
    """Models (joint in bf16), logs, metrics and samples as one tar.gz, split into parts."""
    import tarfile

    joint = runs / "joint"
    if (joint / "config.json").exists():
        bf16 = runs / "joint_bf16"
        to_bf16(joint, bf16)
    tar = out / "mix.tgz"
    skip = {"checkpoints", "joint"}  # fp32 copy replaced by joint_bf16; the others ship logs/metrics only
    with tarfile.open(tar, "w:gz") as t:
        for item in sorted(runs.iterdir()):
            if item.name in skip:
                continue
            if item.is_dir() and item.name in ("2d", "bulk"):
                for f in item.rglob("*"):
                    if f.is_file() and not f.name.endswith(".safetensors") and "checkpoints" not in f.parts:
                        t.add(f, arcname=str(f.relative_to(runs)))
                continue
            t.add(item, arcname=item.name, filter=lambda ti: None if "checkpoints" in ti.name else ti)
        if joint.exists():
            for f in joint.rglob("*"):
                if f.is_file() and not f.name.endswith(".safetensors") and "checkpoints" not in f.parts:
                    t.add(f, arcname=str(Path("joint_logs") / f.relative_to(joint)))
    data = tar.read_bytes()
    size = part_mib * 1024 * 1024
    for k in range(0, len(data), size):
        (out / f"mix.tgz.part{k // size:02d}").write_bytes(data[k : k + size])
    tar.unlink()
    print(f"packed {len(data) / 2**20:.1f} MiB into {math.ceil(len(data) / size)} part(s)", flush=True)


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


def device_sample(args: argparse.Namespace) -> int:
    """Raw texts for prompt sets (ids built here on the CPU, so no tokenization package is needed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.hf_generate import generate_ids

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).to(device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = json.loads(Path(args.prompts).read_text())
    rows = [r for s in args.sets.split(",") for r in prompts[s]]
    started = time.perf_counter()
    results = generate_ids(model, tokenizer, [r["prompt_ids"] for r in rows], max_new_tokens=args.max_new_tokens,
                           temperature=1.0, seed=args.seed, batch_size=args.batch_size)
    elapsed = time.perf_counter() - started
    n_tokens = sum(n for _, n in results)
    with open(args.out, "w") as f:
        for row, (text, n) in zip(rows, results):
            f.write(json.dumps({"id": row["id"], "conditions": row["conditions"], "set": row.get("set"), "text": text, "n_tokens": n}) + "\n")
    summary = {"samples": len(rows), "seconds": elapsed, "tokens_per_s": n_tokens / elapsed, "samples_per_s": len(rows) / elapsed,
               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype), "batch_size": args.batch_size}
    Path(args.out).with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return 0


# ---------------------------------------------------------------------- CPU side


def collect(args: argparse.Namespace) -> int:
    import tarfile

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parts = sorted(Path(args.parts).glob("mix.tgz.part*"))
    if not parts:
        raise FileNotFoundError(f"no mix.tgz.part* in {args.parts}")
    tar = work / "mix.tgz"
    tar.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(tar) as t:
        t.extractall(work, filter="data")
    decode_all(work)
    ship(work)
    training_docs(work, ROOT / "docs" / "training")
    return 0


def decode_all(work: Path) -> None:
    """Raw device texts -> `xtallm sample` schema, one folder per model and prompt set."""
    from pipelines.records import decode_sample

    for raw in sorted(work.glob("samples_*.jsonl")):
        model = raw.stem.removeprefix("samples_")
        rows = [json.loads(line) for line in raw.read_text().splitlines() if line.strip()]
        for prompt_set in sorted({r["id"].split("-")[0] for r in rows}):
            out = work / "eval" / f"{model}_{prompt_set}"
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "samples.jsonl", "w") as f:
                for r in rows:
                    if r["id"].split("-")[0] != prompt_set:
                        continue
                    header = " ".join(f"{k}={v}" for k, v in r["conditions"].items())
                    f.write(json.dumps({"id": r["id"], "prompt": header, "conditions": r["conditions"], "text": r["text"],
                                        **decode_sample(r["text"]), "n_tokens": r["n_tokens"], "model": model,
                                        "adapter": None, "constrained": False, "set": r.get("set")}) + "\n")
            print(out)


def ship(work: Path) -> None:
    """The joint model and the adapter into llm/pretrained/ with portable cards and configs."""
    from llm.card import write_model_card
    from llm.config import load_config

    dest = ROOT / "llm" / "pretrained"
    model_dir, adapter_dir = dest / DEFAULT_NAME, dest / ADAPTER_NAME
    for src, dst in ((work / "joint_bf16", model_dir), (work / "lora", adapter_dir)):
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith("events.") and f.name not in ("metrics.partial.json",):
                shutil.copy2(f, dst / f.name)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = DEFAULT_NAME  # portable: the loader resolves it to llm/pretrained/
    (adapter_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    for folder, hub_name in ((model_dir, DEFAULT_NAME), (adapter_dir, ADAPTER_NAME)):
        config = load_config(folder / "finetune_config.yaml")
        if folder == adapter_dir:
            config.model.base = DEFAULT_NAME
        config.hub.dataset_name = "MP-20 (train_partial+val), MPTS-52 val, perov_5 val, carbon_24 val, 2DMatPedia, MC2D; held out: mp20-heldout-v1, twod-heldout-v1"
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


def training_docs(work: Path, docs: Path) -> None:
    """Configs, metrics JSONL (the TensorBoard scalars) and loss curves for each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("joint", "2d", "bulk", "lora"):
        folder = work / ("joint_logs" if name == "joint" else name)
        if not (folder / "metrics.json").exists():
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        shutil.copy2(folder / "finetune_config.yaml", docs / f"{name}_finetune_config.yaml")
        with open(docs / f"{name}_metrics.jsonl", "w") as f:
            for h in metrics["history"]:
                f.write(json.dumps(h) + "\n")
        summary = {k: v for k, v in metrics.items() if k != "history"}
        (docs / f"{name}_summary.json").write_text(json.dumps(summary, indent=2))
        log = work / f"train_{name}.log"
        if log.exists():
            shutil.copy2(log, docs / f"{name}_train.log")
        train = [(h["step"], h["train_loss"]) for h in metrics["history"] if "train_loss" in h]
        evals = [(h["step"], h["eval_loss"]) for h in metrics["history"] if "eval_loss" in h]
        ax = axes[1] if name == "lora" else axes[0]
        if train:
            ax.plot(*zip(*train), label=f"{name} train", alpha=0.8)
        if evals:
            ax.plot(*zip(*evals), "o-", label=f"{name} eval (held-out)", markersize=3)
    axes[0].set_title("from scratch (80M-token budget planned; all three stopped at 210 s)", fontsize=9)
    axes[1].set_title("layer-group LoRA on the joint model")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (crystal tokens)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(docs / "loss_curves.png", dpi=110)
    for name in ("joint", "2d", "bulk", "lora"):  # the TensorBoard event files themselves (scalars only, a few kB)
        folder = work / ("joint_logs" if name == "joint" else name) / "xtallm"
        for event in folder.glob("events.out.tfevents.*.0"):
            (docs / "tensorboard" / name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(event, docs / "tensorboard" / name / event.name)
    report = work / "device_report.json"
    if report.exists():
        shutil.copy2(report, docs / "device_report.json")
    for summary in work.glob("samples_*.summary.json"):
        shutil.copy2(summary, docs / summary.name)


# novelty reference: the training rows of the same dimension (bulk samples vs bulk data, monolayers vs 2D data)
EVAL_TRAIN = {"bulk": "bulk", "2d": "2d"}


def evaluate_cmd(work: Path, folder: Path, ref: Path, novelty: bool = True) -> list[str]:
    """The `xtallm evaluate` call for one model x prompt-set folder (held-out split as reference).

    Bulk novelty against 23k training crystals ran at ~3 s per sample on the 2 shared cores
    (carbon_24's 2,000 pure-C cells share one formula bucket), so bulk sets get it on a subsample."""
    named = folder.parent if folder.name == "novelty_subset" else folder  # <model>_<prompt set>
    prompt_set = named.name.split("_", 1)[1]
    split = "twod-heldout-v1" if prompt_set == "2d" else "mp20-heldout-v1"
    cmd = ["xtallm", "evaluate", str(folder / "samples.jsonl"), "--reference", str(ref / f"{split}.csv.gz"),
           "--out", str(folder / "evaluation"), "--num-proc", "1",
           "--no-coverage"]  # CrystalNN fingerprints: ~1 s per crystal on these 2 shared cores
    if novelty:
        cmd += ["--train", str(ref / f"train_{EVAL_TRAIN[prompt_set]}.csv.gz")]
    return cmd


def layer_group_stats(folder: Path) -> dict:
    """Requested vs detected layer group per prompt set: `uniform` (5 prompts for each of the 80
    layer groups) and `heldout` (groups of twod-heldout-v1), and how many of the 80 groups got a match."""
    import warnings

    from tokenization.formats import parse_cif
    from tokenization.record import detect_group

    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    stats: dict = {}
    per_lg: dict[int, list[bool]] = {}
    for subset in ("uniform", "heldout"):
        subset_rows = [r for r in rows if r.get("set") == subset]
        parsed = matched = 0
        for r in subset_rows:
            if not r["ok"]:
                continue
            parsed += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    lg = detect_group(parse_cif(r["cif"]), 2, symprec=0.1)
                except Exception:  # noqa: BLE001 - an unreadable sample simply does not match
                    lg = None
            ok = lg == r["conditions"]["lg"]
            matched += ok
            if subset == "uniform":
                per_lg.setdefault(r["conditions"]["lg"], []).append(ok)
        stats[subset] = {"prompts": len(subset_rows), "parsed": parsed, "lg_match_of_parsed": matched / max(parsed, 1),
                         "lg_match_of_all": matched / max(len(subset_rows), 1)}
    stats["lgs_with_a_matching_sample"] = sum(any(v) for v in per_lg.values())
    stats["lgs_with_a_parsed_sample"] = len(per_lg)
    return stats


def report(args: argparse.Namespace) -> int:
    """Run `xtallm evaluate` on every decoded set (in parallel) and print the comparison table."""
    work, ref = Path(args.work), Path(args.ref)
    folders = sorted(p for p in (work / "eval").iterdir() if (p / "samples.jsonl").exists())
    jobs = []
    for f in folders:
        if f.name.endswith("_bulk"):
            sub = f / "novelty_subset"
            sub.mkdir(exist_ok=True)
            lines = (f / "samples.jsonl").read_text().splitlines()[: args.bulk_novelty_subsample]
            (sub / "samples.jsonl").write_text("\n".join(lines) + "\n")
            jobs += [(f, evaluate_cmd(work, f, ref, novelty=False)), (sub, evaluate_cmd(work, sub, ref))]
        else:
            jobs.append((f, evaluate_cmd(work, f, ref)))
    todo = [(f, cmd) for f, cmd in jobs if not (f / "evaluation" / "metrics.json").exists()]
    procs = [(f, subprocess.Popen(cmd, stdout=open(f / "evaluate.log", "w"), stderr=subprocess.STDOUT)) for f, cmd in todo]
    for f, p in procs:
        print(f.name, "exit", p.wait(), flush=True)
    keys = ("n_samples", "parse_rate", "struct_validity", "comp_validity", "validity", "uniqueness", "novelty",
            "sg_jsd", "p1_rate", "wdist_density", "wdist_n_elements", "layer_group_detected_rate", "lg_match_rate",
            "slab_contiguous_rate", "vacuum_ok_rate")
    table = {}
    for f in folders:
        m = json.loads((f / "evaluation" / "metrics.json").read_text())
        table[f.name] = {k: m.get(k) for k in keys} | {"conditional_accuracy": m.get("conditional_accuracy")}
        if (f / "novelty_subset" / "evaluation" / "metrics.json").exists():
            sub = json.loads((f / "novelty_subset" / "evaluation" / "metrics.json").read_text())
            table[f.name]["novelty"] = sub["novelty"]
            table[f.name]["novelty_n_samples"] = sub["n_samples"]
        if f.name.endswith("_2d"):  # requested-vs-detected layer group on the two prompt sets separately
            table[f.name]["layer_groups"] = layer_group_stats(f)
    (work / "comparison.json").write_text(json.dumps(table, indent=2))
    names = list(table)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in keys:
        cells = [table[n][k] for n in names]
        lines.append(f"| {k} | " + " | ".join("-" if c is None else (f"{c:.3f}" if isinstance(c, float) else str(c)) for c in cells) + " |")
    print("\n".join(lines))
    (work / "comparison.md").write_text("\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("device", help="train the three mixes + adapter, sample, pack (GPU machine)")
    d.add_argument("--pretok", default=".devdata/pretok")
    d.add_argument("--runs", default="runs/mix")
    d.add_argument("--out", required=True)
    d.add_argument("--budget-tokens", type=float, default=1e8)
    d.add_argument("--time-limit", type=float, default=270, help="per training run, seconds (safety net)")
    d.add_argument("--max-new-tokens", type=int, default=448)
    d.add_argument("--sample-batch-size", type=int, default=512)
    d.add_argument("--override", nargs="*", default=[], help="section.key=value for every run (smoke tests)")
    s = sub.add_parser("device-sample", help="raw texts for prebuilt prompt ids")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter")
    s.add_argument("--prompts", required=True)
    s.add_argument("--sets", default="bulk,2d")
    s.add_argument("--out", required=True)
    s.add_argument("--max-new-tokens", type=int, default=448)
    s.add_argument("--batch-size", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("collect", help="decode, ship weights, write docs/training (CPU)")
    c.add_argument("--parts", required=True)
    c.add_argument("--work", default="runs/mix")
    r = sub.add_parser("report", help="xtallm evaluate every decoded set; comparison table (CPU)")
    r.add_argument("--work", default="runs/mix")
    r.add_argument("--ref", default=".devdata/ref")
    r.add_argument("--bulk-novelty-subsample", type=int, default=50, help="first N bulk samples get the novelty check")
    args = parser.parse_args(argv)
    return {"device": device, "device-sample": device_sample, "collect": collect, "report": report}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
