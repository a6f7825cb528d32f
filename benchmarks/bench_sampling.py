"""Sampling throughput: vLLM offline engine vs Hugging Face `generate`, same model and prompts.

    python benchmarks/bench_sampling.py [--model DIR] [--backends vllm hf] [--batches 1 64 256] [--tokens 128]

Without --model, a randomly initialised model of the default recipe's size (configs/llm/
crystal_lm_small.yaml, crystal tokenizer) is written to a temporary folder: throughput does
not depend on the weights. Every sample generates exactly --tokens tokens (EOS ignored), so
tokens/s compare like for like. Writes benchmarks/results/sampling_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


import torch

REPO = Path(__file__).resolve().parents[1]


def random_default_model(folder: Path) -> Path:
    from transformers import LlamaForCausalLM

    from xtallm.llm.config import load_config
    from xtallm.llm.model import scratch_config
    from xtallm.tokenization.tokenizer import build_crystal_tokenizer

    tok = build_crystal_tokenizer()
    recipe = load_config(REPO / "configs" / "llm" / "crystal_lm_small.yaml")
    model = LlamaForCausalLM(scratch_config(recipe.model, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def bench_hf(model_dir: Path, prompt: list[int], batch: int, tokens: int, repeats: int) -> list[float]:
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    ids = torch.tensor([prompt] * batch, device=device)
    times = []
    for r in range(repeats + 1):  # first run warms up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=tokens,
                           min_new_tokens=tokens, pad_token_id=0, eos_token_id=None)
        if device == "cuda":
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - start)
    return times


def bench_vllm(llm, prompt: list[int], batch: int, tokens: int, repeats: int) -> list[float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [SamplingParams(temperature=1.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True, seed=i) for i in range(batch)]
    prompts = [TokensPrompt(prompt_token_ids=prompt)] * batch
    times = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        if r:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--backends", nargs="+", default=["vllm", "hf"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    model_dir = Path(args.model) if args.model else random_default_model(Path(tempfile.mkdtemp(prefix="crystal-lm-")))
    if not any(model_dir.glob("*.safetensors")):  # a config + tokenizer only: initialise weights here
        from transformers import AutoConfig, LlamaForCausalLM

        LlamaForCausalLM(AutoConfig.from_pretrained(model_dir)).save_pretrained(model_dir)
    prompt = [1] + [5, 6]  # <bos> + two tokens, as a short conditioned prompt
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    results = {"device": device, "tokens_per_sample": args.tokens, "runs": []}
    engine_s = None
    if "vllm" in args.backends:
        from vllm import LLM

        start = time.perf_counter()
        llm = LLM(model=str(model_dir), max_model_len=args.tokens + 16, seed=0, dtype="float32" if not torch.cuda.is_available() else "bfloat16")
        engine_s = time.perf_counter() - start
        results["vllm_engine_start_s"] = engine_s
    for backend in args.backends:
        for batch in args.batches:
            times = bench_vllm(llm, prompt, batch, args.tokens, args.repeats) if backend == "vllm" else bench_hf(model_dir, prompt, batch, args.tokens, args.repeats)
            t = statistics.median(times)
            run = {"backend": backend, "batch": batch, "seconds": times, "samples_per_s": batch / t, "tokens_per_s": batch * args.tokens / t}
            results["runs"].append(run)
            print(f"{backend:5s} batch {batch:4d}: {run['samples_per_s']:9.1f} samples/s {run['tokens_per_s']:11.0f} tokens/s  (runs: {', '.join(f'{x:.2f}' for x in times)} s)", flush=True)
    speedups = {}
    for batch in args.batches:
        v = [r for r in results["runs"] if r["backend"] == "vllm" and r["batch"] == batch]
        h = [r for r in results["runs"] if r["backend"] == "hf" and r["batch"] == batch]
        if v and h:
            speedups[batch] = v[0]["tokens_per_s"] / h[0]["tokens_per_s"]
            print(f"vLLM / HF at batch {batch}: {speedups[batch]:.2f}x")
    results["vllm_over_hf"] = speedups
    if engine_s:
        print(f"vLLM engine start: {engine_s:.1f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if torch.cuda.is_available() else "cpu"
    (out / f"sampling_{tag}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
