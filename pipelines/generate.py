"""`xtallm generate`: sample (LLM) -> decode -> refine (diffusion) -> samples.jsonl, CIFs, summary.

    xtallm generate --num-samples 100 --out outputs/generate                # the shipped recipe, embedded models
    xtallm generate --config configs/pipeline/monolayers.yaml --condition dim=2 --condition lg=78 --out DIR
    xtallm generate --condition band_gap=2 --num-samples 100 --out DIR   # screened: 16 draws a sample, 3 refined

The recipe is configs/pipeline/default.yaml (shipped with the package) unless --config names
another; its `sample:` section takes every `xtallm sample` setting, its `refine:` section every
`xtallm refine` setting (the same dataclasses, so the same names and defaults). Stage outputs
are resumable on their own: DIR/llm/samples.jsonl (the sampler's), then DIR/samples.jsonl +
DIR/cif/ (the refiner's, same ids, input kept in `raw_cif`). A re-run with the same arguments
only does what is missing. Without refinement the sampler's rows are copied as they are.

`--screen N` (a property request: band_gap, formation_energy, density, hhi, n_atoms) draws N crystals per sample
(DIR/llm/), predicts the requested properties of every unrefined draw (pipelines/evaluation/properties.py), refines
the `screen.refine_best` closest of each sample (DIR/draws/), and keeps the valid refined draw whose predictions are
closest to the request; a sample with no valid draw keeps its first shortlisted one. With `screen.hints`, that share of the
draws writes in its prompt the elements of a training crystal that has the requested band gap or formation energy
(pipelines/property_hints.py): the model follows the hint often, the screen keeps what lands. Every kept row says
`draws` and, in `screen`, what the predictor gave; summary.json counts the draws.
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

from .parallel import RAY_HELP, check_address, cluster_gpus
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


AUTO_SCREEN_DRAWS = 16  # a property request's default (docs/benchmarks.md, issue 29, "Hinted draws")


@dataclass
class ScreenStage:
    draws: int | None = option(None, "draw N crystals per sample and keep the valid one whose predicted properties are closest "
                                     "to the property request (band_gap, formation_energy, density, hhi, n_atoms); 0 or 1: off "
                                     f"(default: {AUTO_SCREEN_DRAWS} when every prompt requests such a property and its "
                                     "predictor is installed, else off)", metavar="N")
    refine_best: int = option(3, "refine only the K draws of a sample whose unrefined crystals the predictor puts closest "
                                 "to the request (the predictions before and after refinement agree closely), then keep "
                                 "the closest valid one", metavar="K")
    hints: float = option(0.75, "share of the draws whose prompt names the elements of a training crystal with the "
                                "requested band gap or formation energy (a hint, not a constraint; bulk prompts without "
                                "elements= or formula=; 0: none)", metavar="SHARE")

    def check(self) -> None:
        if self.refine_best < 1:
            raise ValueError(f"screen.refine_best must be >= 1, got {self.refine_best}")
        from .property_hints import check_share

        check_share(self.hints)


@dataclass
class RaySection:
    address: str | None = option(None, RAY_HELP + ": the refine stage's chunks run there, and on a cluster with GPUs the "
                                       "sampling engine's replicas too (on CPUs sampling stays in this process: vLLM's CPU "
                                       "backend does not run under Ray)", metavar="ADDRESS")


@dataclass
class GenerateConfig:
    sample: SampleOptions = field(default_factory=SampleOptions)
    refine: RefineStage = field(default_factory=RefineStage)
    screen: ScreenStage = field(default_factory=ScreenStage)
    ray: RaySection = field(default_factory=RaySection)


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
    for stage, value in (("sample", s.ray), ("refine", r.ray)):
        if value is not None:
            raise ValueError(f"{stage}.ray: {value!r}: a pipeline names its Ray cluster once, as ray.address")
    check_address(config.ray.address)
    s = replace(s, ray=config.ray.address if config.ray.address and cluster_gpus(config.ray.address) else None)
    if r.enabled and r.checkpoint is not None and not Path(r.checkpoint, "refiner.json").exists():  # before the sampling
        raise FileNotFoundError(f"--checkpoint {r.checkpoint}: not a refiner checkpoint (no refiner.json)")
    draws = config.screen.draws
    if draws is None:
        draws = AUTO_SCREEN_DRAWS if auto_screen(config, conditions, conditions_file) else 0
    elif draws > 1:
        check_screen(config, conditions, conditions_file)
    config.screen.check()
    if draws > 1 or s.model is None:  # the predictor or the default model judges the request: within what they know
        from xtallm.llm.prompts import read_conditions_file

        from .property_hints import check_trained_range

        for c in read_conditions_file(conditions_file) if conditions_file else [conditions or {}]:
            check_trained_range(c)
    hint = None
    if draws > 1 and config.screen.hints > 0:
        from .property_hints import ElementHints

        hint = ElementHints(config.screen.hints)
    started = time.perf_counter()
    sampled = run_sample(SampleJob(str(out / "llm"), num_samples * max(draws, 1), conditions or {}, conditions_file, s, hint=hint))
    sample_seconds = time.perf_counter() - started
    r = config.refine
    refined = None
    # the refine stage's settings; seed and vacuum follow the sampler unless the recipe sets them
    settings = {k: getattr(r, k) for k in RefineSettings.__dataclass_fields__}
    settings.update(seed=s.seed if r.seed is None else r.seed, vacuum=s.vacuum if r.vacuum is None else r.vacuum,
                    ray=config.ray.address)
    if draws > 1:
        shortlist = shortlist_draws(out, draws, config.screen.refine_best)
        refined = run_refine(RefineJob(str(shortlist), str(out / "draws"), RefineSettings(**{**settings, "relax": False})))
        refined["screen"] = screen_draws(out, draws, write_cifs=r.write_cifs)
        if r.relax:
            from .relax_stage import run_relax_stage

            refined["relax"] = run_relax_stage(out, RefineSettings(**settings))
    elif r.enabled:
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
        "samples": refined["screen"]["samples"] if draws > 1 else sampled["samples"],
        "draws": sampled["samples"],
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
    from .samples import read_samples
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
    _replace_samples(out / "samples.jsonl", list(final.values()))
    return {"rounds": rounds, "valid_first_draw": sum(bool(r.valid) for r in first_rows.values()),
            "valid_with_redraws": sum(bool(r.valid) for r in final.values()), "samples": len(final), "draws": draws}


def _replace_samples(path: Path, rows: list) -> None:
    """Write `rows` as the stage's final samples file at once (a killed run never leaves it half-written)."""
    from .samples import SampleWriter

    tmp = path.with_name(path.name + ".partial")
    tmp.unlink(missing_ok=True)
    writer = SampleWriter(tmp)
    writer.write(rows)
    writer.close()
    tmp.replace(path)


def check_screen(config: GenerateConfig, conditions: dict[str, Any] | None, conditions_file: str | None) -> None:
    """Before any sampling: screening needs refinement, no redraws, and a property request its predictor can score."""
    from xtallm.llm.prompts import read_conditions_file

    from .evaluation import properties as P

    if not config.refine.enabled:
        raise ValueError("--screen keeps the best refined draw: it needs the refine stage (drop --no-refine)")
    if config.refine.redraw_invalid:
        raise ValueError("--screen and --redraw-invalid together: screening already draws several crystals per sample; use one")
    sets = read_conditions_file(conditions_file) if conditions_file else [conditions or {}]
    for c in sets:
        keys = [k for k in c if k in P.PREDICTORS]
        if not keys:
            raise ValueError(f"--screen needs a property request with a predictor ({', '.join(P.PREDICTORS)}), e.g. "
                             f"--condition band_gap=2; the prompt {c or '(unconditional)'} has none")
        for key in keys:
            P.require(key, f"--screen {key}")


def auto_screen(config: GenerateConfig, conditions: dict[str, Any] | None, conditions_file: str | None) -> bool:
    """Whether a run screens by default: refinement on, no redraws, and every prompt asks for a predictable property."""
    try:
        check_screen(config, conditions, conditions_file)
    except (ValueError, RuntimeError):
        return False
    return True


def _sample_of(row_id: str, draws: int) -> str:
    """The sample a draw belongs to: draw `p{p}-{k}` -> `p{p}-{k // draws}`."""
    prompt, _, k = row_id.rpartition("-")
    return f"{prompt}-{int(k) // draws}"


def shortlist_draws(out: Path, draws: int, best: int) -> Path:
    """DIR/draws/shortlist.jsonl: per sample, the `best` draws (of DIR/llm/samples.jsonl) whose unrefined crystals the
    predictor puts closest to the request, in draw order; a sample none of whose draws could be predicted keeps its
    first. Written whole on every run (the same draws give the same list, so refinement resumes on it)."""
    from .evaluation import properties as P
    from .samples import read_samples

    rows = list(read_samples(out / "llm" / "samples.jsonl"))
    predicted = P.predict_requested(rows, unrefined=True)
    groups: dict[str, list[tuple[float, int]]] = {}
    for i, (row, values) in enumerate(zip(rows, predicted)):
        distance = P.request_distance(values, row.conditions) if values else float("inf")
        groups.setdefault(_sample_of(row.id, draws), []).append((distance, i))
    keep = sorted(i for group in groups.values() for _, i in sorted(group)[:best])
    path = out / "draws" / "shortlist.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_samples(path, [replace(rows[i], extra={**rows[i].extra, "unrefined_predicted": predicted[i]}) for i in keep])
    return path


def screen_draws(out: Path, draws: int, write_cifs: bool = True) -> dict[str, Any]:
    """DIR/samples.jsonl (+ cif/) from the refined shortlist in DIR/draws/: per sample, the valid draw closest to its
    request (sum over the requested properties of |predicted - requested| / the predictor's tolerance); a sample with
    no valid draw keeps its first shortlisted one. Rewritten from the draws on every run."""
    from .evaluation import properties as P
    from .refine import write_sample_files
    from .samples import read_samples

    listed = {row.id for row in read_samples(out / "draws" / "shortlist.jsonl")}
    rows = [row for row in read_samples(out / "draws" / "samples.jsonl") if row.id in listed]
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(_sample_of(row.id, draws), []).append(row)
    predicted = {row.id: values for row, values in zip(rows, P.predict_requested(rows))}

    def distance(row) -> float:
        return P.request_distance(predicted[row.id], row.conditions)

    kept, n_valid_draws = [], 0
    for sid, group in groups.items():
        valid = [row for row in group if row.valid and predicted[row.id] and distance(row) < float("inf")]
        n_valid_draws += len(valid)
        best = min(valid, key=distance) if valid else group[0]
        kept.append(replace(best, id=sid, draws=draws, extra={**best.extra, "screen": {
            "draw": best.id, "predicted": predicted[best.id], "refined_draws": len(group), "valid_draws": len(valid)}}))
    _replace_samples(out / "samples.jsonl", kept)
    if write_cifs:
        (out / "cif").mkdir(parents=True, exist_ok=True)
        write_sample_files(kept, out / "cif")
    return {"draws": len(groups) * draws, "draws_per_sample": draws, "refined_draws": len(rows), "samples": len(kept),
            "valid_draws": n_valid_draws, "valid": sum(bool(r.valid) for r in kept),
            "samples_with_a_valid_draw": sum(r.extra["screen"]["valid_draws"] > 0 for r in kept),
            "hinted_draws_kept": sum(bool(r.extra.get("hint")) for r in kept)}


__all__ = ["GenerateConfig", "RefineStage", "ScreenStage", "load_generate_config", "run_generate"]
