"""Training throughput on GPU: tokens/s, MFU and peak memory of llm/finetune.py's training step.

    python benchmarks/bench_finetune.py --case small                 # the default crystal LM, 1 GPU
    accelerate launch --multi_gpu --num_processes 2 benchmarks/bench_finetune.py --case small
    python benchmarks/bench_finetune.py --case lora-8b               # Llama-3.1-8B architecture, random weights
    python benchmarks/bench_finetune.py --case qlora-8b              # same, 4-bit NF4 base (bitsandbytes)

Random weights and random token ids: throughput does not depend on what the weights are.
MFU counts model FLOPs only (no recomputation from gradient checkpointing): per token,
2 x (matmul parameters) forward, twice that backward for full training (activations +
weights) or once for LoRA (frozen weights: activation gradients only), plus attention.
Writes one JSON per run to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from xtallm.llm.config import load_config
from xtallm.llm.model import scratch_config

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s from the datasheets
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0)
REPO = Path(__file__).resolve().parents[1]


def matmul_params(model) -> int:
    # in x out features, not weight.numel(): 4-bit weights are stored packed
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(model, config: LlamaConfig, seq: int, full: bool) -> float:
    n = matmul_params(model)
    attention = 4 * config.num_hidden_layers * seq * config.hidden_size  # QK^T and AV, forward
    return (6 if full else 4) * n + 3 * attention


def build(case: str, accelerator: Accelerator):
    if case == "small":
        recipe = load_config(REPO / "configs" / "llm" / "crystal_lm_small.yaml")
        config = scratch_config(recipe.model, vocab_size=168)  # the crystal tokenizer's vocabulary
        model = LlamaForCausalLM(config)
        return model, config, True
    config = LlamaConfig(**LLAMA_8B, attn_implementation="sdpa")
    torch.set_default_dtype(torch.bfloat16)
    if case == "lora-8b":
        with torch.device(accelerator.device):
            model = LlamaForCausalLM(config)
    else:  # qlora-8b: bitsandbytes quantizes while loading, so go through a checkpoint on local disk
        from transformers import BitsAndBytesConfig

        folder = Path(tempfile.mkdtemp(prefix="llama8b-"))
        with torch.device(accelerator.device):  # random init is fast on the GPU, slow on the CPU
            LlamaForCausalLM(config).save_pretrained(folder)
        torch.cuda.empty_cache()
        torch.set_default_dtype(torch.float32)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = LlamaForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": accelerator.local_process_index})
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    torch.set_default_dtype(torch.float32)
    from peft import LoraConfig, get_peft_model

    if case == "lora-8b":
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, lora), config, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["small", "lora-8b", "qlora-8b"], default="small")
    parser.add_argument("--batch", type=int, default=None, help="sequences per GPU (default: 64 small, 8 for 8B)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence (packed rows)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    batch = args.batch or (64 if args.case == "small" else 8)

    accelerator = Accelerator(mixed_precision="bf16")
    model, config, full = build(args.case, accelerator)
    if args.compile:
        model = torch.compile(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=torch.cuda.is_available())
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    gen = torch.Generator().manual_seed(accelerator.process_index)
    data = [torch.randint(3, config.vocab_size, (batch, args.seq), generator=gen) for _ in range(4)]

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup + args.steps):
        ids = data[step % len(data)].to(accelerator.device)
        sync()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)

    step_s = statistics.median(times)
    world = accelerator.num_processes
    tokens_per_s = batch * args.seq * world / step_s
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    fpt = flops_per_token(accelerator.unwrap_model(model), config, args.seq, full)
    result = {
        "case": args.case, "gpus": world, "gpu": name, "batch_per_gpu": batch, "seq": args.seq,
        "compile": args.compile, "trainable_params": sum(p.numel() for p in params),
        "matmul_params": matmul_params(accelerator.unwrap_model(model)),
        "step_s_median": step_s, "step_s_all": times, "tokens_per_s": tokens_per_s,
        "model_tflops_per_gpu": tokens_per_s * fpt / world / 1e12,
        "mfu": tokens_per_s * fpt / world / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "loss": loss.item(),
    }
    if accelerator.is_main_process:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        tag = f"finetune_{args.case}_{world}gpu{'_compile' if args.compile else ''}.json"
        (out / tag).write_text(json.dumps(result, indent=2))
        print(f"{args.case:9s} {world} x {name}: {tokens_per_s:,.0f} tokens/s, step {step_s * 1e3:.1f} ms, "
              f"MFU {result['mfu'] or 0:.1%}, {result['model_tflops_per_gpu']:.1f} TFLOP/s/GPU, peak {result['peak_memory_gib'] or 0:.1f} GiB")


if __name__ == "__main__":
    main()
