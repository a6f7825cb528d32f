"""`xtallm sample`: batched, resumable sampling with property-conditioned prompts.

Every sample gets an id `p<prompt>-<k>` and a seed derived from (seed, prompt, k); the JSONL
is appended batch by batch, so a re-run with the same arguments skips what is there and
produces exactly the missing samples. With `redraws`, a sample whose detected group is not the
requested sg=/lg= is drawn again with the next seed of its own sequence (`draws` in the row).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from tqdm.auto import tqdm

from xtallm.configs.recipe import option
from xtallm.llm.grammar import GrammarOptions, header_grammar, two_phase, wyckoff_grammar
from xtallm.llm.model import read_xtallm_config, resolve_adapter, resolve_model
from xtallm.llm.prompts import check_supported, prompt_ids, read_conditions_file
from xtallm.llm.sampling import SAMPLERS, Output, Request, Sampler, SamplingOptions, check_adapter_matches, generate, start_sampler
from xtallm.tokenization import get_format
from xtallm.tokenization.conditions import validate_conditions
from xtallm.tokenization.record import DEFAULT_VACUUM, detect_group

from .parallel import RAY_HELP, check_address
from .samples import FIELDS, Sample, SampleWriter, decode_sample, read_cif, read_samples

REDRAW_SEED_STEP = 7919  # seed of draw k: the request's seed + k * this (resumable: the same draws again)


MODEL_HELP = ("model folder, hub id, GGUF file (or a folder holding one) or `smollm2` (converted once into the cache; "
              "default: the embedded xtallm crystal LM)")


@dataclass
class SampleOptions(SamplingOptions):
    """Everything `xtallm sample` (and the sample stage of `xtallm generate`) takes, declared once."""

    model: str | None = option(None, MODEL_HELP)
    adapter: str | None = option(None, "LoRA adapter folder or hub id, or layer_group for the shipped adapter")
    backend: str = option("vllm", "sampling backend", choices=tuple(SAMPLERS))
    constrained: bool = option(True, "grammar-constrained decoding: every sample parses and honours sg/lg/elements/formula "
                                      "(vllm and server backends; --no-constrained samples freely)")
    max_atoms: int = option(80, "constrained: at most this many atoms in the conventional cell")
    redraws: int = option(3, "with sg=/lg=: draw a sample again (up to N times) while its detected group differs "
                             "(0: the model's first draws, the protocol figure)")
    seed: int = option(0, "base seed; every sample's own seed derives from it")
    batch_size: int = option(256, "requests per engine call and per write to samples.jsonl")
    vacuum: float = option(DEFAULT_VACUUM, "Å of vacuum along c in monolayer cells")
    ray: str | None = option(None, RAY_HELP + ": engine replicas as Ray actors on the cluster's GPUs, one per "
                                   "tensor_parallel_size (vLLM's CPU backend does not run under Ray: on CPUs, sample without it)",
                             metavar="ADDRESS")

    def check(self) -> None:
        super().check()
        if self.max_atoms < 1 or self.redraws < 0 or self.batch_size < 1 or self.vacuum < 0:
            raise ValueError("max_atoms and batch_size must be >= 1, redraws and vacuum >= 0")
        check_address(self.ray)


@dataclass
class SampleJob:
    out: str
    num_samples: int = 100  # per prompt
    conditions: dict[str, Any] = field(default_factory=dict)
    conditions_file: str | None = None
    options: SampleOptions = field(default_factory=SampleOptions)
    condition_sets: list[dict[str, Any]] | None = None  # prompts given in code (e.g. redraws), instead of a file
    # conditions added to one draw's prompt text only (a hint the model reads, not a constraint the grammar enforces):
    # hint(conditions, seed) -> extra conditions or None; the row keeps its prompt's conditions and records the hint
    hint: Callable[[dict[str, Any], int], dict[str, Any] | None] | None = None


def model_info(model: str, adapter: str | None) -> dict[str, Any]:
    """Text format, conditions and dims the model was trained with (the adapter's win)."""
    info = read_xtallm_config(model)
    if adapter and Path(adapter, "xtallm.json").exists():
        info = read_xtallm_config(adapter)
    return info


def build_requests(job: SampleJob, model: str, adapter: str | None, tokenizer, info: dict[str, Any]) -> list[Request]:
    if job.num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {job.num_samples}")
    if job.condition_sets is not None:
        sets = [validate_conditions(c) for c in job.condition_sets]
    else:
        sets = read_conditions_file(job.conditions_file) if job.conditions_file else [validate_conditions(job.conditions)]
    o = job.options
    requests = []
    for p, conditions in enumerate(sets):
        check_supported(conditions, info.get("conditions"), adapter or model)
        if "dim" in conditions and conditions["dim"] not in info.get("dims", [2, 3]):
            raise ValueError(f"{adapter or model} was not trained on dim={conditions['dim']} crystals")
        ids = prompt_ids(tokenizer, conditions)
        grammar, after_group = None, None
        if o.constrained:
            if not get_format(info.get("fmt", "wyckoff")).states_symmetry:
                raise ValueError(f"{adapter or model}: constrained decoding needs a model trained on the wyckoff format "
                                 "(--no-constrained samples it freely)")
            grammar, after_group = constraint_grammars(conditions, info.get("dims"), o.max_atoms)
        for k in range(job.num_samples):
            seed = o.seed * 1_000_003 + p * 100_003 + k
            hint = job.hint(conditions, seed) if job.hint else None
            if hint and info.get("conditions") is not None and not set(hint) <= set(info["conditions"]):
                hint = None  # a model never trained with the hint's conditions would not read it
            hinted = prompt_ids(tokenizer, {**conditions, **hint}) if hint else ids
            requests.append(Request(f"p{p}-{k}", conditions, hinted, seed=seed, grammar=grammar, grammar_after_group=after_group,
                                    hint=hint))
    return requests


def constraint_grammars(conditions: dict[str, Any], dims: list[int] | None, max_atoms: int = 80):
    """(grammar, grammar_after_group) of a prompt: one pass with sg=/lg=, else two (`two_phase`)."""
    options = GrammarOptions(max_atoms=max_atoms)
    if not two_phase(conditions):
        return wyckoff_grammar(conditions, dims, options), None

    def after_group(line: str) -> str:
        kind, number = line.split()
        return wyckoff_grammar({**conditions, kind: int(number)}, dims, options, header=False)

    return header_grammar(conditions, dims, options), after_group


def run_sample(job: SampleJob, sampler: Sampler | None = None) -> dict[str, Any]:
    """Sample, decode and append to `out/samples.jsonl`; `sampler` reuses a started engine."""
    from transformers import AutoTokenizer

    o = job.options
    model, adapter = resolve_model(o.model), resolve_adapter(o.adapter)
    if adapter:
        check_adapter_matches(model, adapter)
    info = model_info(model, adapter)
    fmt = info.get("fmt", "wyckoff")
    max_len = context_length(model, info)
    o = replace(o, max_tokens=min(o.max_tokens, max_len - 64))
    tokenizer = AutoTokenizer.from_pretrained(adapter if adapter and Path(adapter, "tokenizer_config.json").exists() else model)
    requests = build_requests(job, model, adapter, tokenizer, info)  # validates everything before an engine starts
    out = Path(job.out)
    writer = SampleWriter(out / "samples.jsonl")
    todo = [r for r in requests if r.id not in writer.done]
    started = time.perf_counter()
    n_tokens = 0
    if todo:
        own = sampler is None  # an engine started here stops here: it must not idle through the next stage
        sampler = sampler or _start(o, model, adapter, max_len)
        try:
            with tqdm(total=len(requests), initial=len(requests) - len(todo), desc="sampling") as bar:
                for start in range(0, len(todo), o.batch_size):
                    batch = todo[start : start + o.batch_size]
                    rows, tokens = _draw(sampler, batch, o, fmt, tokenizer, model, adapter)
                    n_tokens += tokens
                    writer.write(rows)
                    bar.update(len(batch))
        finally:
            if own and hasattr(sampler, "close"):
                sampler.close()
    writer.close()
    elapsed = time.perf_counter() - started
    wanted = {q.id for q in requests}
    rows = [r for r in read_samples(out / "samples.jsonl") if r.id in wanted]
    summary = {
        "samples": len(rows),
        "parsed": sum(r.ok for r in rows),
        "parse_rate": sum(r.ok for r in rows) / max(len(rows), 1),
        "generated_now": len(todo),
        "seconds": elapsed,
        "samples_per_s": len(todo) / elapsed if todo and elapsed > 0 else None,
        "tokens_per_s": n_tokens / elapsed if todo and elapsed > 0 else None,
        "backend": o.backend,
        "constrained": o.constrained,
        "format": fmt,
        "groups": _group_counts(rows),
        "dims": {"bulk": sum(r.ok and r.dim == 3 for r in rows), "2d": sum(r.ok and r.dim == 2 for r in rows)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _draw(sampler: Sampler, batch: list[Request], o: SampleOptions, fmt: str, tokenizer, model: str,
          adapter: str | None) -> tuple[list[Sample], int]:
    """One batch of samples, each drawn again (next seed of its sequence) while it misses its requested group."""
    rows: list[Sample | None] = [None] * len(batch)
    wanted = list(range(len(batch)))
    n_tokens = 0
    for draw in range(1, o.redraws + 2):
        retry = [replace(batch[i], seed=batch[i].seed + REDRAW_SEED_STEP * (draw - 1)) for i in wanted]
        outputs = generate(sampler, retry, o, adapter_index=0 if adapter else None, eos_token_id=tokenizer.eos_token_id)
        for i, request, output in zip(wanted, retry, outputs):
            n_tokens += output.n_tokens
            rows[i] = _sample(o, fmt, tokenizer, request, output, model, adapter, draw)
        wanted = [i for i in wanted if not honours_group(rows[i])]
        if not wanted:
            break
    return rows, n_tokens  # type: ignore[return-value]


def _sample(o: SampleOptions, fmt: str, tokenizer, request: Request, output: Output, model: str, adapter: str | None,
            draw: int) -> Sample:
    error = output.error
    if error is None and output.truncated and request.grammar:
        # a text cut off at a line end can still parse, but it is not the crystal the grammar asked for
        error = f"cut off at max_tokens={o.max_tokens} before the grammar's end"
    sample = decode_sample(request.id, output.text, fmt, o.vacuum) if error is None else Sample(request.id, text=output.text, error=error)
    sample.prompt = tokenizer.decode(request.prompt_ids, skip_special_tokens=True)
    sample.conditions = request.conditions
    if request.hint:
        sample.extra["hint"] = request.hint
    sample.n_tokens, sample.model, sample.adapter, sample.constrained, sample.draws = output.n_tokens, model, adapter, o.constrained, draw
    return sample


def _group_counts(rows: list[Sample]) -> dict[str, int]:
    """How many parsed samples are in each group (`sg 225`: 12, ...), most common first."""
    counts: dict[str, int] = {}
    for r in rows:
        if r.ok and r.group is not None:
            counts[str(r.group)] = counts.get(str(r.group), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def honours_group(sample: Sample | Mapping[str, Any]) -> bool:
    """Whether a sample's detected group (moyopy, symprec 0.1: the evaluation's test) is the one its prompt asked for.

    A prompt without sg=/lg= always passes; an unparsed sample never does. The grammar fixes
    the written group, but free coordinates near special values, or orbits that together have
    more symmetry, can still give a supergroup. Takes a Sample or its JSON row."""
    if isinstance(sample, Mapping):
        conditions, ok, cif = sample.get("conditions") or {}, sample.get("ok"), sample.get("cif")
    else:
        conditions, ok, cif = sample.conditions, sample.ok, sample.cif
    key = "sg" if "sg" in conditions else "lg" if "lg" in conditions else None
    if key is None:
        return True
    structure = read_cif(cif) if ok and cif else None
    if structure is None:
        return False
    return detect_group(structure, 3 if key == "sg" else 2, symprec=0.1) == int(conditions[key])


def make_sampler(job: SampleJob) -> Sampler:
    """The backend a job asks for, started (reused across run_sample calls)."""
    o = job.options
    model, adapter = resolve_model(o.model), resolve_adapter(o.adapter)
    info = model_info(model, adapter)
    return _start(o, model, adapter, context_length(model, info))


def _start(o: SampleOptions, model: str, adapter: str | None, max_len: int) -> Sampler:
    """The engine in this process, or (--ray) replicas of it on the cluster's GPUs."""
    adapters = [adapter] if adapter else None
    if o.ray:
        from .ray_sampler import RayReplicas

        return RayReplicas.start(o.ray, o.backend, model, adapters, o, max_len, o.seed, o.batch_size)
    return start_sampler(o.backend, model, adapters, o, max_len, o.seed, o.batch_size)


def context_length(model: str, info: dict[str, Any]) -> int:
    """Engine context: the training length (+ room), within the model's positions."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None) or 4096
    return min(int(info.get("max_length", 768)) + 64, int(limit))


__all__ = ["FIELDS", "SampleJob", "SampleOptions", "run_sample", "make_sampler", "honours_group", "constraint_grammars"]
