"""`xtallm generate`: sample (LLM) -> decode -> refine (diffusion) -> samples.jsonl, CIFs, summary.

    xtallm generate --num-samples 100 --out outputs/generate                # the shipped recipe, embedded models
    xtallm generate --config configs/pipeline/monolayers.yaml --condition dim=2 --condition lg=78 --out DIR

The recipe is configs/pipeline/default.yaml (shipped with the package) unless --config names
another; its `sample:` section takes every `xtallm sample` setting, its `refine:` section every
`xtallm refine` setting (the same dataclasses, so the same names and defaults). Stage outputs
are resumable on their own: DIR/llm/samples.jsonl (the sampler's), then DIR/samples.jsonl +
DIR/cif/ (the refiner's, same ids, input kept in `raw_cif`). A re-run with the same arguments
only does what is missing. Without refinement the sampler's rows are copied as they are.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtallm.configs.recipe import load_recipe, option, shipped
from xtallm.llm.model import resolve_model

from .refine import RefineJob, RefineSettings, run_refine
from .sample import SampleJob, SampleOptions, run_sample

DEFAULT_RECIPE = "pipeline/default.yaml"


@dataclass
class RefineStage(RefineSettings):
    enabled: bool = option(True, "refine the sampled crystals (no: keep the LLM's crystals as they are)")
    # the stage follows the sampler unless the recipe says otherwise
    seed: int | None = option(None, "seed of the chain's noise (default: the sample stage's seed)")
    vacuum: float | None = option(None, "Å of vacuum in monolayer cells (default: the sample stage's)")


@dataclass
class GenerateConfig:
    sample: SampleOptions = field(default_factory=SampleOptions)
    refine: RefineStage = field(default_factory=RefineStage)


def load_generate_config(path: str | None, overrides: list[str] | None = None) -> GenerateConfig:
    """A pipeline recipe (the shipped default when `path` is None) with `section.key=value` overrides."""
    return load_recipe(GenerateConfig, path if path is not None else shipped(DEFAULT_RECIPE), overrides)


def run_generate(
    config: GenerateConfig,
    out: str | Path,
    num_samples: int,
    conditions: dict[str, Any] | None = None,
    conditions_file: str | None = None,
) -> dict[str, Any]:
    """The whole pipeline; returns (and writes to DIR/summary.json) what each stage did."""
    out = Path(out)
    s = config.sample
    r = config.refine
    if r.enabled and r.checkpoint is not None and not Path(r.checkpoint, "refiner.json").exists():  # before the sampling
        raise FileNotFoundError(f"--checkpoint {r.checkpoint}: not a refiner checkpoint (no refiner.json)")
    started = time.perf_counter()
    sampled = run_sample(SampleJob(str(out / "llm"), num_samples, conditions or {}, conditions_file, s))
    sample_seconds = time.perf_counter() - started
    r = config.refine
    refined = None
    if r.enabled:
        settings = {k: getattr(r, k) for k in RefineSettings.__dataclass_fields__}
        settings.update(seed=s.seed if r.seed is None else r.seed, vacuum=s.vacuum if r.vacuum is None else r.vacuum)
        refined = run_refine(RefineJob(str(out / "llm" / "samples.jsonl"), str(out), RefineSettings(**settings)))
    else:
        shutil.copyfile(out / "llm" / "samples.jsonl", out / "samples.jsonl")
    summary = {
        "samples": sampled["samples"],
        "parse_rate": sampled["parse_rate"],
        "groups": sampled["groups"],
        "dims": sampled["dims"],
        "model": resolve_model(s.model),
        "adapter": s.adapter,
        "backend": s.backend,
        "constrained": s.constrained,
        "sample_seconds": sample_seconds,
        "refine": refined,
        "total_seconds": time.perf_counter() - started,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["GenerateConfig", "RefineStage", "load_generate_config", "run_generate"]
