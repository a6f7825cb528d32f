"""A word-level Hugging Face tokenizer for crystal text, for LMs trained from scratch.

Every element symbol, Wyckoff letter, condition key and digit is one token, spaces and
newlines included, so `decode(encode(text)) == text` exactly and numbers are read digit by
digit (CrystaLLM / Materium style). Saved and loaded with the usual `save_pretrained` /
`AutoTokenizer.from_pretrained`. General LLMs keep their own tokenizer: the text is plain.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .conditions import ORDER as CONDITION_KEYS

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
VOCABULARY_FILE = Path(__file__).resolve().parent / "vocabulary.json"


@lru_cache(maxsize=1)
def pinned_vocabulary() -> tuple[str, ...]:
    """The committed token list (position = id) that every shipped model was trained with."""
    return tuple(json.loads(VOCABULARY_FILE.read_text())["tokens"])


def crystal_vocabulary() -> list[str]:
    """All tokens: the pinned list, then any condition key added since (appended, so no id moves).

    Element symbols, Wyckoff letters and keywords were pinned when the first model was trained;
    a new condition (tokenization/conditions.py) gets the next free id without touching the file."""
    words = list(pinned_vocabulary())
    known = set(words)
    return words + [k for k in CONDITION_KEYS if k not in known]


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
