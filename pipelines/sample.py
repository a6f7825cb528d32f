"""`xtallm sample`: batched, resumable sampling with property-conditioned prompts.

Every sample gets an id `p<prompt>-<k>` and a seed derived from (seed, prompt, k); the JSONL
is appended batch by batch, so a re-run with the same arguments skips what is there and
produces exactly the missing samples. With `redraws`, a sample whose detected group is not the
requested sg=/lg= is drawn again with the next seed of its own sequence (`draws` in the row).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pymatgen.core import Structure
from tqdm.auto import tqdm

from llm.grammar import GrammarOptions, header_grammar, two_phase, wyckoff_grammar
from llm.model import read_xtallm_config
from llm.prompts import check_supported, prompt_ids, read_conditions_file
from llm.sampling import HfSampler, Request, SamplingOptions, ServerSampler, VllmSampler, check_adapter_matches, generate
from tokenization.conditions import validate_conditions
from tokenization.record import detect_group

from .records import SampleWriter, decode_sample, read_samples


@dataclass
class SampleJob:
    model: str
    out: str
    num_samples: int = 100  # per prompt
    adapter: str | None = None
    conditions: dict[str, Any] = field(default_factory=dict)
    conditions_file: str | None = None
    backend: str = "vllm"  # vllm | hf | server
    server: str | None = None
    server_model: str | None = None  # name the server knows the model/adapter by
    constrained: bool = False
    max_atoms: int = 80  # constrained decoding: at most this many atoms in the (conventional) cell
    redraws: int = 0  # with sg=/lg=: draw again (new seed), up to this many times, while the detected group differs
    seed: int = 0
    batch_size: int = 256
    vacuum: float = 15.0
    options: SamplingOptions = field(default_factory=SamplingOptions)


def model_info(job: SampleJob) -> dict[str, Any]:
    """Text format, conditions and dims the model was trained with (adapter's wins)."""
    info = read_xtallm_config(job.model)
    if job.adapter and Path(job.adapter, "xtallm.json").exists():
        info = read_xtallm_config(job.adapter)
    return info


def build_requests(job: SampleJob, tokenizer, info: dict[str, Any]) -> list[Request]:
    sets = read_conditions_file(job.conditions_file) if job.conditions_file else [validate_conditions(job.conditions)]
    requests = []
    for p, conditions in enumerate(sets):
        check_supported(conditions, info.get("conditions"), job.adapter or job.model)
        if "dim" in conditions and conditions["dim"] not in info.get("dims", [2, 3]):
            raise ValueError(f"{job.adapter or job.model} was not trained on dim={conditions['dim']} crystals")
        ids = prompt_ids(tokenizer, conditions)
        grammar, after_group = None, None
        if job.constrained:
            if info.get("fmt", "wyckoff") != "wyckoff":
                raise ValueError("--constrained needs a model trained on the wyckoff format")
            grammar, after_group = constraint_grammars(conditions, info.get("dims"), job.max_atoms)
        for k in range(job.num_samples):
            seed = job.seed * 1_000_003 + p * 100_003 + k
            requests.append(Request(f"p{p}-{k}", conditions, ids, seed=seed, grammar=grammar, grammar_after_group=after_group))
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


def run_sample(job: SampleJob, sampler=None) -> dict[str, Any]:
    """Sample, decode and append to `out/samples.jsonl`; `sampler` reuses a started engine."""
    from transformers import AutoTokenizer

    if job.adapter:
        check_adapter_matches(job.model, job.adapter)
    info = model_info(job)
    fmt = info.get("fmt", "wyckoff")
    max_len = context_length(job, info)
    tokenizer = AutoTokenizer.from_pretrained(job.adapter if job.adapter and Path(job.adapter, "tokenizer_config.json").exists() else job.model)
    requests = build_requests(job, tokenizer, info)  # validates everything before an engine starts
    out = Path(job.out)
    writer = SampleWriter(out / "samples.jsonl")
    todo = [r for r in requests if r.id not in writer.done]
    started = time.perf_counter()
    n_tokens = 0
    if todo:
        sampler = sampler or _sampler(job, info)
        bar = tqdm(total=len(requests), initial=len(requests) - len(todo), desc="sampling")
        for start in range(0, len(todo), job.batch_size):
            batch = todo[start : start + job.batch_size]
            rows = [None] * len(batch)
            wanted = list(range(len(batch)))  # rows still to draw
            for draw in range(1, job.redraws + 2):
                retry = [replace(batch[i], seed=batch[i].seed + REDRAW_SEED_STEP * (draw - 1)) for i in wanted]
                outputs = generate(sampler, retry, job.options, adapter_index=0 if job.adapter else None, eos_token_id=tokenizer.eos_token_id)
                for i, request, output in zip(wanted, retry, outputs):
                    n_tokens += output.n_tokens
                    rows[i] = _row(job, fmt, tokenizer, request, output) | {"draws": draw}
                wanted = [i for i in wanted if not honours_group(rows[i])]
                if not wanted:
                    break
            writer.write(rows)
            bar.update(len(batch))
        bar.close()
    writer.close()
    elapsed = time.perf_counter() - started
    rows = [r for r in read_samples(out / "samples.jsonl") if r["id"] in {q.id for q in requests}]
    summary = {
        "samples": len(rows),
        "parsed": sum(r["ok"] for r in rows),
        "parse_rate": sum(r["ok"] for r in rows) / max(len(rows), 1),
        "generated_now": len(todo),
        "seconds": elapsed,
        "samples_per_s": len(todo) / elapsed if todo and elapsed > 0 else None,
        "tokens_per_s": n_tokens / elapsed if todo and elapsed > 0 else None,
        "backend": job.backend,
        "constrained": job.constrained,
        "format": fmt,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


REDRAW_SEED_STEP = 7919  # seed of draw k: the request's seed + k * this (resumable: the same draws again)


def _row(job: SampleJob, fmt: str, tokenizer, request: Request, output) -> dict[str, Any]:
    if output.truncated and request.grammar and output.error is None:
        # a text cut off at a line end can still parse, but it is not the crystal the grammar asked for
        output.error = f"cut off at max_tokens={job.options.max_tokens} before the grammar's end"
    return {
        "id": request.id,
        "prompt": tokenizer.decode(request.prompt_ids, skip_special_tokens=True),
        "conditions": request.conditions,
        "text": output.text,
        **(decode_sample(output.text, fmt, job.vacuum) if output.error is None else
           {"ok": False, "error": output.error, "cif": None, "dim": None, "group": None}),
        "n_tokens": output.n_tokens,
        "model": job.model,
        "adapter": job.adapter,
        "constrained": job.constrained,
    }


def honours_group(row: dict[str, Any]) -> bool:
    """Whether a sample's detected group (moyopy, symprec 0.1: the evaluation's test) is the one its prompt asked for.

    A prompt without sg=/lg= always passes; an unparsed sample never does. The grammar fixes
    the written group, but free coordinates near special values, or orbits that together have
    more symmetry, can still give a supergroup."""
    conditions = row["conditions"]
    key = "sg" if "sg" in conditions else "lg" if "lg" in conditions else None
    if key is None:
        return True
    if not row["ok"]:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(row["cif"], fmt="cif")
    except (ValueError, IndexError, KeyError):
        return False
    return detect_group(structure, 3 if key == "sg" else 2, symprec=0.1) == int(conditions[key])


def make_sampler(job: SampleJob):
    """The backend a job asks for (starting an engine can take a while)."""
    return _sampler(job, model_info(job))


def context_length(job: SampleJob, info: dict[str, Any]) -> int:
    """Engine context: training length (+ room) within the model's positions; caps max_tokens."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(job.model), "max_position_embeddings", None) or 4096
    max_len = min(int(info.get("max_length", 768)) + 64, int(limit))
    job.options.max_tokens = min(job.options.max_tokens, max_len - 64)
    return max_len


def _sampler(job: SampleJob, info: dict[str, Any]):
    max_len = context_length(job, info)
    if job.backend == "vllm":
        return VllmSampler(job.model, [job.adapter] if job.adapter else None, job.options, max_model_len=max_len, seed=job.seed)
    if job.backend == "hf":
        return HfSampler(job.model, [job.adapter] if job.adapter else None, job.options, batch_size=min(job.batch_size, 256))
    if job.backend == "server":
        if not job.server:
            raise ValueError("--backend server needs --server http://HOST:PORT")
        name = job.server_model or (Path(job.adapter).name if job.adapter else job.model)
        return ServerSampler(job.server, name, job.options)
    raise ValueError(f"unknown backend {job.backend!r}: vllm, hf or server")
