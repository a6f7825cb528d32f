"""Refiner benchmark: does refinement bring LLM-like degraded crystals back to the truth, and how fast is it?

    python benchmarks/bench_refiner.py prepare --out .devdata/refiner/heldout.npz      # held-out splits -> arrays (+ records)
    python benchmarks/bench_refiner.py run --checkpoint C --heldout H --out R.npz    # degrade + refine per tau, speed (torch only: GPU box)
    python benchmarks/bench_refiner.py run ... --repair --skip-speed                 # the chain as `xtallm refine` runs it (repairs)
    python benchmarks/bench_refiner.py score --heldout H --refined R.npz             # StructureMatcher / RMSD / MLFF energy (CPU)

Degradation imitates LLM output: free coordinates rounded to 2 decimals (layer z: 0.01 Å),
then Gaussian noise of --noise Å, isotropic in Cartesian space within each Wyckoff site's free
subspace, and the free lattice k components perturbed by N(0, --lattice-noise) (~1% lengths).
The group and the Wyckoff assignment stay those of the true crystal, as with a parsed LLM sample.
Writes benchmarks/results/refiner_*.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


import numpy as np
import torch

from xtallm.refiner.checkpoint import load_refiner
from xtallm.refiner.crystal import collate, lattice_matrix, site_noise, wrap_sites
from xtallm.refiner.data import load_arrays_with_records
from xtallm.refiner.clash import repulsion_table, worst_deficit
from xtallm.refiner.diffusion import ChainOptions, refine
from xtallm.refiner.refine import RefineOptions
from xtallm.refiner.lattice import project_k

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def prepare(args) -> None:
    from xtallm.refiner.data import HeldOut, build_arrays, save_arrays

    data = Path(args.data)
    parts = [
        ([str(data / "mp20/train_partial.csv.xz"), str(data / "mp20/val.csv.xz")], REPO / "configs/data/mp20-heldout-v1.csv", args.bulk),
        ([str(data / "twod/2dmatpedia_5914.csv.xz"), str(data / "twod/mc2d_258.csv.xz")], REPO / "configs/data/twod-heldout-v1.csv", args.layers),
    ]
    crystals, ids, records = [], [], []
    for sources, split, limit in parts:
        c, i, r = build_arrays(sources, max_atoms=80, include=HeldOut([str(split)]))
        order = np.random.default_rng(0).permutation(len(c))[:limit]
        crystals += [c[j] for j in order]
        ids += [i[j] for j in order]
        records += [r[j] for j in order]
    save_arrays(args.out, crystals, ids, records)
    print(f"{len(crystals)} held-out crystals ({sum(c.dim == 3 for c in crystals)} bulk) -> {args.out}")


def degrade(batch, noise: float, lattice_noise: float, seed: int):
    """LLM-like errors on the true state: rounding, Cartesian noise, lattice perturbation."""
    g = torch.Generator(device=batch.k.device).manual_seed(seed)
    v = torch.round(batch.site_v * 100) / 100
    v = wrap_sites(batch, v + site_noise(batch, lattice_matrix(batch), g) * noise) * batch.site_free
    dk = torch.randn(batch.k.shape, generator=g, device=batch.k.device) * lattice_noise
    k = project_k(batch.k + dk * batch.k_free, batch.k_free, batch.k_fixed)
    return v, k


def run(args) -> None:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    refiner = load_refiner(args.checkpoint, device)
    crystals, ids, _ = load_arrays_with_records(args.heldout)
    if not args.skip_quality:
        refine_heldout(refiner, crystals, device, args)
    if args.skip_speed:
        return
    speed = measure_speed(refiner, crystals, device, args)
    result = {"device": _device_name(device), "steps": args.steps, "speed": speed, "n": len(crystals), "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.speed_out or RESULTS / f"refiner_speed_{device.type}.json")
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def refine_heldout(refiner, crystals, device, args) -> None:
    """Degrade every held-out crystal, refine it at each tau, save all states for `score`."""
    n_sites = max(len(c.site_v) for c in crystals)
    states = {"degraded_v": [], "degraded_k": []}
    for tau in args.taus:
        states[f"tau{tau}_v"], states[f"tau{tau}_k"] = [], []
    for start in range(0, len(crystals), args.batch_size):
        batch = collate(crystals[start : start + args.batch_size], refiner.vocab).to(device)
        v, k = degrade(batch, args.noise, args.lattice_noise, seed=start)
        states["degraded_v"].append(_pad(v, n_sites))
        states["degraded_k"].append(k.cpu().numpy())
        noisy = batch.replace(site_v=v, k=k)
        for tau in args.taus:
            g = torch.Generator(device=device).manual_seed(start)
            if args.repair:  # as `xtallm refine` runs: per-crystal start levels, repulsion in the chain, polish
                shipped = RefineOptions(start=args.start, tau=tau, steps=args.steps, corrector_steps=args.corrector_steps)
                shipped.check()
                options, table = shipped.chain(device), repulsion_table(device=device)
                deficit = worst_deficit(noisy, table)
                levels = shipped.start_levels(deficit)
                rv, rk = refine(refiner.model, noisy, refiner.schedule, levels, options, g, table, clashes=bool((deficit > 0).any()))
            else:
                options = ChainOptions(steps=args.steps, corrector_steps=args.corrector_steps, bf16=device.type == "cuda", ode=args.ode)
                rv, rk = refine(refiner.model, noisy, refiner.schedule, tau, options, g)
            states[f"tau{tau}_v"].append(_pad(rv, n_sites))
            states[f"tau{tau}_k"].append(rk.cpu().numpy())
    out = {key: np.concatenate(value) for key, value in states.items()}
    out["taus"] = np.array(args.taus)
    np.savez_compressed(args.out, **out)


def measure_speed(refiner, crystals, device, args) -> list[dict]:
    """Structures/s of refine_records' work: --speed-n crystals drawn from the held-out size
    distribution, sorted by size and batched as refine_records batches them (size_batches), a full
    `steps`-step chain (tau = 1), with and without the CUDA-graph step."""
    from xtallm.refiner.refine import size_batches

    rng = np.random.default_rng(0)
    chosen = sorted((crystals[i] for i in rng.integers(0, len(crystals), args.speed_n)), key=lambda c: c.n_atoms)
    rows = []
    for graph, compiled in [(g, c) for g in args.speed_graph for c in args.speed_compile]:
        for corrector in args.speed_correctors:
            for batch_size in args.speed_batch_sizes:
                plan = size_batches([c.n_atoms for c in chosen], batch_size)
                batches = [collate([chosen[i] for i in b], refiner.vocab).to(device) for b in plan]
                options = ChainOptions(steps=args.steps, corrector_steps=corrector, bf16=device.type == "cuda", cuda_graph=bool(graph), compile=bool(compiled))
                times = []
                for repeat in range(args.repeats + 1):  # the first pass warms up (kernels, allocator)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for batch in batches:
                        refine(refiner.model, batch, refiner.schedule, 1.0, options)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if repeat or args.repeats == 0:
                        times.append(time.perf_counter() - t0)
                rows.append({"n": len(chosen), "batch": batch_size, "batches": len(batches), "corrector_steps": corrector,
                             "cuda_graph": bool(graph) and device.type == "cuda", "compile": bool(compiled), "seconds": times,
                             "structures_per_s": len(chosen) / min(times), "forward_passes_per_structure": args.steps * (1 + corrector),
                             "mean_atoms": float(np.mean([c.n_atoms for c in chosen]))})
                print(rows[-1], flush=True)
    return rows


def cartesian_rms(batch, site_v) -> torch.Tensor:
    """Per crystal: rms over atoms of the Cartesian distance from the batch's own (true) crystal, mean shift removed
    (the origin is free), in Å: the array-space error of the sweep and the level table."""
    from xtallm.refiner.crystal import expand, minimum_image

    d = minimum_image(batch, expand(batch, site_v) - expand(batch, batch.site_v)) @ lattice_matrix(batch)
    m = batch.atom_mask[..., None].float()
    d = d - (d * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
    return torch.sqrt(((d**2).sum(-1) * m[..., 0]).sum(1) / m[..., 0].sum(1))


def sweep(args) -> None:
    """Sampler settings x tau on the held-out set, scored in array space (fast, no pymatgen):
    RMS Cartesian displacement to the truth after removing the mean shift (origin freedom), in Å."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    refiner = load_refiner(args.checkpoint, device)
    crystals, ids, _ = load_arrays_with_records(args.heldout)
    crystals = crystals[: args.limit]
    order = sorted(range(len(crystals)), key=lambda i: crystals[i].n_atoms)
    settings = {"sde+corrector": dict(corrector_steps=1), "sde": dict(corrector_steps=0), "ode": dict(corrector_steps=0, ode=True),
                # the input taken as already at level tau (no noise added first)
                "sde+corrector from input": dict(corrector_steps=1, noise_input=False),
                "ode from input": dict(corrector_steps=0, ode=True, noise_input=False),
                "one step from input": dict(corrector_steps=0, ode=True, noise_input=False, one_step=True)}  # Tweedie's estimate
    settings = {name: settings[name] for name in args.settings}
    rows = []
    for dim in (3, 2):
        chosen = [crystals[i] for i in order if crystals[i].dim == dim]
        batches = [collate(chosen[s : s + args.batch_size], refiner.vocab).to(device) for s in range(0, len(chosen), args.batch_size)]
        degraded = [degrade(b, args.noise, args.lattice_noise, seed=j) for j, b in enumerate(batches)]

        def error(states) -> tuple[float, float]:
            rms, dk = [], []
            for b, (v, k) in zip(batches, states):
                rms += cartesian_rms(b, v).tolist()
                dk += (k - b.k).abs().max(-1).values.tolist()
            return float(np.mean(rms)), float(np.mean(dk))

        rows.append({"dim": dim, "setting": "degraded", "tau": None, "rms": error(degraded)[0], "k_err": error(degraded)[1]})
        print(rows[-1])
        for name, extra in settings.items():
            for tau in args.taus:
                states = []
                for j, (b, (v, k)) in enumerate(zip(batches, degraded)):
                    g = torch.Generator(device=device).manual_seed(j)
                    extra = dict(extra)
                    steps = max(1, round(1 / tau)) if extra.pop("one_step", False) else args.steps  # round(tau * steps) = 1
                    options = ChainOptions(steps=steps, bf16=device.type == "cuda", **extra)
                    states.append(refine(refiner.model, b.replace(site_v=v, k=k), refiner.schedule, tau, options, g))
                rms, k_err = error(states)
                rows.append({"dim": dim, "setting": name, "tau": tau, "rms": rms, "k_err": k_err})
                print(rows[-1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"noise": args.noise, "lattice_noise": args.lattice_noise, "steps": args.steps, "rows": rows}, indent=1))


def levels(args) -> None:
    """Per crystal and level t of a grid, from the degraded input as it is (no noise added): the network's predicted
    displacement (rms over atoms, Å: sigma(t) x |eps_hat|) and the error of Tweedie's one-step estimate x - sigma eps_hat
    against the truth (array space, mean shift removed, Å); the same predicted size for the clean crystal noised to each
    t (what the network says at its own level: a calibration). Lets a start-level rule be judged offline."""
    from xtallm.refiner.crystal import push_forward
    from xtallm.refiner.diffusion import predict

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    refiner = load_refiner(args.checkpoint, device)
    crystals, ids, _ = load_arrays_with_records(args.heldout)
    crystals = crystals[: args.limit]
    grid = torch.tensor(args.grid, dtype=torch.float32)
    out = {k: [] for k in ("dim", "n_atoms", "input_rms", "input_k", "pred", "pred_k", "tweedie_rms", "tweedie_k", "calib", "calib_k")}

    def size(b, lattice, dv):  # rms over atoms of the predicted Cartesian displacement per unit sigma
        cart = push_forward(b, lattice, dv)
        m = b.atom_mask.float()
        return torch.sqrt(((cart**2).sum(-1) * m).sum(1) / m.sum(1))

    def k_size(b, k_hat):
        return torch.sqrt((k_hat**2).sum(-1) / b.k_free.sum(-1).clamp(min=1))

    with torch.no_grad():
        for start in range(0, len(crystals), args.batch_size):
            b = collate(crystals[start : start + args.batch_size], refiner.vocab).to(device)
            v, k = degrade(b, args.noise, args.lattice_noise, seed=start)
            out["dim"].append(b.periodic.sum(-1).cpu()); out["n_atoms"].append(b.atom_mask.sum(-1).cpu())
            out["input_rms"].append(cartesian_rms(b, v).cpu()); out["input_k"].append((k - b.k).abs().max(-1).values.cpu())
            rows = {key: [] for key in ("pred", "pred_k", "tweedie_rms", "tweedie_k", "calib", "calib_k")}
            g = torch.Generator(device=device).manual_seed(start)
            for t in grid.tolist():
                tt = torch.full((b.size,), t, device=device)
                sigma, lsigma = refiner.schedule.sigma(tt), refiner.schedule.lattice_sigma(tt)
                noisy = b.replace(site_v=v, k=k)
                dv, k_hat, lattice = predict(refiner.model, noisy, v, k, tt)
                rows["pred"].append((sigma * size(noisy, lattice, dv)).cpu()); rows["pred_k"].append((lsigma * k_size(b, k_hat)).cpu())
                v0 = wrap_sites(b, v - sigma[:, None, None] * dv) * b.site_free
                k0 = project_k(k - lsigma[:, None] * k_hat, b.k_free, b.k_fixed)
                rows["tweedie_rms"].append(cartesian_rms(b, v0).cpu()); rows["tweedie_k"].append((k0 - b.k).abs().max(-1).values.cpu())
                vc = wrap_sites(b, b.site_v + site_noise(b, lattice_matrix(b), g) * sigma[:, None, None])
                kc = project_k(b.k + lsigma[:, None] * torch.randn(b.k.shape, generator=g, device=device) * b.k_free, b.k_free, b.k_fixed)
                dv, k_hat, lattice = predict(refiner.model, b.replace(site_v=vc, k=kc), vc, kc, tt)
                rows["calib"].append((sigma * size(b, lattice, dv)).cpu()); rows["calib_k"].append((lsigma * k_size(b, k_hat)).cpu())
            for key, value in rows.items():
                out[key].append(torch.stack(value, dim=1))
    arrays = {key: torch.cat(value).numpy() for key, value in out.items()}
    np.savez_compressed(args.out, grid=grid.numpy(), sigma=refiner.schedule.sigma(grid).numpy(),
                        lattice_sigma=refiner.schedule.lattice_sigma(grid).numpy(), **arrays)
    for dim in (3, 2):
        sel = arrays["dim"] == dim
        print(f"dim {dim}: input rms {arrays['input_rms'][sel].mean():.4f} Å; Tweedie rms by t:",
              " ".join(f"{t:.2f}:{e:.4f}" for t, e in zip(grid.tolist(), arrays["tweedie_rms"][sel].mean(0))), flush=True)


def levels_report(args) -> None:
    """From a `levels` table: Tweedie's error at the best single level per kind, at each crystal's best level (an oracle),
    and at the level a per-crystal rule picks (the lowest t where the crystal's |eps_hat| falls to the calibration's
    median for its kind): is a per-crystal start level worth estimating?"""
    d = np.load(args.table)
    grid, sigma = d["grid"], d["sigma"]
    out = {"table": args.table, "date": time.strftime("%Y-%m-%d"), "kinds": {}}
    for name, dim in (("bulk", 3), ("monolayers", 2)):
        m = d["dim"] == dim
        size, calib, error = d["pred"][m] / sigma, np.median(d["calib"][m] / sigma, axis=0), d["tweedie_rms"][m]
        best = int(error.mean(0).argmin())
        crossing = (size <= calib).argmax(1)
        picked = np.where((size <= calib).any(1), crossing, len(grid) - 1)
        out["kinds"][name] = {"n": int(m.sum()), "input_rms": float(d["input_rms"][m].mean()),
                              "best_single_level": float(grid[best]), "rms_at_best_single_level": float(error[:, best].mean()),
                              "rms_per_crystal_oracle": float(error.min(1).mean()),
                              "rms_per_crystal_rule": float(error[np.arange(len(picked)), picked].mean()),
                              "rule_levels_10_50_90": [float(x) for x in np.percentile(grid[picked], [10, 50, 90])],
                              "rms_by_level": dict(zip([f"{t:.2f}" for t in grid], error.mean(0).round(5).tolist()))}
        print(name, json.dumps({k: v for k, v in out["kinds"][name].items() if k != "rms_by_level"}))
    Path(args.out).write_text(json.dumps(out, indent=1))


def score(args) -> None:
    import warnings

    from pymatgen.analysis.structure_matcher import StructureMatcher

    from xtallm.refiner.crystal import arrays_to_record
    from xtallm.tokenization.record import CrystalRecord, detect_group

    warnings.simplefilter("ignore")
    crystals, ids, records = load_arrays_with_records(args.heldout)
    states = np.load(args.refined)
    taus = [float(t) for t in states["taus"]]
    matchers = {
        "pinned": StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3),
        "strict": StructureMatcher(stol=0.05, angle_tol=1, ltol=0.02),
    }
    variants = ["degraded"] + [f"tau{t}" for t in taus]
    found: dict[str, dict[str, list]] = {v: {"match_pinned": [], "match_strict": [], "rms": [], "group_kept": [], "structures": []} for v in variants}
    if args.limit:
        records = records[: args.limit]
    for i, record_json in enumerate(records):
        truth_record = CrystalRecord.from_dict(json.loads(record_json))
        truth = truth_record.to_structure()
        n_sites = len(truth_record.sites)
        for v in variants:
            record = arrays_to_record(truth_record, states[f"{v}_k"][i].astype(np.float64), states[f"{v}_v"][i, :n_sites].astype(np.float64))
            try:
                s = record.to_structure(strict=False)
            except Exception:
                s = None
            f = found[v]
            f["structures"].append(s)
            if s is None:
                f["match_pinned"].append(False), f["match_strict"].append(False), f["rms"].append(np.nan), f["group_kept"].append(False)
                continue
            rms = matchers["pinned"].get_rms_dist(truth, s)
            f["match_pinned"].append(rms is not None)
            f["rms"].append(rms[0] if rms is not None else np.nan)
            f["match_strict"].append(bool(matchers["strict"].fit(truth, s)))
            f["group_kept"].append(detect_group(s, truth_record.dim, 0.01) == truth_record.group)
    dims = np.array([c.dim for c in crystals])[: len(records)]
    table = {}
    for v in variants:
        f = found[v]
        table[v] = {}
        for name, mask in (("bulk", dims == 3), ("2d", dims == 2), ("all", dims > 0)):
            rms = np.array(f["rms"])[mask]
            table[v][name] = {
                "n": int(mask.sum()),
                "match_rate_pinned": float(np.mean(np.array(f["match_pinned"])[mask])),
                "match_rate_strict": float(np.mean(np.array(f["match_strict"])[mask])),
                "mean_rms": float(np.nanmean(rms)) if np.isfinite(rms).any() else None,
                "median_rms": float(np.nanmedian(rms)) if np.isfinite(rms).any() else None,
                "group_kept": float(np.mean(np.array(f["group_kept"])[mask])),
            }
    if args.mlff:
        table["mlff"] = mlff_energies(args.mlff, found, records, dims, args.mlff_n)
    result = {"heldout": str(args.heldout), "refined": str(args.refined), "taus": taus, "table": table, "date": time.strftime("%Y-%m-%d"), "machine": platform.machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out or RESULTS / "refiner_quality.json").write_text(json.dumps(result, indent=1))
    for v in variants:
        row = table[v]
        print(f"{v:10s} " + "  ".join(
            f"{d}: match {row[d]['match_rate_pinned']:.3f}/{row[d]['match_rate_strict']:.3f} rms {row[d]['mean_rms'] or float('nan'):.4f} group {row[d]['group_kept']:.3f}"
            for d in ("bulk", "2d")))
    if "mlff" in table:
        print(json.dumps(table["mlff"], indent=1))


def mlff_energies(name: str, found, records, dims, limit: int) -> dict:
    """Mean MLFF energy per atom (single points) of truth, degraded and refined bulk crystals."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from xtallm.tokenization.record import CrystalRecord

    calc = _calculator(name)
    bulk = [i for i in range(len(records)) if dims[i] == 3][:limit]
    energies: dict[str, list[float]] = {"truth": []}
    for v in found:
        energies[v] = []
    for i in bulk:
        truth = CrystalRecord.from_dict(json.loads(records[i])).to_structure()
        structures = {"truth": truth, **{v: found[v]["structures"][i] for v in found}}
        if any(s is None for s in structures.values()):
            continue
        for v, s in structures.items():
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = calc
            energies[v].append(float(atoms.get_potential_energy()) / len(atoms))
    return {"potential": name, "n": len(energies["truth"]), **{f"mean_energy_per_atom_{v}": float(np.mean(e)) for v, e in energies.items() if e},
            **{f"mean_excess_vs_truth_{v}": float(np.mean(np.array(e) - np.array(energies["truth"]))) for v, e in energies.items() if e and v != "truth"}}


def _calculator(name: str):
    if name == "sevennet":
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator("7net-0", device="cpu")
    if name == "chgnet":
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(use_device="cpu")
    raise ValueError(f"unknown MLFF {name!r}: sevennet or chgnet")


def _pad(v: torch.Tensor, n_sites: int) -> np.ndarray:
    out = np.zeros((v.shape[0], n_sites, 3), np.float32)
    out[:, : v.shape[1]] = v.float().cpu().numpy()
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--bulk", type=int, default=500)
    p.add_argument("--layers", type=int, default=300)
    p.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--heldout", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--speed-out", default=None)
    r.add_argument("--taus", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    r.add_argument("--steps", type=int, default=200)
    r.add_argument("--corrector-steps", type=int, default=1)
    r.add_argument("--ode", action="store_true", help="probability-flow sampler")
    r.add_argument("--repair", action="store_true", help="the refiner as `xtallm refine` runs it (RefineOptions defaults: "
                   "start levels from the distance deficit up to tau_max, repulsion, polish) instead of the bare chain")
    r.add_argument("--start", default="input", choices=["noise", "input"], help="--repair: RefineOptions.start (noise: the earlier default)")
    r.add_argument("--noise", type=float, default=0.1, help="Å")
    r.add_argument("--lattice-noise", type=float, default=0.01, help="k units (~relative length change)")
    r.add_argument("--batch-size", type=int, default=512)
    r.add_argument("--speed-batch-sizes", type=int, nargs="+", default=[256, 1024])
    r.add_argument("--speed-n", type=int, default=4096, help="crystals per speed measurement")
    r.add_argument("--speed-correctors", type=int, nargs="+", default=[1, 0])
    r.add_argument("--speed-graph", type=int, nargs="+", default=[1, 0], help="1: CUDA-graph step, 0: eager")
    r.add_argument("--speed-compile", type=int, nargs="+", default=[0], help="1: torch.compile the network")
    r.add_argument("--repeats", type=int, default=2)
    r.add_argument("--skip-quality", action="store_true")
    r.add_argument("--skip-speed", action="store_true")
    r.add_argument("--device", default=None)
    w = sub.add_parser("sweep")
    w.add_argument("--checkpoint", required=True)
    w.add_argument("--heldout", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--taus", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6])
    w.add_argument("--steps", type=int, default=200)
    w.add_argument("--noise", type=float, default=0.1)
    w.add_argument("--lattice-noise", type=float, default=0.01)
    w.add_argument("--batch-size", type=int, default=512)
    w.add_argument("--settings", nargs="+", default=["sde+corrector", "sde", "ode"],
                   help="sde+corrector, sde, ode, 'sde+corrector from input', 'ode from input', 'one step from input'")
    w.add_argument("--device", default=None)
    w.add_argument("--limit", type=int, default=None, help="the first N crystals only")
    lv = sub.add_parser("levels")
    lv.add_argument("--checkpoint", required=True)
    lv.add_argument("--heldout", required=True)
    lv.add_argument("--out", required=True)
    lv.add_argument("--grid", type=float, nargs="+", default=[round(0.05 * i, 2) for i in range(1, 17)])
    lv.add_argument("--noise", type=float, default=0.1)
    lv.add_argument("--lattice-noise", type=float, default=0.01)
    lv.add_argument("--batch-size", type=int, default=256)
    lv.add_argument("--device", default=None)
    lv.add_argument("--limit", type=int, default=None, help="the first N crystals only")
    lr = sub.add_parser("levels-report")
    lr.add_argument("--table", required=True, help="a `levels` output (.npz)")
    lr.add_argument("--out", required=True)
    s = sub.add_parser("score")
    s.add_argument("--heldout", required=True)
    s.add_argument("--refined", required=True)
    s.add_argument("--mlff", default=None, choices=["sevennet", "chgnet"])
    s.add_argument("--mlff-n", type=int, default=100, help="bulk crystals with MLFF single points")
    s.add_argument("--limit", type=int, default=None, help="score the first N crystals only")
    s.add_argument("--out", default=None)
    args = parser.parse_args()
    {"prepare": prepare, "run": run, "sweep": sweep, "levels": levels, "levels-report": levels_report, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
