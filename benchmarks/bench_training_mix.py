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

from xtallm.llm.model import PRETRAINED_DIR
from xtallm.pipelines.release import ship, to_bf16

RECIPE = "configs/llm/xtallm_default.yaml"
LORA_RECIPE = "configs/llm/xtallm_lg_lora.yaml"
MIX_FOLDERS = {"joint": ("bulk", "wbm", "2d"), "bulk": ("bulk", "wbm"), "2d": ("2d",)}  # missing folders are skipped
MIX_DIMS = {"joint": [2, 3], "bulk": [3], "2d": [2]}
MIX_ORDER = ("joint", "bulk", "2d")  # the default first: it ships even if a later run failed
SAMPLE_SETS = {"joint": ("bulk", "2d", "cond"), "bulk": ("bulk",), "2d": ("2d",), "lora": ("2d",)}


# ---------------------------------------------------------------------- device side


def tokens_per_step(folders: list[Path], batch_size: int, max_length: int) -> float:
    """Real (unpadded) tokens in one packed batch, from the same bins finetune.py builds."""
    from xtallm.llm.data import PackedExamples, PretokenizedExamples

    examples = PretokenizedExamples([str(f) for f in folders], max_length, train=True)
    packed = PackedExamples(examples, max_length, seed=0)
    return batch_size * sum(examples.lengths) / len(packed)


def train_command(config: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "llm/finetune.py", "--config", config, "--no-resume", *overrides]


def _steady_tokens_per_s(metrics_path: Path, skip_steps: int) -> float | None:
    """Median logged throughput after the first `skip_steps` steps (compilation is in the first interval)."""
    import statistics

    history = json.loads(metrics_path.read_text())["history"]
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h and h["step"] > skip_steps]
    return statistics.median(rates) if rates else None


def device(args: argparse.Namespace) -> int:
    """Phase `train`: a short compiled calibration run measures single-process throughput, then the
    three from-scratch runs go one after another with the SAME token budget (max_steps from
    tokens_per_step; the time limit is only a safety net), then HF sampling of the three models.
    Phase `adapt`: the layer-group LoRA adapter on the returned joint model, then its samples."""
    import yaml

    started = time.perf_counter()
    deadline = args.deadline
    out, runs, pretok = Path(args.out), Path(args.runs), Path(args.pretok)
    runs.mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_load(Path(RECIPE).read_text())
    batch, max_length = recipe["train"]["batch_size"], recipe["data"]["max_length"]
    report_path = runs / f"device_report_{args.phase}.json"
    report: dict = {"phase": args.phase, "deadline_s": deadline, "runs": {}}
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, object] = {}

    def now() -> float:
        return time.perf_counter() - started

    def launch(name: str, cmd: list[str]) -> None:
        logs[name] = open(runs / f"{name}.log", "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        procs[name] = subprocess.Popen(cmd, stdout=logs[name], stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        report["runs"][name] = {**report["runs"].get(name, {}), "cmd": " ".join(cmd), "started_s": round(now(), 1)}
        print(f"[{now():6.1f}s] start {name}: {' '.join(cmd)}", flush=True)

    def finish(name: str) -> int:
        rc = procs[name].wait()
        logs[name].close()
        report["runs"][name].update(rc=rc, ended_s=round(now(), 1))
        print(f"[{now():6.1f}s] {name} exited {rc}", flush=True)
        report_path.write_text(json.dumps(report, indent=2))
        return rc

    def sample(name: str, model: Path, adapter: Path | None, sets: tuple[str, ...]) -> None:
        cmd = [sys.executable, __file__, "device-sample", "--model", str(model), "--prompts", str(pretok / "prompts.json"),
               "--sets", ",".join(sets), "--out", str(runs / f"samples_{name}.jsonl"), "--max-new-tokens", str(args.max_new_tokens),
               "--batch-size", str(args.sample_batch_size)]
        if args.sample_limit:
            cmd += ["--limit", str(args.sample_limit)]
        if adapter is not None:
            cmd += ["--adapter", str(adapter)]
        launch(f"sample_{name}", cmd)

    def mix_args(mix: str) -> tuple[list[str], list[str]]:
        train = [str(pretok / f"{f}_train") for f in MIX_FOLDERS[mix] if (pretok / f"{f}_train").exists()]
        evals = [str(pretok / f"{f}_eval") for f in MIX_FOLDERS[mix] if (pretok / f"{f}_eval").exists()]
        return train, evals

    def train_overrides(mix: str, output: Path, steps: int, time_limit: float, extra: list[str]) -> list[str]:
        train, evals = mix_args(mix)
        return [f"train.output_dir={output}", f"train.max_steps={steps}", f"train.time_limit_s={time_limit:.0f}",
                f"data.train={json.dumps(train)}", f"data.eval={json.dumps(evals)}", f"data.dims={MIX_DIMS[mix]}",
                f"model.tokenizer={pretok / 'tokenizer'}", *extra, *args.override]

    def lora(base: Path) -> None:
        launch("train_lora", train_command(LORA_RECIPE, [
            f"model.base={base}", f"train.output_dir={runs / 'lora'}",
            f"data.train={json.dumps([str(pretok / 'lora_lg_train')])}", f"data.eval={json.dumps([str(pretok / 'lora_lg_eval')])}",
            f"train.num_workers={args.num_workers}", *[o for o in args.override if not o.startswith("model.")],
        ]))

    def wait_until_deadline(names: list[str], margin: float) -> None:
        for name in names:
            try:
                procs[name].wait(timeout=max(1.0, deadline - margin - now()))
            except subprocess.TimeoutExpired:  # out of time: keep the batches already written
                procs[name].kill()
                report["runs"][name]["killed_at_deadline"] = True
            finish(name)

    if args.phase in ("train", "all"):
        per_step = {mix: tokens_per_step([Path(p) for p in mix_args(mix)[0]], batch, max_length) for mix in MIX_ORDER}
        report["tokens_per_step"] = per_step
        workers = f"train.num_workers={args.num_workers}"
        # 1. calibration, eager (no compilation to wait for): single-process throughput on the joint data
        calib_steps = args.calib_steps
        launch("calib", train_command(RECIPE, train_overrides("joint", runs / "calib", calib_steps, 300,
                                                              ["train.eval_every=1000000", "train.compile=false", workers])))
        finish("calib")
        calib_wall = report["runs"]["calib"]["ended_s"] - report["runs"]["calib"]["started_s"]
        rate = _steady_tokens_per_s(runs / "calib" / "metrics.json", skip_steps=20) or args.fallback_tokens_per_s
        overhead = max(calib_wall - calib_steps * per_step["joint"] / rate, 10.0)  # start, data, evals, save
        left = deadline - now() - args.reserve_s
        n = len(MIX_ORDER)
        # eager (measured now) vs compiled (throughput and compile overheads measured in the first device call:
        # cold compile of train + eval graphs ~212 s for the first process, ~60 s per later run with the cache warm)
        eager_budget = args.safety * (left - n * overhead) / n * rate
        compiled_budget = args.safety * (left - args.compiled_cold_s - (n - 1) * args.compiled_warm_s) / n * args.compiled_tokens_per_s
        compiled = compiled_budget > eager_budget
        budget = min(args.budget_tokens, max(compiled_budget, eager_budget))
        if budget < args.min_budget_tokens:
            budget = args.min_budget_tokens  # never plan nothing; the time limit is the net
        mode_rate = args.compiled_tokens_per_s if compiled else rate
        report["calibration"] = {"mode": "eager", "num_workers": args.num_workers, "steps": calib_steps, "wall_s": round(calib_wall, 1),
                                 "steady_tokens_per_s": rate, "steady_steps_per_s": rate / per_step["joint"], "overhead_s": round(overhead, 1),
                                 "seconds_left_for_runs": round(left, 1), "eager_budget": eager_budget, "compiled_budget": compiled_budget,
                                 "chosen": "compiled" if compiled else "eager", "budget_tokens": budget}
        report["budget_tokens"] = budget
        print(f"[{now():6.1f}s] calibration (eager): {rate / 1e6:.3f}M tokens/s ({rate / per_step['joint']:.1f} steps/s), "
              f"overhead {overhead:.0f} s per run; budget eager {eager_budget / 1e6:.1f}M vs compiled {compiled_budget / 1e6:.1f}M "
              f"-> {'compiled' if compiled else 'eager'}, {budget / 1e6:.1f}M tokens per run", flush=True)
        report_path.write_text(json.dumps(report, indent=2))
        # 2. the three runs, one at a time, same token budget
        for mix in MIX_ORDER:
            steps = math.ceil(budget / per_step[mix])
            limit = max(60.0, min(2.0 * steps * per_step[mix] / mode_rate + (args.compiled_cold_s if compiled else 0),
                                  deadline - args.reserve_s / 2 - now()))
            report["runs"][f"train_{mix}"] = {"planned_steps": steps, "tokens_per_step": per_step[mix],
                                              "planned_tokens": steps * per_step[mix], "time_limit_s": round(limit)}
            launch(f"train_{mix}", train_command(RECIPE, train_overrides(mix, runs / mix, steps, limit,
                                                                         [f"train.compile={str(compiled).lower()}", workers])))
            finish(f"train_{mix}")
        if (runs / "joint" / "config.json").exists():
            to_bf16(runs / "joint", runs / "joint_bf16")  # xtallm.pipelines.release
        # 3. the adapter (phase all) and the samples of the three models, concurrently
        if args.phase == "all" and (runs / "joint_bf16" / "config.json").exists():
            lora(runs / "joint_bf16")
        for name, mix, sets in (("joint", "joint", ("bulk", "cond")), ("joint@2d", "joint", ("2d",)), ("bulk", "bulk", ("bulk",)), ("2d", "2d", ("2d",))):
            if (runs / mix / "config.json").exists():
                sample(name, runs / mix, None, sets)
        if "train_lora" in procs and finish("train_lora") == 0:
            sample("lora", runs / "joint_bf16", runs / "lora", SAMPLE_SETS["lora"])
        wait_until_deadline([n for n in procs if n.startswith("sample_")], margin=25)
    else:  # adapt: LoRA on the joint model brought back by phase `train`
        base = Path(args.base)
        lora(base)
        if finish("train_lora") == 0:
            sample("lora", base, runs / "lora", SAMPLE_SETS["lora"])
            wait_until_deadline(["sample_lora"], margin=25)
    report["wall_s"] = round(now(), 1)
    report_path.write_text(json.dumps(report, indent=2))
    pack(runs, out, name=f"mix_{args.phase}", keep_weights={"train": ("joint_bf16",), "adapt": ("lora",)}.get(args.phase, ("joint_bf16", "lora")))
    return 0


def pack(runs: Path, out: Path, name: str = "mix", part_mib: int = 15, keep_weights: tuple[str, ...] = ("joint_bf16", "lora")) -> None:
    """Logs, metrics, samples, the joint model in bf16 and the adapter as one tar.gz, split into parts.
    Other weights (fp32 models, calibration run, bulk-only/2D-only models) stay behind."""
    import tarfile

    tar = out / f"{name}.tgz"
    with tarfile.open(tar, "w:gz") as t:
        for f in sorted(runs.rglob("*")):
            rel = f.relative_to(runs)
            if not f.is_file() or "checkpoints" in rel.parts:
                continue
            if f.name.endswith(".safetensors") and rel.parts[0] not in keep_weights:
                continue
            t.add(f, arcname=str(rel))
    data = tar.read_bytes()
    size = part_mib * 1024 * 1024
    for k in range(0, len(data), size):
        (out / f"{name}.tgz.part{k // size:02d}").write_bytes(data[k : k + size])
    tar.unlink()
    print(f"packed {len(data) / 2**20:.1f} MiB into {math.ceil(len(data) / size)} part(s)", flush=True)


def device_sample(args: argparse.Namespace) -> int:
    """Raw texts for prompt sets (ids built here on the CPU, so no tokenization package is needed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xtallm.llm.hf_generate import generate_ids

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).to(device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = json.loads(Path(args.prompts).read_text())
    rows = [r for s in args.sets.split(",") for r in prompts[s][: args.limit or None]]
    started = time.perf_counter()
    n_tokens = n_done = 0
    with open(args.out, "w") as f:  # written batch by batch: a run stopped at its deadline keeps what it made
        for k in range(0, len(rows), args.batch_size):
            chunk = rows[k : k + args.batch_size]
            results = generate_ids(model, tokenizer, [r["prompt_ids"] for r in chunk], max_new_tokens=args.max_new_tokens,
                                   temperature=1.0, seeds=[args.seed + k + j for j in range(len(chunk))],
                                   batch_size=args.batch_size)
            for row, (text, n, _) in zip(chunk, results):
                f.write(json.dumps({"id": row["id"], "conditions": row["conditions"], "set": row.get("set"), "text": text, "n_tokens": n}) + "\n")
            f.flush()
            n_tokens += sum(n for _, n, _ in results)
            n_done += len(chunk)
            print(f"{n_done}/{len(rows)} samples, {time.perf_counter() - started:.1f} s", flush=True)
    elapsed = time.perf_counter() - started
    summary = {"samples": n_done, "seconds": elapsed, "tokens_per_s": n_tokens / elapsed, "samples_per_s": n_done / elapsed,
               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype), "batch_size": args.batch_size}
    Path(args.out).with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return 0


# ---------------------------------------------------------------------- CPU side


def collect(args: argparse.Namespace) -> int:
    import tarfile

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parts = sorted(Path(args.parts).glob("mix*.tgz.part*"))
    if not parts:
        raise FileNotFoundError(f"no mix*.tgz.part* in {args.parts}")
    for name in sorted({p.name.split(".tgz.part")[0] for p in parts}):
        tar = work / f"{name}.tgz"
        tar.write_bytes(b"".join(p.read_bytes() for p in parts if p.name.startswith(f"{name}.tgz.part")))
        with tarfile.open(tar) as t:
            t.extractall(work, filter="data")
    decode_all(work)
    if args.ship:
        ship(work, PRETRAINED_DIR, set(args.ship.split(",")))
    training_docs(work, ROOT / "docs" / "training")
    return 0


def decode_all(work: Path) -> None:
    """Raw device texts -> `xtallm sample` schema, one folder per model and prompt set."""
    from xtallm.pipelines.samples import decode_sample

    for raw in sorted(work.glob("samples_*.jsonl")):
        model = raw.stem.removeprefix("samples_").split("@")[0]  # samples_joint@2d.jsonl: another process, same model
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
                                        **{k: v for k, v in decode_sample(r["id"], r["text"]).to_json().items() if k in ("ok", "error", "cif", "dim", "group")},
                                        "n_tokens": r["n_tokens"], "model": model,
                                        "adapter": None, "constrained": False, "set": r.get("set")}) + "\n")
            print(out)


def training_docs(work: Path, docs: Path) -> None:
    """Configs, metrics JSONL (the TensorBoard scalars) and loss curves for each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("joint", "2d", "bulk", "lora"):
        folder = work / name
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
    budget = None
    if (work / "device_report_train.json").exists():
        budget = json.loads((work / "device_report_train.json").read_text()).get("budget_tokens")
    axes[0].set_title("from scratch, sequential, equal budget" + (f" ({budget / 1e6:.0f}M tokens each)" if budget else ""), fontsize=9)
    axes[1].set_title("layer-group LoRA on the joint model")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (crystal tokens)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(docs / "loss_curves.png", dpi=110)
    for name in ("joint", "2d", "bulk", "lora"):  # the TensorBoard event files themselves (scalars only, a few kB)
        folder = work / name / "xtallm"
        for event in folder.glob("events.out.tfevents.*.0"):
            (docs / "tensorboard" / name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(event, docs / "tensorboard" / name / event.name)
    for report in work.glob("device_report*.json"):
        shutil.copy2(report, docs / report.name)
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

    from xtallm.tokenization.formats import parse_cif
    from xtallm.tokenization.record import detect_group

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
    d.add_argument("--phase", choices=["train", "adapt", "all"], default="all",
                   help="train: calibration + three sequential equal-budget runs + samples; adapt: LoRA on --base + samples; all: both")
    d.add_argument("--base", default="runs/mix/joint_bf16", help="adapt: the joint model from phase train")
    d.add_argument("--budget-tokens", type=float, default=1.4e8, help="cap on the per-run token budget")
    d.add_argument("--deadline", type=float, default=540, help="seconds from start by which everything must be packed")
    d.add_argument("--reserve-s", type=float, default=185, help="seconds kept after training for the adapter, sampling and packing")
    d.add_argument("--safety", type=float, default=0.9, help="fraction of the time left per run planned for training")
    d.add_argument("--calib-steps", type=int, default=120)
    d.add_argument("--fallback-tokens-per-s", type=float, default=5e5)
    d.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per training process")
    d.add_argument("--min-budget-tokens", type=float, default=3e7)
    d.add_argument("--compiled-tokens-per-s", type=float, default=7.2e5, help="measured on the H100 (first device call)")
    d.add_argument("--compiled-cold-s", type=float, default=212, help="compile overhead of the first compiled run on a fresh machine")
    d.add_argument("--compiled-warm-s", type=float, default=60, help="overhead of a later compiled run (inductor cache warm)")
    d.add_argument("--max-new-tokens", type=int, default=448)
    d.add_argument("--sample-batch-size", type=int, default=1024)
    d.add_argument("--sample-limit", type=int, default=0, help="first N prompts of each set (smoke tests)")
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
    s.add_argument("--limit", type=int, default=0, help="first N prompts of each set (smoke tests)")
    c = sub.add_parser("collect", help="decode, ship weights, write docs/training (CPU)")
    c.add_argument("--parts", required=True)
    c.add_argument("--work", default="runs/mix")
    c.add_argument("--ship", default="model,adapter", help="what to copy into llm/pretrained/ ('' for nothing)")
    r = sub.add_parser("report", help="xtallm evaluate every decoded set; comparison table (CPU)")
    r.add_argument("--work", default="runs/mix")
    r.add_argument("--ref", default=".devdata/ref")
    r.add_argument("--bulk-novelty-subsample", type=int, default=50, help="first N bulk samples get the novelty check")
    args = parser.parse_args(argv)
    return {"device": device, "device-sample": device_sample, "collect": collect, "report": report}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
