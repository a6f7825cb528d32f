"""Sampling backends behind one interface: vLLM's offline engine (default), Hugging Face
`generate`, or a running OpenAI-compatible server (`vllm serve`). All take the same requests and
return raw texts; `SAMPLERS` maps a backend name to its class (a new backend: a class with
`start` and `generate`, plus one line there).

A request carries its own seed, so a sample is the same whichever batch it lands in (on every
backend): a resumed run regenerates exactly the samples that are missing.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from xtallm.configs.recipe import option

from .grammar import without_group


@dataclass
class Request:
    id: str
    conditions: dict[str, Any]
    prompt_ids: list[int]
    seed: int
    grammar: str | None = None  # EBNF (xgrammar) the completion must match
    # Two-phase decoding: `grammar` covers the group line alone, and this gives the grammar of
    # the rest from that line (see `generate` and llm.grammar.two_phase).
    grammar_after_group: Callable[[str], str] | None = None
    hint: dict[str, Any] | None = None  # conditions in prompt_ids beyond `conditions` (a hint, not enforced by the grammar)


@dataclass
class SamplingOptions:
    """Decoding and engine settings, declared once for every backend and command."""

    temperature: float = option(1.0, "sampling temperature (0: greedy)")
    top_p: float = option(1.0, "nucleus sampling: keep the smallest token set with this probability mass")
    top_k: int = option(0, "keep only the k most likely tokens (0: all)")
    max_tokens: int = option(768, "tokens per sample at most (capped by the model's training length)")
    tensor_parallel_size: int = option(1, "vLLM: GPUs one model is split over")
    data_parallel_size: int = option(1, "vLLM: engine replicas, one per GPU group")
    dtype: str = option("auto", "vLLM weight/activation dtype (auto, bfloat16, float16, float32)")
    vllm_compile: str = option("auto", "vLLM: torch.compile and CUDA graphs (auto: on a GPU only; on a 2-core CPU compiling "
                          "the 11M model added 40 s to the start and decoded no faster)", choices=("auto", "yes", "no"))
    server: str | None = option(None, "backend server: http://HOST:PORT of an OpenAI-compatible server (vllm serve)")
    server_model: str | None = option(None, "backend server: the model or LoRA module name the server knows")
    extra: dict[str, Any] = option(factory=dict, help="more vLLM engine arguments (YAML/overrides only)", flag=False)

    def check(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_tokens < 1 or self.tensor_parallel_size < 1 or self.data_parallel_size < 1:
            raise ValueError("top_k must be >= 0; max_tokens, tensor_parallel_size and data_parallel_size >= 1")


@dataclass
class Output:
    text: str
    n_tokens: int
    token_ids: list[int] | None = None
    error: str | None = None  # set when no text could be produced (e.g. an impossible condition)
    truncated: bool = False  # stopped by max_tokens, not by the model (or the grammar's end)


class Sampler(Protocol):
    """What a backend does: texts for requests, each drawn with the request's own seed."""

    def generate(self, requests: list[Request], options: SamplingOptions | None = None,
                 adapter_index: int | None = None) -> list[Output]: ...


def adapter_base(adapter: str) -> str | None:
    """The base model an adapter names in its adapter_config.json (a local folder or a hub id the user typed)."""
    path = Path(adapter, "adapter_config.json")
    if not path.exists():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(adapter, "adapter_config.json"))
    return json.loads(path.read_text()).get("base_model_name_or_path")


def check_adapter_matches(model: str, adapter: str) -> None:
    """Refuse an adapter trained on another base before any engine starts.

    An adapter records its base's identity (architecture, sizes, vocabulary hash): compared with the
    model's own, from any folder, whatever either is called. An adapter from before that is checked
    against its named base, looked up locally only (a shipped model by its name, a folder, or the hub
    cache; never fetched, the user did not type it); when it is nowhere here, the check is skipped
    and a line on stderr says so."""
    from transformers import AutoConfig

    from .model import IDENTITY_KEYS, local_model, model_identity, read_xtallm_config

    recorded = read_xtallm_config(adapter).get("base_identity") if Path(adapter).is_dir() else None
    if recorded:
        actual = model_identity(model)
        diff = {k: (v, actual.get(k)) for k, v in recorded.items() if v != actual.get(k)}
        if diff:
            detail = ", ".join(f"{k}: adapter's base {a} vs model {b}" for k, (a, b) in diff.items())
            raise ValueError(f"adapter {adapter} was trained on another base than model {model} ({detail})")
        return
    base = adapter_base(adapter)
    if not base or os.path.abspath(base) == os.path.abspath(model) or base == model:
        return
    # a path relative to the clone it was trained in (adapters before portable names): a shipped model by its folder name
    local = local_model(base) or local_model(Path(base).name)
    try:
        expected = AutoConfig.from_pretrained(local or base, local_files_only=True)
    except (OSError, ValueError):
        print(f"adapter {adapter} names base {base!r}, which is not here and records no base identity: the base check is "
              "skipped (the adapter's shapes are checked when the engine loads it)", file=sys.stderr)
        return
    actual = AutoConfig.from_pretrained(model, local_files_only=Path(model).exists())
    diff = {k: (getattr(expected, k, None), getattr(actual, k, None)) for k in IDENTITY_KEYS
            if getattr(expected, k, None) != getattr(actual, k, None)}
    if diff:
        detail = ", ".join(f"{k}: adapter's base {a} vs model {b}" for k, (a, b) in diff.items())
        raise ValueError(f"adapter {adapter} was trained on {base}, which does not match model {model} ({detail})")


def adapter_rank(adapter: str) -> int:
    path = Path(adapter, "adapter_config.json")
    return int(json.loads(path.read_text()).get("r", 8)) if path.exists() else 8


def _on_gpu() -> bool:
    from xtallm.configs.training import default_device

    return default_device() == "cuda"


class VllmSampler:
    """vLLM offline engine; LoRA adapters through LoRARequest; grammar-constrained decoding."""

    def __init__(self, model: str, adapters: list[str] | None, options: SamplingOptions, max_model_len: int, seed: int = 0):
        from vllm import LLM

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        kwargs: dict[str, Any] = dict(
            model=model,
            max_model_len=max_model_len,
            seed=seed,
            tensor_parallel_size=options.tensor_parallel_size,
            dtype=options.dtype,
            enable_prefix_caching=True,
        )
        if options.data_parallel_size > 1:
            kwargs["data_parallel_size"] = options.data_parallel_size
        if options.vllm_compile == "no" or (options.vllm_compile == "auto" and not _on_gpu()):
            kwargs["enforce_eager"] = True
        if not _on_gpu():
            # A prompt prefilled in chunks has its first sampled tokens discarded, and vLLM then rewinds the request's
            # seeded generator, which a CPU generator cannot do ("CPU Generator does not use offset": the engine dies).
            # Seen with many distinct prompts in one batch (hinted property requests); whole prefills avoid it.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 8192))
        if adapters:
            kwargs.update(enable_lora=True, max_loras=len(adapters), max_lora_rank=max([adapter_rank(a) for a in adapters] + [8]))
        kwargs.update(options.extra)
        from .reaper import watch

        self._reaper = watch()  # the engine's processes die with this one, even on SIGKILL
        self.llm = LLM(**kwargs)
        self.adapters = adapters or []
        self.options = options

    @classmethod
    def start(cls, model: str, adapters: list[str] | None, options: SamplingOptions, max_model_len: int, seed: int = 0,
              batch_size: int = 256) -> "VllmSampler":
        return cls(model, adapters, options, max_model_len, seed)

    def generate(self, requests: list[Request], options: SamplingOptions | None = None, adapter_index: int | None = None) -> list[Output]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import StructuredOutputsParams

        o = options or self.options
        params = [
            SamplingParams(
                temperature=o.temperature,
                top_p=o.top_p,
                top_k=o.top_k if o.top_k > 0 else -1,
                max_tokens=o.max_tokens,
                seed=r.seed,
                structured_outputs=StructuredOutputsParams(grammar=r.grammar) if r.grammar else None,
            )
            for r in requests
        ]
        lora = None
        if adapter_index is not None:  # None: the base model, even on an engine with adapters
            lora = LoRARequest(f"adapter{adapter_index}", adapter_index + 1, self.adapters[adapter_index])
        prompts = [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in requests]
        results = self.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        return [
            Output(c.text, len(c.token_ids), list(c.token_ids), truncated=c.finish_reason == "length")
            for c in (res.outputs[0] for res in results)
        ]

    def close(self) -> None:
        shutdown = getattr(getattr(self.llm.llm_engine, "engine_core", None), "shutdown", None)
        if shutdown:
            shutdown()


class HfSampler:
    """transformers `generate`, batched with left padding; adapters through PEFT; one RNG per request."""

    def __init__(self, model: str, adapters: list[str] | None, options: SamplingOptions, batch_size: int = 64):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from xtallm.configs.training import default_device

        device = default_device()
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device)
        if adapters:
            from peft import PeftModel

            if len(adapters) > 1:
                raise ValueError("the hf backend takes one adapter; use the vllm backend for several")
            self.model = PeftModel.from_pretrained(self.model, adapters[0]).to(device)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(adapters[0] if adapters and Path(adapters[0], "tokenizer_config.json").exists() else model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.options = options
        self.batch_size = batch_size
        self.device = device

    @classmethod
    def start(cls, model: str, adapters: list[str] | None, options: SamplingOptions, max_model_len: int, seed: int = 0,
              batch_size: int = 256) -> "HfSampler":
        return cls(model, adapters, options, batch_size=min(batch_size, 256))

    def generate(self, requests: list[Request], options: SamplingOptions | None = None, adapter_index: int | None = None) -> list[Output]:
        from .hf_generate import generate_ids

        if any(r.grammar for r in requests):
            raise ValueError("constrained decoding needs the vllm or server backend (structured outputs); "
                             "--no-constrained samples with HF generate")
        o = options or self.options
        results = generate_ids(
            self.model, self.tokenizer, [r.prompt_ids for r in requests], max_new_tokens=o.max_tokens,
            temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, seeds=[r.seed for r in requests],
            batch_size=self.batch_size,
        )
        return [Output(text, n, truncated=truncated) for text, n, truncated in results]


class ServerSampler:
    """An OpenAI-compatible completions server, e.g. `vllm serve BASE --enable-lora --lora-modules name=ADAPTER`."""

    def __init__(self, url: str, model_name: str, options: SamplingOptions, timeout: float = 600):
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.options = options
        self.timeout = timeout

    @classmethod
    def start(cls, model: str, adapters: list[str] | None, options: SamplingOptions, max_model_len: int, seed: int = 0,
              batch_size: int = 256) -> "ServerSampler":
        if not options.server:
            raise ValueError("--backend server needs --server http://HOST:PORT")
        name = options.server_model or (Path(adapters[0]).name if adapters else model)
        return cls(options.server, name, options)

    def generate(self, requests: list[Request], options: SamplingOptions | None = None, adapter_index: int | None = None) -> list[Output]:
        import requests as http

        o = options or self.options
        outputs = []
        for r in requests:
            body: dict[str, Any] = {
                "model": self.model_name,
                "prompt": r.prompt_ids,
                "max_tokens": o.max_tokens,
                "temperature": o.temperature,
                "top_p": o.top_p,
                "seed": r.seed,
            }
            if o.top_k > 0:
                body["top_k"] = o.top_k
            if r.grammar:
                body["structured_outputs"] = {"grammar": r.grammar}
                body["return_token_ids"] = True
            try:
                reply = http.post(f"{self.url}/v1/completions", json=body, timeout=self.timeout)
            except http.RequestException as exc:
                raise RuntimeError(f"server {self.url}: {type(exc).__name__}: {exc}") from None
            if reply.status_code != 200:
                raise RuntimeError(f"server {self.url} answered {reply.status_code}: {reply.text[:500]}")
            choice = reply.json()["choices"][0]
            usage = reply.json().get("usage", {})
            outputs.append(Output(choice["text"], int(usage.get("completion_tokens", 0)), choice.get("token_ids"),
                                  truncated=choice.get("finish_reason") == "length"))
        return outputs


# backend name -> class with `start(model, adapters, options, max_model_len, seed, batch_size)` and `generate`
SAMPLERS: dict[str, type] = {"vllm": VllmSampler, "hf": HfSampler, "server": ServerSampler}


def start_sampler(backend: str, model: str, adapters: list[str] | None, options: SamplingOptions, max_model_len: int,
                  seed: int = 0, batch_size: int = 256) -> Sampler:
    """The backend's sampler, started (an engine start can take a while)."""
    if backend not in SAMPLERS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[backend].start(model, adapters, options, max_model_len, seed=seed, batch_size=batch_size)


def generate(
    sampler, requests: list[Request], options: SamplingOptions, adapter_index: int | None = None, eos_token_id: int | None = None
) -> list[Output]:
    """`sampler.generate`, with two-phase requests run as two passes.

    First the group line under its small grammar, then, with that line appended to the prompt,
    the rest under the grammar of the chosen group. The model's choice of group is its own, as
    in one pass; only the grammar is split so that it stays small."""
    split = [i for i, r in enumerate(requests) if r.grammar_after_group is not None]
    if not split:
        return sampler.generate(requests, options, adapter_index=adapter_index)
    outputs: list[Output | None] = [None] * len(requests)
    whole = [i for i in range(len(requests)) if requests[i].grammar_after_group is None]
    for i, out in zip(whole, sampler.generate([requests[i] for i in whole], options, adapter_index=adapter_index) if whole else []):
        outputs[i] = out
    second, second_index = [], []
    pending = {i: requests[i] for i in split}
    for attempt in range(4):  # a group that turns out not to fit is struck off and the line redrawn
        if not pending:
            break
        order = list(pending)
        heads = sampler.generate([pending[i] for i in order], replace(options, max_tokens=8), adapter_index=adapter_index)
        for i, head in zip(order, heads):
            r = pending.pop(i)
            if head.token_ids is None:
                raise ValueError("two-phase constrained decoding needs the token ids of the group line; this backend gave none")
            head_ids = [t for t in head.token_ids if t != eos_token_id]  # the line ended the first pass
            try:
                grammar = r.grammar_after_group(head.text)
            except ValueError as exc:
                outputs[i] = Output(head.text, head.n_tokens, head.token_ids, error=f"ValueError: {exc}")
                try:
                    pending[i] = replace(r, grammar=without_group(r.grammar, head.text), seed=r.seed + 1000)
                except ValueError:
                    pass
                continue
            second.append(replace(r, prompt_ids=r.prompt_ids + head_ids, seed=r.seed + 1, grammar=grammar, grammar_after_group=None))
            second_index.append((i, replace(head, token_ids=head_ids)))
    rest_options = replace(options, max_tokens=max(1, options.max_tokens - 8))
    for (i, head), rest in zip(second_index, sampler.generate(second, rest_options, adapter_index=adapter_index) if second else []):
        token_ids = head.token_ids + rest.token_ids if rest.token_ids is not None else None
        outputs[i] = Output(head.text + rest.text, head.n_tokens + rest.n_tokens, token_ids, rest.error, rest.truncated)
    return outputs  # type: ignore[return-value]
