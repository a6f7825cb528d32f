"""Sampling backends: vLLM's offline engine (default), Hugging Face `generate`, or a running
OpenAI-compatible server (`vllm serve`). All take the same requests and return raw texts.

A request carries its own seed, so a sample is the same whichever batch it lands in: a
resumed run regenerates exactly the samples that are missing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from transformers import AutoConfig, AutoTokenizer

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


@dataclass
class SamplingOptions:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 768
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    dtype: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Output:
    text: str
    n_tokens: int
    token_ids: list[int] | None = None
    error: str | None = None  # set when no text could be produced (e.g. an impossible condition)
    truncated: bool = False  # stopped by max_tokens, not by the model (or the grammar's end)


def adapter_base(adapter: str) -> str | None:
    """The base model an adapter names in its adapter_config.json (local folder or hub id)."""
    from huggingface_hub import hf_hub_download

    path = Path(adapter, "adapter_config.json")
    if not path.exists():
        path = Path(hf_hub_download(adapter, "adapter_config.json"))
    return json.loads(path.read_text()).get("base_model_name_or_path")


def check_adapter_matches(model: str, adapter: str) -> None:
    """Refuse an adapter trained on another architecture before any sampling starts."""
    base = adapter_base(adapter)
    if not base or os.path.abspath(base) == os.path.abspath(model) or base == model:
        return
    try:
        expected = AutoConfig.from_pretrained(base)
    except (OSError, ValueError):
        return  # the named base is not available here; shapes are checked when the adapter loads
    actual = AutoConfig.from_pretrained(model)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")
    diff = {k: (getattr(expected, k, None), getattr(actual, k, None)) for k in keys if getattr(expected, k, None) != getattr(actual, k, None)}
    if diff:
        detail = ", ".join(f"{k}: adapter's base {a} vs model {b}" for k, (a, b) in diff.items())
        raise ValueError(f"adapter {adapter} was trained on {base}, which does not match model {model} ({detail})")


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
        if adapters:
            ranks = [json.loads(Path(a, "adapter_config.json").read_text()).get("r", 8) for a in adapters if Path(a, "adapter_config.json").exists()]
            kwargs.update(enable_lora=True, max_loras=len(adapters), max_lora_rank=max(ranks + [8]))
        kwargs.update(options.extra)
        self.llm = LLM(**kwargs)
        self.adapters = adapters or []
        self.options = options

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


class HfSampler:
    """transformers `generate`, batched with left padding; adapters through PEFT."""

    def __init__(self, model: str, adapters: list[str] | None, options: SamplingOptions, batch_size: int = 64):
        import torch
        from transformers import AutoModelForCausalLM

        device = "cuda" if torch.cuda.is_available() else "cpu"
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

    def generate(self, requests: list[Request], options: SamplingOptions | None = None, adapter_index: int | None = None) -> list[Output]:
        from .hf_generate import generate_ids

        if any(r.grammar for r in requests):
            raise ValueError("constrained decoding needs the vllm backend (structured outputs)")
        o = options or self.options
        results = generate_ids(
            self.model, self.tokenizer, [r.prompt_ids for r in requests], max_new_tokens=o.max_tokens,
            temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, seed=requests[0].seed if requests else None,
            batch_size=self.batch_size,
        )
        return [Output(text, n) for text, n in results]


class ServerSampler:
    """An OpenAI-compatible completions server, e.g. `vllm serve BASE --enable-lora --lora-modules name=ADAPTER`."""

    def __init__(self, url: str, model_name: str, options: SamplingOptions, timeout: float = 600):
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.options = options
        self.timeout = timeout

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
            reply = http.post(f"{self.url}/v1/completions", json=body, timeout=self.timeout)
            if reply.status_code != 200:
                raise RuntimeError(f"server {self.url} answered {reply.status_code}: {reply.text[:500]}")
            choice = reply.json()["choices"][0]
            usage = reply.json().get("usage", {})
            outputs.append(Output(choice["text"], int(usage.get("completion_tokens", 0)), choice.get("token_ids"),
                                  truncated=choice.get("finish_reason") == "length"))
        return outputs


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
