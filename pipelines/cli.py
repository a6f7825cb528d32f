"""The `xtallm` command line. Each subcommand's work lives in its own module; its flags come from
that module's options dataclass (`configs.recipe.add_flags`), so a setting, its default and its
help are declared once."""

from __future__ import annotations

import argparse
import json
import sys

from xtallm.configs.logs import quiet_third_party
from xtallm.configs.recipe import NUM_PROC_HELP, RecipeError, add_flags, with_flags


def _data_prepare(args: argparse.Namespace) -> int:
    from xtallm.tokenization.data import PrepareOptions

    from .prepare import prepare

    options = with_flags(PrepareOptions(), args)
    if args.num_proc is not None and args.num_proc < 1:
        raise ValueError(f"--num-proc must be >= 1, got {args.num_proc}")
    prepared = prepare(args.source, args.out, options, num_proc=args.num_proc, use_cache=not args.no_cache)
    s = prepared.summary
    print(f"{s['n_ok']} of {s['n_rows']} rows encoded, {s['n_failed']} skipped -> {args.out}")
    if s["n_failed"]:
        print(f"reasons (see {args.out}/failures.csv): {json.dumps(s['failure_reasons'])}")
    return 0


def _data_reference(args: argparse.Namespace) -> int:
    from .samples import output_folder
    from .training_data import heldout_reference

    name = f"{args.split}-reference.csv.xz"
    out = output_folder(args.out, name)
    table = heldout_reference(args.split, args.data)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / name, index=False, compression={"method": "xz", "preset": 9})
    print(f"{len(table)} held-out crystals of {args.split} -> {out / name}")
    return 0


def _groups_line(groups: dict[str, int], dims: dict[str, int] | None = None, top: int = 6) -> str:
    """`; 87 bulk + 13 monolayers; groups sg 14: 10, ...` (the mix is drawn by the model unless dim= is given)."""
    if not groups:
        return ""
    mix = f"; {dims['bulk']} bulk + {dims['2d']} monolayers" if dims else ""
    shown = ", ".join(f"{g}: {n}" for g, n in list(groups.items())[:top])
    more = len(groups) - top
    return f"{mix}; groups {shown}" + (f" (+{more} more)" if more > 0 else "")


def _sample(args: argparse.Namespace) -> int:
    from xtallm.tokenization.conditions import parse_condition_args

    from .sample import SampleJob, SampleOptions, run_sample

    job = SampleJob(args.out, args.num_samples, parse_condition_args(args.condition), args.conditions_file,
                    with_flags(SampleOptions(), args))
    s = run_sample(job)
    rate = f", {s['samples_per_s']:.1f} samples/s, {s['tokens_per_s']:.0f} tokens/s" if s["samples_per_s"] else ""
    print(f"{s['samples']} samples ({s['generated_now']} new), parse rate {s['parse_rate']:.3f}{rate}"
          f"{_groups_line(s['groups'], s.get('dims'))} -> {args.out}/samples.jsonl")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import EvaluateOptions, evaluate, write_report

    options = with_flags(EvaluateOptions(), args)
    result = evaluate(args.samples, args.reference, args.train, num_proc=options.num_proc, train_meta=args.train_meta, options=options)
    write_report(result, args.out)
    shown = ("n_samples", "parse_rate", "struct_validity", "comp_validity", "uniqueness", "novelty", "cov_recall", "cov_precision",
             "sg_jsd", "p1_rate", "stable_rate", "sun_rate")
    print(" ".join(f"{k}={result[k]:.4f}" if isinstance(result[k], float) else f"{k}={result[k]}" for k in shown))
    inputs = result.get("inputs") or {}
    _say_skipped(inputs.get("samples_skipped"), f"{args.out}/metrics.json")
    if inputs.get("n_parsed_but_unreadable_cif"):
        print(f"{inputs['n_parsed_but_unreadable_cif']} parsed samples have a CIF pymatgen cannot read (counted as unparsed)")
    if inputs.get("reference_unreadable"):
        print(f"{inputs['reference_unreadable']} of {inputs['reference_rows']} reference rows unreadable: left out of the reference")
    print(f"metrics.json and summary.md in {args.out}")
    return 0


def _hull_build(args: argparse.Namespace) -> int:
    from .evaluation.hull import HullJob, HullOptions, build_hull

    s = build_hull(HullJob(args.structures, args.out, with_flags(HullOptions(), args)))
    print(f"{s['rows']} reference energies in {args.out}/hull.csv ({s['computed_now']} computed now, {s['failed_now']} failed, "
          f"{s['skipped_done']} already there)")
    _say_skipped(s.get("unreadable"), "the tables", unit="known structure")
    return 0


def _relax(args: argparse.Namespace) -> int:
    from .evaluation.relax import RelaxJob, RelaxOptions, run_relax

    s = run_relax(RelaxJob(args.samples, args.out, with_flags(RelaxOptions(), args)))
    print(f"{s['chosen']} samples chosen: {s['relaxed_now']} relaxed now ({s['failed_now']} failed), "
          f"{s['already_done']} already in {args.out}/relaxed.jsonl; {s['unreadable']} unreadable CIFs skipped")
    _say_skipped(s.get("skipped_input"), "the input")
    return 0


def _say_skipped(skipped: dict | None, where: str = "summary.json", unit: str = "input row") -> None:
    """`1 input row skipped: rows.jsonl row 3 has no 'id'` (a ReadReport's summary): skips are never only in the files."""
    n = (skipped or {}).get("n_skipped", 0)
    if not n:
        return
    shown = "; ".join(s["reason"] if s["reason"].startswith(s["where"]) else f"{s['where']}: {s['reason']}"
                      for s in skipped["skipped"][:3])
    more = f" (+{n - 3} more, in {where})" if n > 3 else f" (in {where})"
    print(f"{n} {unit}{'s' if n > 1 else ''} skipped: {shown}{more}")


def _reasons(counts: dict[str, int]) -> str:
    return " (invalid: " + ", ".join(f"{n} {why}" for why, n in sorted(counts.items(), key=lambda x: -x[1])) + ")" if counts else ""


def _refine(args: argparse.Namespace) -> int:
    from .refine import RefineJob, RefineSettings, run_refine

    s = run_refine(RefineJob(args.samples, args.out, with_flags(RefineSettings(), args)))
    kept = f", group kept {s['group_kept_rate']:.3f}" if s["group_kept_rate"] is not None else ""
    rate = f", {s['structures_per_s']:.2g} structures/s" if s["structures_per_s"] else ""
    print(f"{s['refined']} of {s['samples']} refined ({s['passed_through']} passed through){kept}{rate}; "
          f"{s['valid']} of {s['samples']} valid{_reasons(s['invalid_reasons'])} -> {args.out}/samples.jsonl")
    _say_skipped(s.get("unreadable_input_rows"), f"{args.out}/summary.json")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from xtallm.tokenization.conditions import parse_condition_args

    from .generate import load_generate_config, run_generate

    config = load_generate_config(args.config, list(args.set))
    config.sample = with_flags(config.sample, args, "sample_")
    config.refine = with_flags(config.refine, args, "refine_")
    config.screen = with_flags(config.screen, args, "screen_")
    config.ray = with_flags(config.ray, args, "ray_")
    s = run_generate(config, args.out, args.num_samples, parse_condition_args(args.condition), args.conditions_file)
    refined = s["refine"]
    extra = f", {refined['refined']} refined (group kept {refined['group_kept_rate']:.3f})" if refined and refined["group_kept_rate"] is not None else ""
    if refined and refined.get("screen"):
        sc = refined["screen"]
        extra = (f", {sc['draws']} draws, the closest {sc['refined_draws']} refined, {sc['valid_draws']} valid; kept the closest valid draw for "
                 f"{sc['samples_with_a_valid_draw']} of {sc['samples']} samples ({sc['valid']} valid)")
    elif refined:
        redraws = refined.get("redraws")
        first = redraws["valid_first_draw"] if redraws else refined["valid"]
        extra += f", {first} valid{_reasons(refined['invalid_reasons']) if not redraws else ''}"
        if redraws:
            extra += f" ({redraws['valid_with_redraws']} after redraws, {redraws['draws']} draws)"
    print(f"{s['samples']} samples, parse rate {s['parse_rate']:.3f}{extra}{_groups_line(s['groups'], s.get('dims'))} in {s['total_seconds']:.0f} s "
          f"-> {args.out}/samples.jsonl, {args.out}/cif/")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .serve import ServeJob, ServeOptions, serve

    return serve(ServeJob(with_flags(ServeOptions(), args), args.adapter or []))


def _improve(args: argparse.Namespace) -> int:
    from .improve import ImproveJob, load_improve_config, run_improve

    config = load_improve_config(args.config, list(args.set))
    s = run_improve(ImproveJob(args.out, config, args.model, args.adapter, args.config))
    print("model  metastable  valid(in group)  unique(valid)  novel(valid)")
    for row in s["table"]:
        cells = [row.get(k) for k in ("metastable_rate", "valid_in_group", "uniqueness_valid", "novelty_valid")]
        print(f"{row['model']:5d}  " + "  ".join("    -     " if v is None else f"{v:10.3f}" for v in cells))
    print(f"{s['rounds']} rounds -> {args.out}/rounds.json, rounds.png; final adapter {s['final_adapter']}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from xtallm.llm.card import push_to_hub

    url = push_to_hub(args.folder, args.repo_id, private=args.private)
    print(f"{args.folder} -> {url} ({'private' if args.private else 'public'})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export

    s = export(args.benchmark, args.samples, args.out, n=args.size, relaxed=args.relaxed)
    relaxed = f", relaxed with {s['relaxed_with']}" if s["relaxed"] else ", as generated (not relaxed)"
    print(f"{s['n_structures']} structures from the first {s['samples_read']} samples ({s['samples_without_a_crystal']} without "
          f"a crystal){relaxed} -> {args.out}/structures.csv, {args.out}/cifs.zip")
    _say_skipped(s.get("unreadable_sample_lines"), f"{args.out}/export.json")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, num_proc=args.num_proc)
    for name, s in summary.items():
        print(
            f"{name:7s} {s['encoded']}/{s['rows']} encoded, group kept after decode {s['same_group_after_decode']}/{s['encoded']}, "
            f"StructureMatcher match {s['structure_matcher_match']}/{s['encoded']}, {s['mean_tokens']} tokens per crystal"
        )
    print(f"datasets, tokenizer, example texts and summary.json in {args.out}")
    return 0


def _prompt_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (samples.jsonl, summary.json; a rerun resumes)")
    p.add_argument("--num-samples", type=int, default=100, help="samples per prompt (default: 100)")
    p.add_argument("--condition", action="append", default=[], metavar="KEY=VALUE", help="e.g. sg=225, elements=Mo,S, dim=2 lg=78 (repeatable)")
    p.add_argument("--conditions-file", default=None, help="CSV, one condition set (prompt) per row")


def _add_generate(sub) -> None:
    from .generate import RaySection, RefineStage, ScreenStage, load_generate_config
    from .sample import SampleOptions

    g = sub.add_parser("generate", help=COMMANDS["generate"])
    _prompt_flags(g)
    g.add_argument("--config", default=None, help="pipeline recipe YAML, e.g. configs/pipeline/monolayers.yaml (default: this command's shipped recipe)")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any recipe setting, e.g. sample.top_k=40")
    defaults = load_generate_config(None)
    add_flags(g.add_argument_group("sample stage (any `xtallm sample` flag but --ray)"), SampleOptions, "sample_", defaults=defaults.sample,
              skip=("ray",))
    g.add_argument("--unconstrained", dest="sample_constrained", action="store_false", default=None, help="= --no-constrained")
    # the refine stage's settings that `xtallm refine` or the sample stage also has under another default (the chain's
    # steps: 50 here, 200 there) take a prefix, so that one flag name has one meaning and one default
    prefixed = {"batch_size", "max_atoms", "seed", "vacuum", "steps"}
    # --group is for input files that declare none; every generated row declares its own group, and the flag
    # read like a request for a group (that is `--condition sg=62`)
    add_flags(g.add_argument_group("refine stage (any `xtallm refine` flag but --group)"), RefineStage, "refine_",
              defaults=defaults.refine, rename={**{k: f"refine_{k}" for k in prefixed}, "enabled": "refine"}, skip=("group", "ray"))
    add_flags(g.add_argument_group("Ray (recipe section ray:)"), RaySection, "ray_", defaults=defaults.ray, rename={"address": "ray"})
    add_flags(g.add_argument_group("screening (best of N draws by a property predictor)"), ScreenStage, "screen_",
              defaults=defaults.screen, rename={"draws": "screen"})
    g.set_defaults(func=_generate)


def _add_data(sub) -> None:
    from xtallm.tokenization.data import PrepareOptions

    data = sub.add_parser("data", help=COMMANDS["data"]).add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="encode a crystal table (CSV/JSON/parquet, URL or hub id) into a dataset")
    p.add_argument("source", help="file path, URL or hub dataset id (owner/name)")
    p.add_argument("--out", required=True, help="output folder (datasets format + failures.csv + summary.json)")
    p.add_argument("--num-proc", type=int, default=None, help=NUM_PROC_HELP)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write ~/.cache/xtallm ($XTALLM_CACHE)")
    add_flags(p, PrepareOptions, rename={"fmt": "format", "max_atoms": "max_input_atoms"})
    p.set_defaults(func=_data_prepare)
    r = data.add_parser("reference", help="the structures of a held-out split (configs/data) from your copy of its source tables")
    r.add_argument("split", choices=["mp20-heldout-v1", "twod-heldout-v1"])
    r.add_argument("--data", default=None, help="folder of the source tables (mp20/, twod/: CDVAE's MP-20, 2DMatPedia, MC2D; "
                   "default: $XTALLM_DATA)")
    r.add_argument("--out", required=True, help="output folder (SPLIT-reference.csv.xz, for `xtallm evaluate --reference`)")
    r.set_defaults(func=_data_reference)


def _add_sample(sub) -> None:
    from .sample import SampleOptions

    s = sub.add_parser("sample", help=COMMANDS["sample"])
    _prompt_flags(s)
    add_flags(s, SampleOptions)
    s.set_defaults(func=_sample)


def _add_evaluate(sub) -> None:
    from .evaluation import EvaluateOptions

    e = sub.add_parser("evaluate", help=COMMANDS["evaluate"])
    e.add_argument("samples", help="samples.jsonl (xtallm sample/refine) or a folder of CIFs")
    e.add_argument("--reference", required=True, help="CSV with a cif column (the held-out split)")
    e.add_argument("--train", action="append", default=[], help="CSV(s) novelty is checked against (repeatable)")
    e.add_argument("--train-meta", action="append", default=[],
                   help="CSV(s) of known crystals without positions (formula, a, b, c, alpha, beta, gamma)")
    e.add_argument("--out", required=True, help="output folder (metrics.json, summary.md)")
    add_flags(e, EvaluateOptions)
    e.set_defaults(func=_evaluate)


def _add_relax(sub) -> None:
    from .evaluation.relax import RelaxOptions

    x = sub.add_parser("relax", help=COMMANDS["relax"])
    x.add_argument("samples", help="samples.jsonl or a folder of CIFs")
    x.add_argument("--out", required=True, help="output folder: relaxed.jsonl, appended to (a rerun resumes)")
    add_flags(x, RelaxOptions, rename={"steps": "relax_steps"})
    x.set_defaults(func=_relax)


def _add_hull(sub) -> None:
    from .evaluation.hull import HullOptions

    h = sub.add_parser("hull", help=COMMANDS["hull"]).add_subparsers(dest="hull_command", required=True)
    hb = h.add_parser("build", help="relax known structures with an MLFF and write their corrected energies")
    hb.add_argument("--structures", action="append", required=True, help="CSV(s) of known crystals (cif column; repeatable)")
    hb.add_argument("--out", required=True, help="output folder: hull.csv, appended to (a rerun resumes)")
    add_flags(hb, HullOptions, rename={"steps": "relax_steps"})
    hb.set_defaults(func=_hull_build)


def _add_refine(sub) -> None:
    from .refine import RefineSettings

    r = sub.add_parser("refine", help=COMMANDS["refine"])
    r.add_argument("samples", help="samples.jsonl (xtallm sample) or a folder of CIFs")
    r.add_argument("--out", required=True, help="output folder (samples.jsonl, cif/, summary.json)")
    add_flags(r, RefineSettings, rename={"max_atoms": "refine_max_atoms"})  # as in `generate`: sample's --max-atoms is another cap
    r.add_argument("--fixed-lattice", dest="refine_lattice", action="store_false", default=None, help="= --no-refine-lattice")
    r.add_argument("--no-check", dest="check_symmetry", action="store_false", default=None, help="= --no-check-symmetry")
    r.set_defaults(func=_refine)


def _add_serve(sub) -> None:
    from .serve import ServeOptions

    v = sub.add_parser("serve", help=COMMANDS["serve"])
    add_flags(v, ServeOptions)
    v.add_argument("--adapter", action="append", default=None, metavar="NAME=PATH",
                   help="LoRA adapter served as NAME (folder, shipped name or hub id; repeatable)")
    v.set_defaults(func=_serve)


def _add_improve(sub) -> None:
    from .sample import MODEL_HELP

    i = sub.add_parser("improve", help=COMMANDS["improve"])
    i.add_argument("--model", default=None, help=MODEL_HELP)
    i.add_argument("--adapter", default=None, help="a LoRA adapter of --model to improve further (none: a new adapter)")
    i.add_argument("--config", default=None, help="improve recipe YAML, e.g. configs/improve/tiny_test.yaml (default: this command's shipped recipe)")
    i.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any recipe setting, e.g. rounds.rounds=5")
    i.add_argument("--out", required=True, help="output folder (round_K/..., rounds.json, rounds.png; a rerun resumes)")
    i.set_defaults(func=_improve)


def _add_push(sub) -> None:
    p = sub.add_parser("push", help=COMMANDS["push"])
    p.add_argument("folder", help="a model or adapter folder xtallm wrote (its README.md is the model card)")
    p.add_argument("--repo-id", required=True, help="owner/name on the Hub (created when missing)")
    p.add_argument("--private", action="store_true", help="a private repository (default: public)")
    p.set_defaults(func=_push)


def _add_export(sub) -> None:
    xp = sub.add_parser("export", help=COMMANDS["export"])
    xp.add_argument("samples", help="samples.jsonl or a folder of CIFs")
    xp.add_argument("--benchmark", required=True, choices=["lemat-genbench"], help="whose submission format")
    xp.add_argument("--out", required=True, help="a new folder")
    xp.add_argument("--size", type=int, default=2500, help="structures in the submission: the first N samples with a crystal "
                    "(default: 2500, the leaderboard's)")
    xp.add_argument("--relaxed", default=None, help="`xtallm relax` output (folder or relaxed.jsonl): export the relaxed "
                    "structures (marked as pre-relaxed)")
    xp.set_defaults(func=_export)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help=COMMANDS["demo"])
    d.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    d.add_argument("--num-proc", type=int, default=None, help=NUM_PROC_HELP)
    d.set_defaults(func=_demo)


# name -> one-line help; the flags of a command are built (and its modules imported) only when it runs, so
# `xtallm --help` answers without loading torch
COMMANDS = {
    "generate": "sample -> decode -> refine, end to end (the shipped recipe and embedded models by default)",
    "data": "data preparation",
    "sample": "sample crystals from a model (vLLM, HF generate or a server)",
    "evaluate": "validity, uniqueness, novelty, coverage, symmetry and stability metrics of samples",
    "relax": "MLFF relaxations of samples in parallel workers (relaxed.jsonl, resumable)",
    "hull": "reference convex hull from MLFF energies of known crystals",
    "refine": "refine sampled crystals with the symmetry-exact diffusion refiner",
    "serve": "an OpenAI-compatible vLLM server for a model and its LoRA adapters (for `sample --backend server`)",
    "improve": "preference fine-tuning rounds (DPO) against a stability reward, built against mode collapse",
    "push": "publish a model or adapter folder to the Hugging Face Hub (its card checked first)",
    "export": "samples in another benchmark's submission format (LeMat-GenBench)",
    "demo": "encode/decode the embedded example crystals (bulk + monolayers)",
}
BUILDERS = {"generate": _add_generate, "data": _add_data, "sample": _add_sample, "evaluate": _add_evaluate, "relax": _add_relax,
            "hull": _add_hull, "refine": _add_refine, "serve": _add_serve, "improve": _add_improve, "push": _add_push, "export": _add_export, "demo": _add_demo}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or (`command`) only that subcommand's flags, the others named with their help ("": none)."""
    parser = argparse.ArgumentParser(prog="xtallm", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="third-party logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        if command is None or name == command:
            BUILDERS[name](sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand argv names (the first word that is one), or None."""
    return next((word for word in argv if word in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv) or "").parse_args(argv)
    quiet_third_party(args.verbose)
    try:
        return args.func(args)
    except (ValueError, OSError, RecipeError, RuntimeError) as exc:
        if args.verbose:
            raise
        message = str(exc) or type(exc).__name__
        print(f"xtallm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
