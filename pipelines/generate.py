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
from dataclasses import dataclass, field, replace
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
    redraw_invalid: int = option(0, "draw a crystal again (up to N times) while it is still invalid after refinement "
                                    "(0: off; validity without redraws is reported either way)")
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
        redraws = r.redraw_invalid > 0
        # with redraws, the optional relaxation waits until the redrawn rows are in (it relaxes the final rows once)
        refined = run_refine(RefineJob(str(out / "llm" / "samples.jsonl"), str(out), RefineSettings(**{**settings, "relax": r.relax and not redraws})))
        if redraws:
            refined["redraws"] = redraw_invalid(config, out, {**settings, "relax": False}, r.redraw_invalid)
            if r.relax:
                from .relax_stage import run_relax_stage

                refined["relax"] = run_relax_stage(out, RefineSettings(**settings))
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


def redraw_invalid(config: GenerateConfig, out: Path, settings: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Draw each crystal that is still invalid after refinement again (same prompt, new seeds), refine it, and
    take the first valid redraw, for up to `rounds` rounds. DIR/samples.jsonl then holds the final rows (same
    ids, `draws` counting every draw); the first draws stay in DIR/first_draws.jsonl: their validity is the
    protocol figure. Each round is a resumable sample + refine stage in DIR/redraws/round_<k>/."""
    from .samples import SampleWriter, read_samples
    from .sample import REDRAW_SEED_STEP

    final = {row.id: row for row in read_samples(out / "samples.jsonl")}
    first = out / "first_draws.jsonl"
    if not first.exists():
        shutil.copyfile(out / "samples.jsonl", first)
    first_rows = {row.id: row for row in read_samples(first)}
    final = {sid: final.get(sid, row) for sid, row in first_rows.items()}
    draws = len(final)
    for k in range(1, rounds + 1):
        bad = [row for row in final.values() if not row.valid]
        if not bad:
            break
        work = out / "redraws" / f"round_{k}"
        sample = replace(config.sample, seed=config.sample.seed + k * REDRAW_SEED_STEP)
        run_sample(SampleJob(str(work / "llm"), 1, condition_sets=[row.conditions for row in bad], options=sample))
        run_refine(RefineJob(str(work / "llm" / "samples.jsonl"), str(work), RefineSettings(**settings)))
        redrawn = {row.id: row for row in read_samples(work / "samples.jsonl")}
        for p, row in enumerate(bad):
            draws += 1
            new = redrawn.get(f"p{p}-0")
            if new is not None and new.valid:
                new = replace(new, id=row.id, draws=(row.draws or 1) + k, extra={**new.extra, "redraw_round": k})
                final[row.id] = new
    tmp = out / "samples.jsonl.redrawn"
    tmp.unlink(missing_ok=True)
    writer = SampleWriter(tmp)
    writer.write(list(final.values()))
    writer.close()
    tmp.replace(out / "samples.jsonl")
    return {"rounds": rounds, "valid_first_draw": sum(bool(r.valid) for r in first_rows.values()),
            "valid_with_redraws": sum(bool(r.valid) for r in final.values()), "samples": len(final), "draws": draws}


__all__ = ["GenerateConfig", "RefineStage", "load_generate_config", "run_generate"]
