"""The crystal tokenizer: exact round trip, no unknown tokens on real text, save/load."""

import json

import pytest
from transformers import AutoTokenizer

from xtallm.tokenization import format_header
from xtallm.tokenization.data import PrepareOptions, prepare_dataset
from xtallm.tokenization.tokenizer import build_crystal_tokenizer, crystal_vocabulary
from xtallm.pipelines.demo import example_path


@pytest.fixture(scope="module")
def texts():
    out = []
    for name in ("bulk", "layers"):
        ds = prepare_dataset(example_path(name), PrepareOptions(), num_proc=1).dataset
        out += [format_header(json.loads(c)) + "\n" + t for c, t in zip(ds["conditions"], ds["text"])]
    return out


def test_exact_round_trip_without_unknown_tokens(texts, tmp_path):
    tok = build_crystal_tokenizer()
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(texts[0])["input_ids"] == tok(texts[0])["input_ids"]
    assert again.eos_token == "<eos>" and again.pad_token == "<pad>"


def test_tokens_are_chemistry_aware():
    tok = build_crystal_tokenizer()
    pieces = tok.convert_ids_to_tokens(tok("sg 225\na 5.640\nNa 4a\nCl 4b\nSc 24e 0.250")["input_ids"])
    assert "Na" in pieces and "Cl" in pieces and "Sc" in pieces and "sg" in pieces
    assert pieces.count("5") == 3 and "4" in pieces and "a" in pieces  # digits one by one


def test_vocabulary_only_grows():
    vocab = crystal_vocabulary()
    assert vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert len(vocab) == len(set(vocab)) and len(vocab) < 200
