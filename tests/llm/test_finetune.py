"""Fine-tuning on CPU: from scratch, LoRA, QLoRA, resume, DDP, hub loading, merging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xtallm.llm.config import load_config
from xtallm.llm.finetune import train
from tests.conftest import REPO

from .conftest import TINY, tiny


def test_from_scratch_eval_loss_falls(base_model):
    out, metrics = base_model
    assert metrics["steps"] == 40
    assert metrics["final_eval_loss"] < 0.75 * metrics["initial_eval_loss"]
    assert 0.0 <= metrics["final_sample_parse_rate"] <= 1.0
    for name in ("model.safetensors", "tokenizer.json", "finetune_config.yaml", "xtallm.json", "README.md", "metrics.json"):
        assert (out / name).exists(), name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "final_eval_loss" in card


def test_resume_after_interruption_is_exact(tmp_path):
    common = ["train.max_steps=30", "train.save_every=10", "train.sample_every=0", "train.eval_every=10"]
    straight = train(tiny(tmp_path / "a", *common))
    stopped = train(tiny(tmp_path / "b", *common, "train.stop_after_steps=20"))
    assert "steps" not in stopped and (tmp_path / "b" / "checkpoints" / "step_00000020" / "progress.json").exists()
    resumed = train(tiny(tmp_path / "b", *common))
    assert resumed["steps"] == 30
    pick = lambda m: [(h["step"], round(h.get("train_loss", 0), 5), round(h.get("eval_loss", 0), 5)) for h in m["history"]]
    assert pick(resumed) == pick(straight)


def test_packing_and_gradient_accumulation(tmp_path):
    metrics = train(tiny(tmp_path, "data.packing=true", "train.grad_accum=2", "train.batch_size=4",
                         "train.max_steps=6", "train.sample_every=0", "train.eval_every=6", "train.log_every=2"))
    assert metrics["steps"] == 6
    # a packed row holds several crystals: far fewer rows than crystals
    assert metrics["train_examples"] < 57 / 2
    assert metrics["final_eval_loss"] < metrics["initial_eval_loss"]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_adapter_save_load_and_merge(base_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from xtallm.llm.merge import merge

    base_dir, _ = base_model
    adapter_dir = tmp_path / "adapter"
    metrics = train(tiny(adapter_dir, f"model.base={base_dir}", "model.method=lora", "model.lora.r=4",
                         "train.max_steps=8", "train.sample_every=0", "train.lr=1e-2"))
    assert metrics["trainable_parameters"] < metrics["parameters"] / 4
    assert (adapter_dir / "adapter_config.json").exists() and (adapter_dir / "adapter_model.safetensors").exists()
    assert "library_name: peft" in (adapter_dir / "README.md").read_text()
    ids = torch.tensor([[1, 20, 21, 5, 7, 8]])
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base_logits = _logits(base, ids)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    adapted_logits = _logits(adapted, ids)
    assert not torch.allclose(base_logits, adapted_logits, atol=1e-4), "the adapter changes nothing"
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    assert torch.equal(_logits(again, ids), adapted_logits)
    merged = AutoModelForCausalLM.from_pretrained(merge(adapter_dir, tmp_path / "merged"))
    assert torch.allclose(_logits(merged, ids), adapted_logits, atol=1e-5)

    # shipped as a release: bf16 weights, the run's card; loads and gives (nearly) the same logits
    from safetensors.torch import load_file

    from xtallm.pipelines.release import ship_adapter

    shipped = ship_adapter(adapter_dir, "shipped-lora", tmp_path / "pretrained", hardware="2 CPU cores")
    assert {t.dtype for t in load_file(str(shipped / "adapter_model.safetensors")).values()} == {torch.bfloat16}
    assert "## Training run" in (shipped / "README.md").read_text() and "8 optimizer steps" in (shipped / "README.md").read_text()
    assert (shipped / "loss_curve.csv").exists()
    released = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), shipped)
    assert torch.allclose(_logits(released, ids), adapted_logits, atol=5e-2)
    assert not torch.allclose(_logits(released, ids), base_logits, atol=1e-4)


def test_qlora_on_cpu(base_model, tmp_path):
    pytest.importorskip("bitsandbytes")
    base_dir, _ = base_model
    try:
        metrics = train(tiny(tmp_path, f"model.base={base_dir}", "model.method=qlora", "train.max_steps=4",
                             "train.sample_every=0", "train.eval_every=4"))
    except (RuntimeError, NotImplementedError) as exc:  # pragma: no cover - depends on the bitsandbytes build
        pytest.skip(f"bitsandbytes 4-bit does not run on this CPU: {exc}")
    assert metrics["steps"] == 4 and torch.isfinite(torch.tensor(metrics["final_eval_loss"]))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base_dir)


def test_general_llm_with_its_own_tokenizer(tmp_path):
    """A GPT-2-style model with a byte-level BPE tokenizer (built here: nothing can be downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", "sg 225 a 5.640 Na 4a Cl 4b band_gap=1.0"] * 50
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=64, n_layer=2, n_head=4))
    gpt.save_pretrained(tmp_path / "gpt")
    tok.save_pretrained(tmp_path / "gpt")
    metrics = train(tiny(tmp_path / "run", f"model.base={tmp_path / 'gpt'}", "model.method=lora",
                         "model.lora.target_modules=[c_attn]", "model.attn_implementation=eager",
                         "train.max_steps=6", "train.sample_every=6", "train.sample_n=2", "data.max_length=512"))
    card = (tmp_path / "run" / "README.md").read_text()
    # a local base folder is named in the card's text, never as the Hub's base_model (it is no hub id)
    assert metrics["steps"] == 6 and "base_model:" not in card and f"- Base model: `{(tmp_path / 'gpt').resolve()}`" in card


def test_ddp_on_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu_ddp.yaml"),
           str(REPO / "llm" / "finetune.py"), "--config", str(TINY), f"train.output_dir={tmp_path}", "train.report_to=[]",
           "train.max_steps=4", "train.sample_every=0", "train.eval_every=4", "train.save_every=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "on 2 process(es)" in out.stdout + out.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 4


def test_loading_by_hub_id_from_the_cache(base_model, tmp_path, monkeypatch):
    """A hub id resolves offline once the hub cache holds it (the layout huggingface_hub writes)."""
    import shutil

    base_dir, _ = base_model
    snapshot = tmp_path / "hub" / "models--xtallm--tiny-crystal-lm" / "snapshots" / ("0" * 40)
    shutil.copytree(base_dir, snapshot, ignore=shutil.ignore_patterns("checkpoints", "xtallm"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = ("from transformers import AutoModelForCausalLM, AutoTokenizer; "
            "m = AutoModelForCausalLM.from_pretrained('xtallm/tiny-crystal-lm'); "
            "t = AutoTokenizer.from_pretrained('xtallm/tiny-crystal-lm'); print(m.config.vocab_size, len(t))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = out.stdout.split()
    assert a == b


def test_push_to_hub_uploads_the_folder(base_model, monkeypatch):
    import huggingface_hub

    from xtallm.llm.card import push_to_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            calls["create"] = (repo_id, private)

        def upload_folder(self, folder_path, repo_id, ignore_patterns, commit_message):
            calls["upload"] = (folder_path, repo_id, ignore_patterns)
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = push_to_hub(base_model[0], "me/crystal-lm")
    assert calls["create"] == ("me/crystal-lm", True)
    assert calls["upload"][0] == str(base_model[0]) and "checkpoints/*" in calls["upload"][2]
    assert url.endswith("/commit/1")


def test_xtallm_push_checks_the_card_and_uploads(adapter, tmp_path, monkeypatch, capsys):
    """Issue 27: publishing existed only as --push-to-hub at the end of training; an adapter's card named a local
    base (`base_model: llm/pretrained/...`), which breaks on the Hub."""
    import shutil

    import huggingface_hub
    from huggingface_hub import ModelCard

    from xtallm.pipelines.cli import main

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            calls["create"] = (repo_id, private)

        def upload_folder(self, folder_path, repo_id, ignore_patterns, commit_message):
            calls["upload"] = (folder_path, repo_id)
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    card = ModelCard.load(Path(adapter) / "README.md")  # the adapter of a local base: no base_model the Hub would reject
    assert card.data.base_model is None and card.data.library_name == "peft"
    assert main(["push", str(adapter), "--repo-id", "me/crystal-lora", "--private"]) == 0
    assert calls == {"create": ("me/crystal-lora", True), "upload": (str(adapter), "me/crystal-lora")}
    assert "https://hub/me/crystal-lora/commit/1" in capsys.readouterr().out
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    text = (broken / "README.md").read_text().replace("library_name: peft", "library_name: peft\nbase_model: llm/pretrained/x", 1)
    (broken / "README.md").write_text(text)
    calls.clear()
    assert main(["push", str(broken), "--repo-id", "me/crystal-lora"]) == 2
    assert "is no hub model id" in capsys.readouterr().err and calls == {}
    assert main(["push", str(adapter), "--repo-id", "not a repo id"]) == 2
    (broken / "README.md").unlink()
    assert main(["push", str(broken), "--repo-id", "me/x"]) == 2 and "no README.md" in capsys.readouterr().err


def test_a_card_says_what_the_run_did(base_model, tmp_path):
    """A bulk-only run's card said it learned monolayers; a layer-group adapter's card suggested sg=225."""
    from huggingface_hub import ModelCard

    from xtallm.llm.card import write_model_card

    config = load_config(TINY, [f"model.base={base_model[0]}", "model.method=lora"])
    bulk = write_model_card(tmp_path, config, {"trained_on": {"dims": [3], "conditions": ["sg"], "examples": 40}, "steps": 2})
    text = bulk.read_text()
    assert "Crystals it was trained on: bulk crystals (space groups) (40 training examples)" in text and "monolayers" not in text
    assert "--condition sg=225" in text and "from xtallm import tokenization" in text and "import tokenization;" not in text
    assert ModelCard.load(bulk).data.base_model is None  # a local base is no hub id
    layers = write_model_card(tmp_path, config, {"trained_on": {"dims": [2], "conditions": ["dim", "lg"], "examples": 9}})
    text = layers.read_text()
    assert "--condition dim=2 --condition lg=78" in text and "sg=225" not in text and "dim=2 lg=78" in text
    snippet = text.split("```python\n")[1].split("```")[0]
    compile(snippet, "card", "exec")  # the snippet is Python


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.speed=3"], "config.train.speed: unknown setting"),
        (["model.method=adapterz"], "model.method must be full, lora or qlora"),
        (["model.method=qlora"], "qlora needs a pretrained base model"),
        (["data.train=[]"], "no training data"),
        (["train.lr"], "expected section.key=value"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(TINY, overrides)


def test_schedule_by_time_follows_the_time_budget():
    """On a machine slower than planned, the LR goes where the share of the time budget used puts it."""
    from types import SimpleNamespace

    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from xtallm.configs.training import Progress
    from xtallm.llm.finetune import _schedule_by_time

    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=10, num_training_steps=100, min_lr_rate=0.1)
    run = SimpleNamespace(optimizer=optimizer, scheduler=scheduler, total_steps=100, progress=Progress(step=5))
    _schedule_by_time(run, 0.02)  # steps ahead of time: the step's LR (warm-up)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    _schedule_by_time(run, 0.55)  # time ahead of steps: the LR of step 55, the cosine's middle
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=1e-6)
    _schedule_by_time(run, 1.7)  # out of time: the minimum
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_recipes_with_different_precisions_in_one_process(tmp_path):
    """A notebook (or this test session) trains a bf16 recipe after a full-precision one: accelerate keeps
    the first recipe's state per process and used to refuse the second."""
    common = ["train.max_steps=2", "train.sample_every=0", "train.eval_every=2", "train.save_every=1000"]
    first = train(tiny(tmp_path / "a", *common, "train.mixed_precision=no"))
    second = train(tiny(tmp_path / "b", *common, "train.mixed_precision=bf16"))
    assert first["steps"] == second["steps"] == 2
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps"] == 2


def test_a_run_says_where_it_writes_and_how_it_went_without_third_party_noise(tmp_path):
    """Issue 27: fine-tuning printed no loss and no output folder, and every run printed bitsandbytes' `kernels`
    notice (and vLLM's Triton/NUMA lines); now a bar with the losses, a closing summary, and quiet imports."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "llm" / "finetune.py"), "--config", str(TINY), f"train.output_dir={out}",
           "train.max_steps=2", "train.eval_every=2", "train.sample_every=2", "train.sample_n=2", "train.log_every=1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    console = run.stdout + run.stderr
    assert f"writing to {out}" in console and "training texts" in console
    assert "loss=" in console and "eval=" in console and "tok/s=" in console  # the progress bar's postfix
    assert "2 steps in" in console and "eval loss" in console and f"-> {out}" in console
    assert "kernels" not in console and "Triton" not in console and "Warning" not in console
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['initial_eval_loss']:.3f} -> {metrics['final_eval_loss']:.3f}" in console
