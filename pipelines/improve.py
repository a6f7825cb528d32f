"""`xtallm improve`: rounds of preference fine-tuning against a stability reward, built against mode collapse.

    xtallm improve --model M [--adapter A] --config configs/improve/default.yaml --out DIR

Each round: sample (the model as it stands; unconditional and `sg=` prompts) -> refine (the shipped
refiner, as `xtallm generate` does) -> score -> preference pairs (llm/preference.py) -> train (trl's
DPOTrainer on a LoRA adapter; its reference is the adapter switched off, i.e. the start model: the KL
anchor of beta) -> the next round samples the new adapter. A last sampling scores the final adapter,
so DIR/rounds.json holds one row per model: the start model and one after each round.

Score of a sample (in this order): no crystal < not valid (the refiner's re-check: 0.5 Å, the
per-pair rule, SMACT) or not in the group its prompt asked for < valid < metastable; within valid
crystals a lower energy above the hull (by `pairs.energy_margin`) is better. Energies use the hull's
own potential and correction (SevenNet-0, MP2020) against the shipped hull: single points of the
refined crystals (`score.relax_steps: 0`), or a short capped FIRE relaxation (`score.relax_steps: N`).
A single point over-estimates e_hull (the crystal is not at the potential's minimum), so its rates
are lower bounds and its ranking only a proxy of the relaxed one. Novelty (optional training table)
decides between metastable samples from `pairs.novel_from_round`.

Property requests (`rounds.property_share`): that share of a round's samples come from prompts asking one property
(`band_gap=`, `formation_energy=`, a value drawn uniformly in `rounds.property_targets`), each drawn
`rounds.property_repeats` times; their reward is the distance of the predictor's value (pipelines/evaluation/
properties.py, the predictor `generate --screen` uses) to the request, so a round learns what best-of-N keeps.

Everything resumes: each phase of a round writes its files and a finished phase is skipped; sampling,
refinement and scoring resume inside the phase by sample id; training resumes from its last checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xtallm.configs.recipe import load_recipe, option, save_recipe
from xtallm.llm.preference import TIERS, PairOptions, Scored, build_pairs

from .refine import RefineSettings
from .sample import SampleOptions

DEFAULT_HULL = "configs/data/hull_sevennet_v1.csv.xz"


@dataclass
class RoundOptions:
    rounds: int = option(3, "preference rounds")
    samples: int = option(1000, "samples a round (all prompts together)")
    conditional_share: float = option(0.5, "share of the samples drawn from `sg=` prompts (the rest: `dim=3`)")
    groups_from: str = option("configs/data/mp20-heldout-v1.csv", "table whose `group` column gives the sg= prompts")
    property_share: float = option(0.0, "share of the samples drawn from property requests (`band_gap=`, `formation_energy=`): "
                                        "their reward is the predictor's distance to the request, not the energy")
    property_repeats: int = option(8, "samples per property prompt (pairs join samples of one prompt)")
    property_targets: dict[str, list[float]] = option(
        factory=lambda: {"band_gap": [0.0, 6.0], "formation_energy": [-3.5, 0.0]},
        help="property -> [low, high]: each property prompt asks one of them, uniform in its range (0.1 steps)", flag=False)
    temperature_start: float = option(1.0, "sampling temperature of round 1")
    temperature_end: float = option(1.2, "sampling temperature of the last round (raised against collapse)")


@dataclass
class ScoreOptions:
    hull: str = option(DEFAULT_HULL, "reference hull (`xtallm hull build` output) the reward is measured against")
    metastable: float = option(0.1, "eV/atom above the hull counted as metastable")
    relax_steps: int = option(0, "FIRE steps of a capped relaxation before the energy (0: a single point)")
    engine: str = option("auto", "energy engine, as `xtallm relax --engine`: batched (SevenNet: many crystals per model call, "
                                 "also on a CPU), ase (one at a time) or auto (batched on a GPU)")
    batch_atoms: int = option(800, "atoms per batched model call (batched engine)")
    novelty_reference: str | None = option(None, "training table (cif column): novel = no StructureMatcher match there")
    device: str | None = option(None, "MLFF device (default: a GPU when present)")


@dataclass
class TrainOptions:
    method: str = option("rft", "rft: rejection-sampling fine-tuning, trl's SFTTrainer on the round's chosen samples (the pair "
                                "builder's filtered, de-duplicated winners; kept metastability better, docs/benchmarks.md); dpo: "
                                "trl's DPOTrainer on the round's pairs")
    rft_keep: str = option("chosen", "rft's training set: chosen (every pair's winner) or metastable (only winners "
                                     "within score.metastable of the hull: the filtered set, directed at the hull itself)")
    beta: float = option(0.1, "DPO's beta: the KL anchor to the start model (the adapter switched off)")
    lr: float = option(5e-5, "learning rate")
    epochs: float = option(1.0, "passes over a round's pairs")
    batch_size: int = option(8, "pairs per step")
    grad_accum: int = option(1, "steps per optimizer update")
    max_length: int = option(640, "tokens of prompt + completion at most")
    lora_r: int = option(16, "LoRA rank of a new adapter (an adapter given with --adapter keeps its own)")
    lora_alpha: int = option(32, "LoRA alpha of a new adapter")
    save_steps: int = option(50, "checkpoint every N optimizer steps (a killed round resumes from the last)")
    bf16: bool = option(False, "bf16 autocast (CPU: off unless measured faster)")
    seed: int = option(0, "seed of the trainer")


@dataclass
class ImproveConfig:
    rounds: RoundOptions = field(default_factory=RoundOptions)
    sample: SampleOptions = field(default_factory=lambda: SampleOptions(redraws=0, max_tokens=768))
    refine: RefineSettings = field(default_factory=lambda: RefineSettings(steps=50))
    score: ScoreOptions = field(default_factory=ScoreOptions)
    pairs: PairOptions = field(default_factory=PairOptions)
    train: TrainOptions = field(default_factory=TrainOptions)

    def check(self) -> None:
        r = self.rounds
        if r.rounds < 1 or r.samples < 2 or not 0 <= r.conditional_share <= 1 or not 0 <= r.property_share <= 1 \
                or r.property_repeats < 1:
            raise ValueError("rounds.rounds >= 1, rounds.samples >= 2, rounds.property_repeats >= 1, 0 <= rounds.conditional_share "
                             "<= 1 and 0 <= rounds.property_share <= 1")
        if r.property_share > 0:
            from .evaluation import properties as P

            for key, span in r.property_targets.items():
                if key not in P.PREDICTORS or len(span) != 2 or span[0] > span[1]:
                    raise ValueError(f"rounds.property_targets: {key}: {span}: expected a property with a predictor "
                                     f"({', '.join(P.PREDICTORS)}) and [low, high]")
                P.require(key, f"rounds.property_targets: {key}")
        if self.train.beta <= 0 or self.train.lr <= 0 or self.train.batch_size < 1:
            raise ValueError("train.beta, train.lr > 0 and train.batch_size >= 1")
        if self.train.method not in TRAINERS:
            raise ValueError(f"train.method must be one of {', '.join(TRAINERS)}, got {self.train.method!r}")
        if self.train.rft_keep not in RFT_KEEP:
            raise ValueError(f"train.rft_keep must be one of {', '.join(RFT_KEEP)}, got {self.train.rft_keep!r}")


def shipped_file(path: str) -> str:
    """A path as given, or (`configs/...` not found from here) the file shipped inside the installed package."""
    if Path(path).exists() or not path.startswith("configs/"):
        return path
    from xtallm.configs.recipe import shipped

    return str(shipped(path[len("configs/"):]))


def load_improve_config(path: str | Path | None, overrides: list[str] | None = None) -> ImproveConfig:
    from xtallm.configs.recipe import shipped

    config = load_recipe(ImproveConfig, path if path is not None else shipped("improve/default.yaml"), overrides)
    config.check()
    return config


# ------------------------------------------------------------------------------------------------ prompts


def round_prompts(config: ImproveConfig, round_index: int, folder: Path) -> Path:
    """conditions.csv of a round, one sample a row: `dim=3 KEY=VALUE` property rows (`property_share`, each prompt
    `property_repeats` times), then of the rest `dim=3 sg=N` rows (N drawn from the groups table) and `dim=3` rows."""
    import pandas as pd

    r = config.rounds
    path = folder / "conditions.csv"
    if path.exists():
        return path
    rng = random.Random(1000 * config.train.seed + round_index)
    n_property = round(r.samples * r.property_share)
    rows: list[dict[str, Any]] = []
    while len(rows) < n_property:
        key = rng.choice(sorted(r.property_targets))
        low, high = r.property_targets[key]
        value = round(rng.uniform(low, high), 1)
        rows += [{"dim": 3, key: value}] * min(r.property_repeats, n_property - len(rows))
    n_conditional = round((r.samples - n_property) * r.conditional_share)
    groups = sorted({int(g) for g in pd.read_csv(shipped_file(r.groups_from))["group"] if 1 <= int(g) <= 230}) if n_conditional else []
    rows += [{"dim": 3} for _ in range(r.samples - n_property - n_conditional)]
    rows += [{"dim": 3, "sg": rng.choice(groups)} for _ in range(n_conditional)]
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dim", "sg", *sorted(r.property_targets)], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def temperature(config: ImproveConfig, model_index: int) -> float:
    """Round 1 samples at temperature_start, the final model at temperature_end (linear in between)."""
    r = config.rounds
    return r.temperature_start + (r.temperature_end - r.temperature_start) * min(model_index, r.rounds) / r.rounds


# ------------------------------------------------------------------------------------------------ scoring


class Scorer:
    """Tier, e_above_hull and novelty of refined samples (the hull and the novelty reference loaded once).

    Energies come from `xtallm relax`'s engines (`relax_many`): the round's valid crystals go to the potential
    together, so the batched FIRE engine takes one model call per step for many crystals (single points
    too, with `relax_steps: 0`)."""

    def __init__(self, options: ScoreOptions):
        from .evaluation import stability as S

        self.options = options
        self.hull = S.Hull(shipped_file(options.hull))
        self._reference = None  # metrics.ReferenceIndex of the training table, built when first asked

    def novel(self, structure) -> bool | None:
        """No match in the training table: the evaluation's own test (metrics.ReferenceIndex, per formula bucket)."""
        if self.options.novelty_reference is None:
            return None
        if self._reference is None:
            import pandas as pd

            from .evaluation.context import cif_column
            from .evaluation.metrics import ReferenceIndex
            from .samples import read_cif

            table = pd.read_csv(self.options.novelty_reference)
            known = (read_cif(cif) if isinstance(cif, str) else None for cif in table[cif_column(table, self.options.novelty_reference)])
            self._reference = ReferenceIndex(s for s in known if s is not None)
        return not self._reference.contains(structure)

    def prescreen(self, sample) -> tuple[dict[str, Any], Any]:
        """The row of a sample without its energy, and the structure whose energy decides the rest (None: settled)."""
        from .sample import honours_group

        row: dict[str, Any] = {"id": sample.id, "tier": 0, "why": None, "e_above_hull": None, "energy_per_atom": None,
                               "novel": None, "formula": None, "predicted": None, "property_distance": None}
        structure = sample.structure() if sample.ok and sample.cif else None
        if structure is None:
            row["why"] = sample.error or "no crystal"
            return row, None
        row["formula"] = structure.composition.reduced_formula
        if not sample.valid:
            row.update(tier=1, why=sample.invalid_reason or "not valid")
            return row, None
        if not honours_group(sample):
            row.update(tier=1, why="not in the requested group")
            return row, None
        row["tier"] = TIERS.index("valid")
        return row, structure

    @staticmethod
    def requests_property(sample) -> bool:
        """A prompt asking for a property a predictor scores: its reward is the distance to the request, not an energy."""
        from .evaluation.properties import PREDICTORS

        return any(key in PREDICTORS for key in sample.conditions)

    def finish_requests(self, pending: list[tuple[Any, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Prescreened valid rows of property prompts completed by their predictions (one predictor call per property)."""
        from .evaluation import properties as P

        samples = [sample for sample, _ in pending]
        for (sample, row), predicted in zip(pending, P.predict_requested(samples)):
            row.update(predicted=predicted, property_distance=P.request_distance(predicted, sample.conditions),
                       novel=self.novel(sample.structure()))
        return [row for _, row in pending]

    def finish(self, row: dict[str, Any], relaxation) -> dict[str, Any]:
        """A prescreened valid row completed by its single point or capped relaxation."""
        from .evaluation import stability as S

        if relaxation.error or relaxation.energy is None or relaxation.structure is None:
            row.update(tier=1, why=f"MLFF: {relaxation.error or 'no energy'}"[:200])  # exploded, or the potential failed
            return row
        structure, energy = relaxation.structure, relaxation.energy
        row["energy_per_atom"] = energy / len(structure)
        corrected, reason = S.corrected_energy(self.hull.mlff, structure, energy)
        if corrected is not None:
            row["e_above_hull"], reason = self.hull.e_above_hull(structure.composition, corrected)
        row["why"] = reason
        if row["e_above_hull"] is not None and row["e_above_hull"] <= self.options.metastable:
            row["tier"] = TIERS.index("metastable")
        row["novel"] = self.novel(structure)
        return row

    def energies(self, items: list[tuple[Any, Any, int]]):
        """(key, Relaxation) for (key, structure, dim) items, as they finish."""
        from .evaluation.relax import relax_many

        what = f"{self.options.relax_steps}-step relaxations" if self.options.relax_steps else "single points"
        yield from relax_many(items, self.hull.mlff, steps=self.options.relax_steps, device=self.options.device,
                              engine=self.options.engine, batch_atoms=self.options.batch_atoms, desc=f"scoring ({what})")


def score_round(samples_path: Path, out: Path, scorer: Scorer) -> list[dict[str, Any]]:
    """scores.jsonl for every refined sample (resumes by id): tiers first, then the property prompts' predictions, then the
    other valid crystals' energies together."""
    from .samples import JsonlWriter, read_jsonl, read_samples

    samples = list(read_samples(samples_path))
    done = {r["id"]: r for r in read_jsonl(out)}
    pending: dict[Any, dict[str, Any]] = {}
    requests: list[tuple[Any, dict[str, Any]]] = []
    items = []
    with JsonlWriter(out) as writer:
        for sample in samples:
            if sample.id in done:
                continue
            row, structure = scorer.prescreen(sample)
            if structure is None:
                writer.write([row])
                done[sample.id] = row
            elif scorer.requests_property(sample):
                requests.append((sample, row))
            else:
                pending[sample.id] = row
                items.append((sample.id, structure, sample.dim or 3))
        if requests:
            rows = scorer.finish_requests(requests)
            writer.write(rows)
            done.update((row["id"], row) for row in rows)
        for key, relaxation in scorer.energies(items):
            row = scorer.finish(pending.pop(key), relaxation)
            writer.write([row])
            done[key] = row
    return [done[s.id] for s in samples if s.id in done]


# ------------------------------------------------------------------------------------------------ metrics


def round_metrics(samples_path: Path, scores: list[dict[str, Any]], metastable: float) -> dict[str, Any]:
    """What a round's samples say about the model that drew them (rates over all samples)."""
    from .evaluation.metrics import unique_indices
    from .sample import honours_group
    from .samples import read_samples

    samples = {s.id: s for s in read_samples(samples_path)}
    n = max(len(scores), 1)
    e = sorted(r["e_above_hull"] for r in scores if r["e_above_hull"] is not None)
    structures = [samples[r["id"]].structure() for r in scores if r["tier"] >= 2]
    kept = len(unique_indices(structures))  # the evaluation's uniqueness: StructureMatcher within each formula
    asked = [r for r in scores if "sg" in samples[r["id"]].conditions]
    novel = [r["novel"] for r in scores if r["tier"] >= 2 and r["novel"] is not None]

    def quantile(q: float) -> float | None:
        return e[min(len(e) - 1, int(q * len(e)))] if e else None

    return {**property_metrics([(samples[r["id"]].conditions, r["predicted"]) for r in scores if r.get("predicted")]),
        "n_samples": len(scores),
        "validity": sum(bool(samples[r["id"]].valid) for r in scores) / n,  # the refiner's re-check, before the group test
        "valid_in_group": sum(r["tier"] >= 2 for r in scores) / n,
        "uniqueness_valid": kept / len(structures) if structures else None,
        "novelty_valid": sum(novel) / len(novel) if novel else None,
        "metastable_rate": sum(r["tier"] == 3 for r in scores) / n,
        "stable_rate": sum(r["e_above_hull"] is not None and r["e_above_hull"] <= 0 and r["tier"] >= 2 for r in scores) / n,
        "e_above_hull_quartiles": [quantile(0.25), quantile(0.5), quantile(0.75)],
        "sg_honoured": sum(honours_group(samples[r["id"]]) for r in asked) / len(asked) if asked else None,
        "metastable_threshold": metastable,
    }


def property_metrics(rows: list[tuple[dict[str, Any], dict[str, float | None]]]) -> dict[str, Any]:
    """Per requested property over the valid samples of property prompts: MAE of the prediction against the request and
    the share within the predictor's tolerance (the figures `xtallm evaluate` reports, without the shuffled floor)."""
    from .evaluation import properties as P

    out: dict[str, Any] = {}
    for key in sorted({k for _, predicted in rows for k in predicted}):
        pairs = [(float(asked[key]), predicted[key]) for asked, predicted in rows if predicted.get(key) is not None]
        if pairs:
            out[f"{key}_mae"] = sum(abs(a - b) for a, b in pairs) / len(pairs)
            out[f"{key}_within_tolerance"] = sum(P.predictor(key).within(a, b) for a, b in pairs) / len(pairs)
            out[f"{key}_n"] = len(pairs)
    return out


# ------------------------------------------------------------------------------------------------ training


def rft_examples(pairs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Rejection sampling's training set: each distinct chosen sample of the round's pairs once (prompt, completion)."""
    seen: set[tuple[str, str]] = set()
    rows = []
    for p in pairs:
        key = (p["prompt"], p["chosen"])
        if key not in seen:
            seen.add(key)
            rows.append({"prompt": p["prompt"], "completion": p["chosen"]})
    return rows


def _dpo_trainer(net, tokenizer, pairs, options: "TrainOptions", common: dict[str, Any], peft_config):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(beta=options.beta, **common)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    return DPOTrainer(model=net, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)


def _rft_trainer(net, tokenizer, pairs, options: "TrainOptions", common: dict[str, Any], peft_config):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(completion_only_loss=True, **common)
    dataset = Dataset.from_list(rft_examples(pairs))
    return SFTTrainer(model=net, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)


TRAINERS = {"dpo": _dpo_trainer, "rft": _rft_trainer}  # train.method -> trl trainer on a round's pairs
RFT_KEEP = ("chosen", "metastable")  # train.rft_keep


def training_pairs(pairs: list[dict[str, Any]], scores: list[dict[str, Any]], options: TrainOptions) -> list[dict[str, Any]]:
    """The pairs a round trains on: all of them, or for RFT on the filtered set only those whose chosen sample is
    metastable (the top tier), so the model is pulled toward the hull rather than toward "less far above it"."""
    if options.method != "rft" or options.rft_keep == "chosen":
        return pairs
    top = {r["id"] for r in scores if r["tier"] == TIERS.index("metastable")}
    return [p for p in pairs if p["chosen_id"] in top]


def train_adapter(model: str, adapter: str | None, pairs: list[dict[str, Any]], out: Path, options: TrainOptions) -> Path:
    """One round's training with trl on a LoRA adapter (a new one, or `adapter` trained further): DPO (reference = the
    adapter switched off, the KL anchor) or RFT. Writes out/adapter (with the xtallm files a sampler needs); resumes
    from out/trainer."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xtallm.configs.training import default_device
    from xtallm.llm.model import base_identity, name_adapter_base, read_xtallm_config, XTALLM_CONFIG

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32)
    peft_config = None
    if adapter:
        net = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    else:
        net = base
        peft_config = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    common = dict(
        output_dir=str(out / "trainer"), learning_rate=options.lr, num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size, gradient_accumulation_steps=options.grad_accum,
        max_length=options.max_length, save_strategy="steps", save_steps=options.save_steps, save_total_limit=1,
        logging_steps=5, report_to=[], bf16=options.bf16, seed=options.seed, use_cpu=default_device() == "cpu",
        disable_tqdm=False, dataset_num_proc=None,
    )
    trainer = TRAINERS[options.method](net, tokenizer, pairs, options, common, peft_config)
    checkpoints = sorted((out / "trainer").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    final = out / "adapter"
    trainer.model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(final))
    name_adapter_base(final, model)
    info = read_xtallm_config(adapter or model)
    info.pop("base_identity", None)
    info.update(base_model=model, method=options.method, base_identity=base_identity(base.config, tokenizer))
    (final / XTALLM_CONFIG).write_text(json.dumps(info, indent=2))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    (out / "train.json").write_text(json.dumps({"method": options.method, "steps": result.global_step, "train_loss": result.training_loss,
                                                "loss_history": losses, "pairs": len(pairs),
                                                "examples": len(rft_examples(pairs)) if options.method == "rft" else len(pairs)}, indent=2))
    return final


# ------------------------------------------------------------------------------------------------ the loop


@dataclass
class ImproveJob:
    out: str
    config: ImproveConfig = field(default_factory=ImproveConfig)
    model: str | None = None
    adapter: str | None = None
    config_path: str | None = None


def _phase_done(folder: Path, name: str) -> bool:
    return (folder / f".{name}.done").exists()


def _mark(folder: Path, name: str, seconds: float, seconds_key: dict) -> None:
    seconds_key[name] = round(seconds, 1)
    (folder / f".{name}.done").write_text(f"{seconds:.1f}\n")


def _draw(job: ImproveJob, model: str, adapter: str | None, index: int, folder: Path, scorer_box: dict) -> dict[str, Any]:
    """Sample, refine and score one model (index 0: the start); returns its metrics row."""
    from .refine import RefineJob, run_refine
    from .sample import SampleJob, run_sample

    c = job.config
    timing = json.loads((folder / "seconds.json").read_text()) if (folder / "seconds.json").exists() else {}
    conditions = round_prompts(c, index, folder)
    if not _phase_done(folder, "sample"):
        t = time.perf_counter()
        options = replace(c.sample, model=model, adapter=adapter, temperature=temperature(c, index), seed=c.sample.seed + index)
        run_sample(SampleJob(str(folder / "llm"), 1, {}, str(conditions), options))
        _mark(folder, "sample", time.perf_counter() - t, timing)
    if not _phase_done(folder, "refine"):
        t = time.perf_counter()
        run_refine(RefineJob(str(folder / "llm" / "samples.jsonl"), str(folder / "refined"), replace(c.refine, seed=c.refine.seed + index)))
        _mark(folder, "refine", time.perf_counter() - t, timing)
    refined = folder / "refined" / "samples.jsonl"
    if not _phase_done(folder, "score"):
        t = time.perf_counter()
        if "scorer" not in scorer_box:
            scorer_box["scorer"] = Scorer(c.score)
        score_round(refined, folder / "scores.jsonl", scorer_box["scorer"])
        _mark(folder, "score", time.perf_counter() - t, timing)
    from .samples import read_jsonl

    scores = list(read_jsonl(folder / "scores.jsonl"))
    metrics = {"model": index, "adapter": adapter, "temperature": temperature(c, index),
               **round_metrics(refined, scores, c.score.metastable), "seconds": timing}
    (folder / "seconds.json").write_text(json.dumps(timing, indent=2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run_improve(job: ImproveJob) -> dict[str, Any]:
    """All rounds (resuming what is done); returns the per-model metrics table (also DIR/rounds.json)."""
    from xtallm.llm.model import resolve_adapter, resolve_model
    from xtallm.llm.sampling import check_adapter_matches

    from .samples import read_jsonl, read_samples

    c = job.config
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(c, out / "improve_config.yaml")
    model = resolve_model(job.model)
    adapter = resolve_adapter(job.adapter)
    if adapter:
        check_adapter_matches(model, adapter)
    scorer_box: dict = {}
    table = []
    for index in range(c.rounds.rounds + 1):
        folder = out / f"round_{index}"
        folder.mkdir(parents=True, exist_ok=True)
        table.append(_draw(job, model, adapter, index, folder, scorer_box))
        if index == c.rounds.rounds:
            break
        timing = json.loads((folder / "seconds.json").read_text())
        if not _phase_done(folder, "pairs"):
            t = time.perf_counter()
            samples = {s.id: s for s in read_samples(folder / "refined" / "samples.jsonl")}
            from xtallm.llm.data import prompt_text

            scored = [Scored(r["id"], prompt_text(samples[r["id"]].conditions), samples[r["id"]].text, r["tier"],
                             r["e_above_hull"], r["novel"], r["formula"], samples[r["id"]].structure() if r["tier"] >= 1 else None,
                             r.get("property_distance"))
                      for r in read_jsonl(folder / "scores.jsonl") if r["id"] in samples]
            report = build_pairs(scored, index + 1, c.pairs)
            from transformers import AutoTokenizer

            bos = AutoTokenizer.from_pretrained(model).bos_token or ""
            rows = [{**p.row(), "prompt": bos + p.prompt} for p in report.pairs]
            (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (folder / "pairs.json").write_text(json.dumps(report.summary(), indent=2))
            _mark(folder, "pairs", time.perf_counter() - t, timing)
        pairs = training_pairs(list(read_jsonl(folder / "pairs.jsonl")), list(read_jsonl(folder / "scores.jsonl")), c.train)
        if not pairs:
            raise RuntimeError(f"round {index + 1}: no preference pairs to train on (no valid sample beat another"
                               f"{', none of the winners metastable' if c.train.rft_keep == 'metastable' else ''}); "
                               f"see {folder}/scores.jsonl")
        if not _phase_done(folder, "train"):
            t = time.perf_counter()
            train_adapter(model, adapter, pairs, folder, c.train)
            _mark(folder, "train", time.perf_counter() - t, timing)
        (folder / "seconds.json").write_text(json.dumps(timing, indent=2))
        table[-1]["seconds"] = timing
        table[-1]["pairs"] = json.loads((folder / "pairs.json").read_text())
        adapter = str(folder / "adapter")
    (out / "rounds.json").write_text(json.dumps(table, indent=2))
    plot_rounds(table, out / "rounds.png")
    return {"rounds": c.rounds.rounds, "table": table, "final_adapter": adapter}


def plot_rounds(table: list[dict[str, Any]], path: Path) -> None:
    """Metastable rate, validity and uniqueness per model (start = 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = [row["model"] for row in table]
    within = sorted(k for row in table for k in row if k.endswith("_within_tolerance"))
    for key in ("metastable_rate", "valid_in_group", "uniqueness_valid", "novelty_valid", *dict.fromkeys(within)):
        values = [row.get(key) for row in table]
        if any(v is not None for v in values):
            ax.plot(x, [math.nan if v is None else v for v in values], marker="o", label=key)
    ax.set_xlabel("model (0: start, k: after round k)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


__all__ = ["ImproveConfig", "ImproveJob", "load_improve_config", "run_improve", "train_adapter"]


def launched_main(argv: list[str] | None = None) -> int:
    """`accelerate launch -m xtallm.pipelines.improve --config ... --out ...`: the CLI's improve under Accelerate
    (its device and mixed-precision settings reach trl's trainers). One process: sampling, refining and scoring
    run in the launching process, so several processes would each redo them."""
    import os
    import sys

    from .cli import main

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("xtallm improve: runs as one process (sampling, refinement and scoring are not split across processes); "
              "use `accelerate launch --num_processes 1`", file=sys.stderr)
        return 2
    return main(["improve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(launched_main())
