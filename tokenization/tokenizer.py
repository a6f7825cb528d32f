"""A word-level Hugging Face tokenizer for crystal text, for LMs trained from scratch.

Every element symbol, Wyckoff letter, condition key and digit is one token, spaces and
newlines included, so `decode(encode(text)) == text` exactly and numbers are read digit by
digit (CrystaLLM / Materium style). Saved and loaded with the usual `save_pretrained` /
`AutoTokenizer.from_pretrained`. General LLMs keep their own tokenizer: the text is plain.
"""

from __future__ import annotations

import re

from pymatgen.core.periodic_table import Element
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .conditions import ORDER as CONDITION_KEYS

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]

ELEMENTS = [el.symbol for el in Element if el.Z <= 103]
WYCKOFF_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["A"]
KEYWORDS = ["sg", "lg", "alpha", "beta", "gamma"] + CONDITION_KEYS
PUNCTUATION = [" ", "\n", ".", "-", "+", "=", ",", "(", ")"]
DIGITS = [str(d) for d in range(10)]


def crystal_vocabulary() -> list[str]:
    """All tokens, specials first; order is part of a trained model, so only append to it."""
    words = SPECIAL_TOKENS + PUNCTUATION + DIGITS + KEYWORDS + ELEMENTS + WYCKOFF_LETTERS
    seen: set[str] = set()
    return [w for w in words if not (w in seen or seen.add(w))]


def _split_pattern(vocab: list[str]) -> str:
    words = sorted((w for w in vocab if len(w) > 1 and w not in SPECIAL_TOKENS), key=len, reverse=True)
    # multi-character words first (longest wins), then any single character
    return "|".join(re.escape(w) for w in words) + r"|[\s\S]"


def build_crystal_tokenizer(model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    vocab = crystal_vocabulary()
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_split_pattern(vocab)), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, ids[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
