"""`xtallm generate`: sample (LLM) -> decode -> refine (diffusion) -> samples.jsonl, CIFs, summary.

    xtallm generate --num-samples 100 --out outputs/generate                # embedded default models
    xtallm generate --config configs/pipeline/default.yaml --condition sg=225 --out DIR

Stage outputs are resumable on their own: DIR/llm/samples.jsonl (the sampler's), then
DIR/samples.jsonl + DIR/cif/ (the refiner's, same ids, input kept in `raw_cif`). A re-run
with the same arguments only does what is missing. Without refinement the sampler's rows
are copied as they are.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm.config import load_recipe


@dataclass
class SampleStage:
    model: str | None = None  # None: the embedded default LM
    adapter: str | None = None  # a LoRA folder, or "layer_group" for the shipped layer-group adapter
    backend: str = "vllm"  # vllm | hf
    constrained: bool = True  # grammar-constrained decoding: every sample parses
    max_atoms: int = 80  # constrained decoding: at most this many atoms in the conventional cell
    redraws: int = 3  # with sg=/lg=: draw again while the detected group is not the requested one
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 768
    batch_size: int = 256
    seed: int = 0


@dataclass
class RefineStage:
    enabled: bool = True
    checkpoint: str | None = None  # None: the shipped refiner
    tau: float = 0.2
    steps: int = 50  # round(tau * steps) predictor steps are run
    corrector_steps: int = 1
    batch_size: int = 256
    device: str | None = None


@dataclass
class GenerateConfig:
    sample: SampleStage = field(default_factory=SampleStage)
    refine: RefineStage = field(default_factory=RefineStage)
    vacuum: float = 15.0  # Å of vacuum in monolayer cells


def load_generate_config(path: str | None, overrides: list[str] | None = None) -> GenerateConfig:
    config = load_recipe(GenerateConfig, path, overrides)
    if config.sample.backend not in ("vllm", "hf"):
        raise ValueError(f"sample.backend must be vllm or hf, got {config.sample.backend!r}")
    return config


def _model_paths(stage: SampleStage) -> tuple[str, str | None]:
    from llm.model import default_adapter_path, default_model_path

    model = stage.model or str(default_model_path())
    adapter = stage.adapter
    if adapter is not None and not Path(adapter).exists() and "/" not in adapter:
        adapter = str(default_adapter_path(adapter))  # a shipped adapter by task name
    return model, adapter


def run_generate(
    config: GenerateConfig,
    out: str | Path,
    num_samples: int,
    conditions: dict[str, Any] | None = None,
    conditions_file: str | None = None,
) -> dict[str, Any]:
    """The whole pipeline; returns (and writes to DIR/summary.json) what each stage did."""
    from llm.sampling import SamplingOptions
    from refiner.refine import RefineOptions

    from .refine import RefineJob, run_refine
    from .sample import SampleJob, run_sample

    out = Path(out)
    s = config.sample
    model, adapter = _model_paths(s)
    started = time.perf_counter()
    job = SampleJob(
        model=model,
        adapter=adapter,
        out=str(out / "llm"),
        num_samples=num_samples,
        conditions=conditions or {},
        conditions_file=conditions_file,
        backend=s.backend,
        constrained=s.constrained,
        max_atoms=s.max_atoms,
        redraws=s.redraws,
        seed=s.seed,
        batch_size=s.batch_size,
        vacuum=config.vacuum,
        options=SamplingOptions(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens),
    )
    sampled = run_sample(job)
    sample_seconds = time.perf_counter() - started
    r = config.refine
    if r.enabled:
        options = RefineOptions(tau=r.tau, steps=r.steps, corrector_steps=r.corrector_steps, batch_size=r.batch_size, seed=s.seed)
        refined = run_refine(RefineJob(str(out / "llm" / "samples.jsonl"), str(out), r.checkpoint, options, vacuum=config.vacuum, device=r.device))
    else:
        refined = None
        shutil.copyfile(out / "llm" / "samples.jsonl", out / "samples.jsonl")
    summary = {
        "samples": sampled["samples"],
        "parse_rate": sampled["parse_rate"],
        "model": model,
        "adapter": adapter,
        "backend": s.backend,
        "constrained": s.constrained,
        "sample_seconds": sample_seconds,
        "refine": refined,
        "total_seconds": time.perf_counter() - started,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
