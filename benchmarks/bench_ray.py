"""Ray against the process pool on one machine, and what N nodes would take.

    python benchmarks/bench_ray.py evaluate --n-samples 10000 --num-proc 2     # pool, then Ray (--ray auto), in turn
    python benchmarks/bench_ray.py relax --n 200 --steps 20 --workers 2        # likewise, `xtallm relax`'s engine (ASE)
    python benchmarks/bench_ray.py scale --candidates 1000000 --nodes 8 --cores 32

`evaluate` and `relax` run benchmarks/bench_evaluate.py once per backend, each in its own process
(so one's cluster never idles beside the other's pool), pool first, then Ray: a private local cluster
on 127.0.0.1 started by `--ray auto`, its start-up inside the Ray time as a user pays it, and also
reported alone. The reference fingerprints and symmetry are cached before either timed run.
`scale` reads the two results files and projects, from the measured per-task costs (CPU seconds per
sample of the work that fans out, driver seconds per sample of the work that does not), what a
cluster of N nodes would take. Writes benchmarks/results/ray_*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# evaluation stages whose work is fanned out (per sample, per formula bucket); the rest runs on the driver
FANNED_OUT = ("reading", "uniqueness", "novelty", "coverage", "symmetry")


def _run(args: list[str], tag: str) -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}  # loopback only
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_evaluate.py"), *args, "--tag", tag], check=True, env=env)
    name = f"evaluate_{args[0]}" + ("_sevennet_cpu" if args[0] == "relax" else f"_{args[args.index('--n-samples') + 1]}")
    return json.loads((RESULTS / f"{name}{tag}.json").read_text())


def compare(args) -> dict:
    if args.case == "evaluate":
        common = ["metrics", "--n-samples", str(args.n_samples), "--n-reference", str(args.n_reference), "--num-proc", str(args.num_proc)]
        warm = _run([*common[:2], "64", *common[3:]], "_ray_warmup")  # fills the reference caches (untimed here)
        pool = _run(common, "_pool")
        ray = _run([*common, "--ray", "auto"], "_ray")
        t_pool, t_ray = pool["evaluate_s"][0], ray["evaluate_s"][0] + ray["ray_start_s"]
        same = {k: (pool["metrics"][k], ray["metrics"][k]) for k in pool["metrics"]}
        out = {"case": "evaluate", "n_samples": args.n_samples, "pool_s": t_pool, "ray_s": t_ray, "ratio": t_ray / t_pool,
               "ray_start_s": ray.get("ray_start_s"), "pool_stages_s": pool.get("stages_s"), "ray_stages_s": ray.get("stages_s"),
               "metrics_pool_vs_ray": same, "reference_cache_s": warm["reference_fingerprints_s"]}
    else:
        common = ["relax", "--n", str(args.n), "--steps", str(args.steps), "--device", "cpu", "--workers", str(args.workers)]
        pool = _run(common, "_pool")
        ray = _run([*common, "--ray", "auto"], "_ray")
        t_pool, t_ray = pool["seconds"], ray["seconds"] + ray["ray_start_s"]
        out = {"case": "relax", "n": pool["n"], "max_steps": args.steps, "pool_s": t_pool, "ray_s": t_ray, "ratio": t_ray / t_pool,
               "ray_start_s": ray.get("ray_start_s"), "total_steps": [pool["total_steps"], ray["total_steps"]],
               "mean_atoms": pool["mean_atoms"], "cpu_s_per_relaxation": t_pool * args.workers / pool["n"]}
    out["machine"] = pool["machine"]
    print(f"{args.case}: pool {t_pool:.1f} s, Ray {t_ray:.1f} s (cluster start {out['ray_start_s'] or 0:.1f} s of it): "
          f"ratio {out['ratio']:.3f}")
    return out


def scale(args) -> dict:
    ev = json.loads((RESULTS / "ray_evaluate.json").read_text())
    rx = json.loads((RESULTS / "ray_relax.json").read_text())
    stages, n, cores = ev["pool_stages_s"], ev["n_samples"], ev["machine"]["cpus"]
    fanned_cpu = sum(stages.get(k, 0) for k in FANNED_OUT) * cores / n  # CPU seconds per sample (all cores were busy)
    driver = sum(v for k, v in stages.items() if k not in FANNED_OUT) / n
    workers = args.nodes * args.cores
    evaluate_s = args.candidates * (fanned_cpu / workers + driver)
    relax_s = args.candidates * rx["cpu_s_per_relaxation"] / workers
    out = {"candidates": args.candidates, "nodes": args.nodes, "cores_per_node": args.cores,
           "evaluate_cpu_s_per_sample_fanned_out": fanned_cpu, "evaluate_driver_s_per_sample": driver,
           "evaluate_hours": evaluate_s / 3600, "relax_cpu_s_per_crystal": rx["cpu_s_per_relaxation"],
           "relax_max_steps": rx["max_steps"], "relax_hours": relax_s / 3600,
           "assumes": "per-task costs of the 2-core runs; perfect spread over nodes (Ray's per-task overhead measured in the ratio); "
                      "uniqueness and novelty are per formula bucket, so a cluster spreads them as far as formulas allow"}
    print(f"{args.candidates:,} candidates on {args.nodes} nodes x {args.cores} cores: evaluate (no stability) "
          f"{out['evaluate_hours']:.1f} h ({fanned_cpu:.3f} CPU s/sample fanned out, {driver * 1e3:.2f} ms/sample on the driver); "
          f"relax ({rx['max_steps']} steps at most) {out['relax_hours']:.1f} h")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="case", required=True)
    e = sub.add_parser("evaluate")
    e.add_argument("--n-samples", type=int, default=10000)
    e.add_argument("--n-reference", type=int, default=9047)
    e.add_argument("--num-proc", type=int, default=2)
    r = sub.add_parser("relax")
    r.add_argument("--n", type=int, default=200)
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--workers", type=int, default=2)
    s = sub.add_parser("scale")
    s.add_argument("--candidates", type=int, default=1_000_000)
    s.add_argument("--nodes", type=int, default=8)
    s.add_argument("--cores", type=int, default=32)
    args = p.parse_args()
    out = scale(args) if args.case == "scale" else compare(args)
    out["command"] = " ".join(sys.argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ray_{args.case}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
