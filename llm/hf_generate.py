"""Sampling with Hugging Face `generate`: batched, left-padded, stops at EOS.

Used for the validity check during training and by the `hf` sampling backend.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def generate_ids(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    batch_size: int = 64,
) -> list[tuple[str, int]]:
    """(text, number of generated tokens) per prompt of token ids; text stops before EOS."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[tuple[str, int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(chunk):  # left padding: generation continues at the right edge
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=top_p,
            top_k=top_k or None,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )
        for row in out[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            results.append((tokenizer.decode(row, skip_special_tokens=True), len(row)))
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
    seed: int | None = None,
) -> list[str]:
    """Generated continuations of text prompts (BOS prepended as in training), prompt-major order."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(n_per_prompt)]
    return [text for text, _ in generate_ids(model, tokenizer, encoded, max_new_tokens, temperature, seed=seed)]
