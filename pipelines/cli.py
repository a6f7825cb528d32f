"""The `xtallm` command line. Each subcommand's work lives in its own module."""

from __future__ import annotations

import argparse
import json
import sys


def _data_prepare(args: argparse.Namespace) -> int:
    from tokenization.data import PrepareOptions

    from .prepare import prepare

    options = PrepareOptions(
        fmt=args.format,
        dim=args.dim,
        symprec=args.symprec,
        max_atoms=args.max_atoms,
        cif_column=args.cif_column,
        limit=args.limit,
    )
    prepared = prepare(args.source, args.out, options, num_proc=args.num_proc, use_cache=not args.no_cache)
    s = prepared.summary
    print(f"{s['n_ok']} of {s['n_rows']} rows encoded, {s['n_failed']} skipped -> {args.out}")
    if s["n_failed"]:
        print(f"reasons (see {args.out}/failures.csv): {json.dumps(s['failure_reasons'])}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from llm.sampling import SamplingOptions
    from tokenization.conditions import parse_condition_args

    from .sample import SampleJob, run_sample

    job = SampleJob(
        model=args.model,
        adapter=args.adapter,
        out=args.out,
        num_samples=args.num_samples,
        conditions=parse_condition_args(args.condition),
        conditions_file=args.conditions_file,
        backend=args.backend,
        server=args.server,
        server_model=args.server_model,
        constrained=args.constrained,
        max_atoms=args.max_atoms,
        redraws=args.redraws,
        seed=args.seed,
        batch_size=args.batch_size,
        vacuum=args.vacuum,
        options=SamplingOptions(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_tokens=args.max_tokens,
            tensor_parallel_size=args.tensor_parallel_size,
            data_parallel_size=args.data_parallel_size,
        ),
    )
    s = run_sample(job)
    rate = f", {s['samples_per_s']:.1f} samples/s, {s['tokens_per_s']:.0f} tokens/s" if s["samples_per_s"] else ""
    print(f"{s['samples']} samples ({s['generated_now']} new), parse rate {s['parse_rate']:.3f}{rate} -> {args.out}/samples.jsonl")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, write_report

    cutoffs = args.coverage_cutoffs
    if "," in cutoffs:
        cutoffs = tuple(float(x) for x in cutoffs.split(","))
    result = evaluate(args.samples, args.reference, args.train, num_proc=args.num_proc, train_meta=args.train_meta,
                      coverage=not args.no_coverage, coverage_cutoffs=cutoffs,
                      coverage_all_parsed=args.coverage_all_parsed, hull=args.hull, mlff=args.mlff,
                      stability_subsample=args.stability_subsample, relax_steps=args.relax_steps, fmax=args.fmax,
                      device=args.device, seed=args.seed, relaxed=args.relaxed)
    write_report(result, args.out)
    shown = ("n_samples", "parse_rate", "struct_validity", "comp_validity", "uniqueness", "novelty", "cov_recall", "cov_precision",
             "sg_jsd", "p1_rate", "stable_rate", "sun_rate")
    print(" ".join(f"{k}={result[k]:.4f}" if isinstance(result[k], float) else f"{k}={result[k]}" for k in shown))
    print(f"metrics.json and summary.md in {args.out}")
    return 0


def _hull_build(args: argparse.Namespace) -> int:
    from .hull import HullJob, build_hull

    s = build_hull(HullJob(args.structures, args.out, mlff=args.mlff, steps=args.relax_steps, fmax=args.fmax,
                           limit=args.limit, device=args.device, add_elements=not args.no_elements, workers=args.workers))
    print(f"{s['rows']} reference energies in {args.out} ({s['computed_now']} computed now, {s['failed_now']} failed, "
          f"{s['skipped_done']} already there)")
    return 0


def _relax(args: argparse.Namespace) -> int:
    from .relax import RelaxJob, run_relax

    s = run_relax(RelaxJob(args.samples, args.out, mlff=args.mlff, steps=args.relax_steps, fmax=args.fmax,
                           subsample=args.subsample, seed=args.seed, device=args.device, workers=args.workers))
    print(f"{s['chosen']} samples chosen: {s['relaxed_now']} relaxed now ({s['failed_now']} failed), "
          f"{s['already_done']} already in {args.out}; {s['unreadable']} unreadable CIFs skipped")
    return 0


def _refine(args: argparse.Namespace) -> int:
    from refiner.refine import RefineOptions

    from .refine import RefineJob, run_refine

    options = RefineOptions(
        tau=args.tau,
        steps=args.steps,
        corrector_steps=args.corrector_steps,
        refine_lattice=not args.fixed_lattice,
        batch_size=args.batch_size,
        max_atoms=args.max_atoms,
        seed=args.seed,
        compile=args.compile,
    )
    job = RefineJob(args.samples, args.out, args.checkpoint, options, vacuum=args.vacuum, device=args.device, check_symmetry=not args.no_check)
    s = run_refine(job)
    kept = f", group kept {s['group_kept_rate']:.3f}" if s["group_kept_rate"] is not None else ""
    rate = f", {s['structures_per_s']:.1f} structures/s" if s["structures_per_s"] else ""
    print(f"{s['refined']} of {s['samples']} refined ({s['passed_through']} passed through){kept}{rate} -> {args.out}/samples.jsonl")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from tokenization.conditions import parse_condition_args

    from .generate import load_generate_config, run_generate

    overrides = list(args.set)
    for flag, key in ((args.model, "sample.model"), (args.adapter, "sample.adapter"), (args.backend, "sample.backend"), (args.checkpoint, "refine.checkpoint"), (args.tau, "refine.tau"), (args.steps, "refine.steps"), (args.seed, "sample.seed")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.no_refine:
        overrides.append("refine.enabled=false")
    if args.unconstrained:
        overrides.append("sample.constrained=false")
    config = load_generate_config(args.config, overrides)
    s = run_generate(config, args.out, args.num_samples, parse_condition_args(args.condition), args.conditions_file)
    refined = s["refine"]
    extra = f", {refined['refined']} refined (group kept {refined['group_kept_rate']:.3f})" if refined and refined["group_kept_rate"] is not None else ""
    print(f"{s['samples']} samples, parse rate {s['parse_rate']:.3f}{extra} in {s['total_seconds']:.0f} s -> {args.out}/samples.jsonl, {args.out}/cif/")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xtallm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="encode a crystal table (CSV/JSON/parquet, URL or hub id) into a dataset")
    p.add_argument("source", help="file path, URL or hub dataset id (owner/name)")
    p.add_argument("--out", required=True, help="output folder (datasets format + failures.csv + summary.json)")
    p.add_argument("--format", default="wyckoff", choices=["wyckoff", "xyz", "cif"])
    p.add_argument("--dim", type=int, choices=[2, 3], default=None, help="2 = monolayers, 3 = bulk (default: from the table)")
    p.add_argument("--symprec", type=float, default=0.1)
    p.add_argument("--max-atoms", type=int, default=None)
    p.add_argument("--cif-column", default=None)
    p.add_argument("--limit", type=int, default=None, help="first N rows only")
    p.add_argument("--num-proc", type=int, default=None)
    p.add_argument("--no-cache", action="store_true")
    p.set_defaults(func=_data_prepare)

    s = sub.add_parser("sample", help="sample crystals from a model (vLLM, HF generate or a server)")
    s.add_argument("--model", required=True, help="model folder or hub id")
    s.add_argument("--adapter", default=None, help="LoRA adapter folder or hub id")
    s.add_argument("--num-samples", type=int, default=100, help="samples per prompt")
    s.add_argument("--condition", action="append", default=[], metavar="KEY=VALUE", help="e.g. sg=225, elements=Mo,S (repeatable)")
    s.add_argument("--conditions-file", default=None, help="CSV, one condition set (prompt) per row")
    s.add_argument("--out", required=True)
    s.add_argument("--backend", choices=["vllm", "hf", "server"], default="vllm")
    s.add_argument("--server", default=None, help="http://HOST:PORT of an OpenAI-compatible server (vllm serve)")
    s.add_argument("--server-model", default=None, help="model or LoRA module name on the server")
    s.add_argument("--constrained", action="store_true", help="grammar-constrained decoding: every sample parses")
    s.add_argument("--max-atoms", type=int, default=80, help="with --constrained: at most this many atoms in the conventional cell")
    s.add_argument("--redraws", type=int, default=0, help="with sg=/lg=: draw a sample again (up to N times) while its detected group differs")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--max-tokens", type=int, default=768)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=256, help="requests per write to samples.jsonl")
    s.add_argument("--vacuum", type=float, default=15.0, help="Å of vacuum for monolayers")
    s.add_argument("--tensor-parallel-size", type=int, default=1)
    s.add_argument("--data-parallel-size", type=int, default=1)
    s.set_defaults(func=_sample)

    e = sub.add_parser("evaluate", help="validity, uniqueness, novelty, coverage, symmetry and stability metrics of samples")
    e.add_argument("samples", help="samples.jsonl (xtallm sample/refine) or a folder of CIFs")
    e.add_argument("--reference", required=True, help="CSV with a cif column (the held-out split)")
    e.add_argument("--train", action="append", default=[], help="CSV(s) novelty is checked against (repeatable)")
    e.add_argument("--train-meta", action="append", default=[],
                   help="CSV(s) of known crystals without positions (formula, a, b, c, alpha, beta, gamma)")
    e.add_argument("--out", required=True)
    e.add_argument("--num-proc", type=int, default=2)
    e.add_argument("--no-coverage", action="store_true", help="skip COV-R/COV-P (CrystalNN fingerprints)")
    e.add_argument("--coverage-cutoffs", default="mp20", help="CDVAE cutoffs: mp20, carbon, perovskite or STRUCT,COMP")
    e.add_argument("--coverage-all-parsed", action="store_true",
                   help="COV numerator over all parsed samples, as CDVAE's script does (default: valid samples only)")
    e.add_argument("--hull", default=None, help="reference energies from `xtallm hull build` (enables stability, S.U.N.)")
    e.add_argument("--mlff", choices=["sevennet", "chgnet"], default=None,
                   help="potential for relaxations (default: the hull's; must match it); alone: monolayer energies only")
    e.add_argument("--stability-subsample", type=int, default=None, help="relax at most N valid samples (random, --seed)")
    e.add_argument("--relax-steps", type=int, default=1500, help="FIRE steps at most (FrechetCellFilter)")
    e.add_argument("--fmax", type=float, default=0.05, help="force convergence, eV/Å")
    e.add_argument("--device", default=None, help="cpu, cuda (default: a GPU when present)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--relaxed", default=None, help="`xtallm relax` output for these samples: read, not recomputed")
    e.set_defaults(func=_evaluate)

    x = sub.add_parser("relax", help="MLFF relaxations of samples in parallel workers (JSONL out, resumable)")
    x.add_argument("samples", help="samples.jsonl or a folder of CIFs")
    x.add_argument("--out", required=True, help="JSONL, appended to (a rerun resumes)")
    x.add_argument("--mlff", choices=["sevennet", "chgnet"], default="sevennet")
    x.add_argument("--subsample", type=int, default=None, help="relax a random N of the readable samples (--seed)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--relax-steps", type=int, default=1500, help="FIRE steps at most (FrechetCellFilter)")
    x.add_argument("--fmax", type=float, default=0.05)
    x.add_argument("--device", default=None, help="cpu, cuda (default: a GPU when present)")
    x.add_argument("--workers", type=int, default=1, help="parallel relaxations, each with its own potential")
    x.set_defaults(func=_relax)

    h = sub.add_parser("hull", help="reference convex hull from MLFF energies of known crystals").add_subparsers(
        dest="hull_command", required=True)
    hb = h.add_parser("build", help="relax known structures with an MLFF and write their corrected energies")
    hb.add_argument("--structures", action="append", required=True, help="CSV(s) of known crystals (cif column; repeatable)")
    hb.add_argument("--mlff", choices=["sevennet", "chgnet"], default="sevennet")
    hb.add_argument("--out", required=True, help="hull CSV (appended to; a rerun resumes)")
    hb.add_argument("--relax-steps", type=int, default=200, help="FIRE steps per structure (0: single points)")
    hb.add_argument("--fmax", type=float, default=0.05)
    hb.add_argument("--limit", type=int, default=None, help="first N rows of each CSV")
    hb.add_argument("--device", default=None)
    hb.add_argument("--no-elements", action="store_true", help="do not add ASE elemental references for missing elements")
    hb.add_argument("--workers", type=int, default=1, help="parallel relaxations, each with its own potential")
    hb.set_defaults(func=_hull_build)

    g = sub.add_parser("generate", help="sample -> decode -> refine, end to end (embedded defaults when no model is given)")
    g.add_argument("--out", required=True)
    g.add_argument("--num-samples", type=int, default=100, help="samples per prompt")
    g.add_argument("--condition", action="append", default=[], metavar="KEY=VALUE", help="e.g. sg=225, dim=2, lg=78 (repeatable)")
    g.add_argument("--conditions-file", default=None, help="CSV, one condition set (prompt) per row")
    g.add_argument("--config", default=None, help="pipeline YAML (configs/pipeline/*.yaml)")
    g.add_argument("--model", default=None, help="LM folder or hub id (default: the embedded xtallm LM)")
    g.add_argument("--adapter", default=None, help="LoRA folder, or layer_group for the shipped adapter")
    g.add_argument("--backend", default=None, choices=["vllm", "hf"])
    g.add_argument("--checkpoint", default=None, help="refiner folder (default: the shipped refiner)")
    g.add_argument("--tau", type=float, default=None)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--no-refine", action="store_true")
    g.add_argument("--unconstrained", action="store_true", help="free decoding (no grammar)")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any config override")
    g.set_defaults(func=_generate)

    r = sub.add_parser("refine", help="refine sampled crystals with the symmetry-exact diffusion refiner")
    r.add_argument("samples", help="samples.jsonl (xtallm sample) or a folder of CIFs")
    r.add_argument("--out", required=True)
    r.add_argument("--checkpoint", default=None, help="refiner folder (default: the one shipped with xtallm)")
    r.add_argument("--tau", type=float, default=0.2, help="noise level to start from, in (0, 1]; 0.2-0.3 measured best")
    r.add_argument("--steps", type=int, default=200, help="steps of the whole chain; round(tau*steps) are run")
    r.add_argument("--corrector-steps", type=int, default=1)
    r.add_argument("--fixed-lattice", action="store_true", help="refine coordinates only")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the network (GPU: ~2.4x faster after ~40 s of compilation; for large sets)")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--max-atoms", type=int, default=200, help="larger crystals (conventional cell) pass through")
    r.add_argument("--vacuum", type=float, default=15.0, help="Å of vacuum for monolayers")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU when present)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-check", action="store_true", help="skip re-detecting the group of refined crystals")
    r.set_defaults(func=_refine)

    d = sub.add_parser("demo", help="encode/decode the embedded example crystals (bulk + monolayers)")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--num-proc", type=int, default=None)
    d.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"xtallm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
