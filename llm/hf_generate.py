"""Sampling with Hugging Face `generate`: batched, left-padded, stops at EOS, one RNG per prompt.

`generate` draws from one global RNG, so a sample would depend on the other prompts of its batch.
Here the draw is made by a logits processor with each prompt's own generator (seeded from the
prompt's seed; step k of a prompt always takes that generator's k-th number) and handed to greedy
decoding as the only allowed token: a prompt's text is the same in any batch, as on vLLM.

Used for the validity check during training and by the `hf` sampling backend.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase


class SeededSampling(LogitsProcessor):
    """Temperature / top-k / top-p sampling with one torch.Generator per row; returns a one-hot mask."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float = 1.0, top_k: int = 0):
        self.generators = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.top_p  # keep the smallest set reaching top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
        u = torch.stack([torch.rand((), generator=g) for g in self.generators]).to(probs.device)
        cdf = probs.cumsum(-1)
        chosen = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1).contiguous()).clamp(max=probs.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen, 0.0)


@torch.no_grad()
def generate_ids(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seeds: list[int] | None = None,
    batch_size: int = 64,
) -> list[tuple[str, int, bool]]:
    """(text, generated tokens, stopped by max_new_tokens) per prompt of token ids; text stops before EOS.

    `seeds`: one per prompt (default: the prompt's index). Temperature 0 is greedy."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seeds = list(range(len(prompts))) if seeds is None else seeds
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[tuple[str, int, bool]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(chunk):  # left padding: generation continues at the right edge
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        processors = LogitsProcessorList()
        if temperature > 0:
            processors.append(SeededSampling(seeds[start : start + batch_size], temperature, top_p, top_k))
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,  # the draw is SeededSampling's; greedy takes the one token it leaves
            logits_processor=processors,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        for row in out[:, width:].tolist():
            ended = tokenizer.eos_token_id in row
            if ended:
                row = row[: row.index(tokenizer.eos_token_id)]
            results.append((tokenizer.decode(row, skip_special_tokens=True), len(row), not ended and len(row) >= max_new_tokens))
    if was_training:
        model.train()
    return results


def sample_texts(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    n_per_prompt: int = 1,
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Generated continuations of text prompts (BOS prepended as in training), prompt-major order."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(n_per_prompt)]
    seeds = [seed * 1_000_003 + i for i in range(len(encoded))]
    return [text for text, _, _ in generate_ids(model, tokenizer, encoded, max_new_tokens, temperature, seeds=seeds)]
