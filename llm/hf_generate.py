"""Sampling with Hugging Face `generate`: batched, left-padded, stops at EOS.

Used for the validity check during training and as the fallback sampling backend.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def sample_texts(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    n_per_prompt: int = 1,
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    batch_size: int = 64,
) -> list[str]:
    """Generated continuations (prompt removed, special tokens dropped), prompt-major order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(n_per_prompt)]
    texts: list[str] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
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
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, width:]:
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
    if was_training:
        model.train()
    return texts
