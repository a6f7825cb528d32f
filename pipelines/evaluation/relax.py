"""`xtallm relax`: MLFF relaxations in parallel worker processes, written as they finish, resumable.

Relaxing is the slow part of the stability metrics, and one relaxation keeps neither a CPU core
nor a GPU busy: N workers (each with its own copy of the potential, on the GPU when there is
one) run N relaxations at once. `xtallm relax` writes one JSON row per sample (energy and the
relaxed CIF); `xtallm evaluate --relaxed` reads those rows instead of relaxing again, so the
relaxations can run on a GPU machine and the scoring anywhere. `xtallm hull build --workers`
uses the same pool.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pymatgen.core import Structure
from tqdm.auto import tqdm

from xtallm.configs.recipe import option

from ..parallel import RAY_HELP, check_address
from . import stability as S

_CALCULATOR: tuple[tuple[str, str | None], Any] | None = None  # ((mlff, device), calculator): one per worker process
_BATCH_MODEL: tuple[str, Any] | None = None  # (device, (SevenNet batch model, cutoff)): one per GPU worker


def _calculator(mlff: str, device: str | None):
    """The worker's potential, loaded on its first relaxation (a pool's worker, a Ray worker, or this process; workers run
    one thread each: parallel.one_thread, or Ray's OMP_NUM_THREADS=1)."""
    global _CALCULATOR
    if _CALCULATOR is None or _CALCULATOR[0] != (mlff, device):
        _CALCULATOR = ((mlff, device), S.load_calculator(mlff, device))
    return _CALCULATOR[1]


def relax_task(task: tuple[Any, Structure, int, str, str | None, int, float]) -> tuple[Any, S.Relaxation]:
    """One relaxation, the unit of work of every backend: (key, structure, dim, mlff, device, steps, fmax)."""
    key, structure, dim, mlff, device, steps, fmax = task
    calculator = _calculator(mlff, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return key, S.relax(structure, calculator, steps=steps, fmax=fmax, dim=dim)


def batched_task(task: tuple[list[tuple[Any, Structure, int]], int, float, str | None, int]) -> list[tuple[Any, S.Relaxation]]:
    """Many relaxations in one batched SevenNet run (a Ray task holding one GPU); the model stays loaded in the worker."""
    global _BATCH_MODEL
    from .batch_relax import load_sevennet, relax_batched

    items, steps, fmax, device, batch_atoms = task
    device = device or S.default_device()
    if _BATCH_MODEL is None or _BATCH_MODEL[0] != device:
        _BATCH_MODEL = (device, load_sevennet(device))
    return list(relax_batched(items, steps, fmax, device, max_atoms_in_batch=batch_atoms, model=_BATCH_MODEL[1]))


ENGINES = ("auto", "batched", "ase")


def engine_for(engine: str, mlff: str, device: str | None = None) -> str:
    """`auto`: batched FIRE for SevenNet on a GPU (batch_relax.py), ASE's FIRE + FrechetCellFilter per crystal otherwise.

    On a CPU a model call over a batch of thousands of atoms gains nothing over one crystal at a time (120
    generated crystals, 2 cores: not done after 20 min with a 100-step cap; one by one runs ~6 steps/s)."""
    if engine not in ENGINES:
        raise ValueError(f"relaxation engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "batched" and mlff != "sevennet":
        raise ValueError(f"the batched engine runs SevenNet only; use --engine ase for {mlff}")
    if engine != "auto":
        return engine
    return "batched" if mlff == "sevennet" and (device or S.default_device()).startswith("cuda") else "ase"


def relax_many(items: Iterable[tuple[Any, Structure, int]], mlff: str, steps: int = S.MAX_STEPS,
               fmax: float = S.DEFAULT_FMAX, device: str | None = None, workers: int = 1,
               desc: str = "relaxing", engine: str = "auto", batch_atoms: int = S.BATCH_ATOMS,
               ray: str | None = None) -> Iterator[tuple[Any, S.Relaxation]]:
    """(key, Relaxation) for every (key, structure, dim), in the order they finish.

    A structure the potential cannot handle comes back with its `error`; it never stops the rest.
    `ray`: one task per crystal on the cluster's CPUs (the potential loaded once per Ray worker), or, with
    the batched engine, chunks of crystals as tasks holding one GPU each (written for GPU clusters, not yet run on one).
    """
    from ..parallel import Workers, imap

    items = list(items)
    if not items:
        return
    batched = engine_for(engine, mlff, device) == "batched"
    if batched and not ray:
        from .batch_relax import relax_batched

        with tqdm(total=len(items), desc=f"{desc} ({mlff}, batched)") as bar:
            for result in relax_batched(items, steps, fmax, device, max_atoms_in_batch=batch_atoms):
                yield result
                bar.update()
        return
    if batched:  # Ray: chunks of crystals, each a task on one GPU
        chunk = max(64, len(items) // 64)
        tasks = [(items[k : k + chunk], steps, fmax, device, batch_atoms) for k in range(0, len(items), chunk)]
        with tqdm(total=len(items), desc=f"{desc} ({mlff}, batched, Ray)") as bar:
            for results in imap(batched_task, tasks, Workers(ray=ray), ordered=False, num_gpus=1):
                yield from results
                bar.update(len(results))
        return
    where = "Ray" if ray else f"{workers} worker{'s' * (workers > 1)}"
    tasks = [(key, structure, dim, mlff, device, steps, fmax) for key, structure, dim in items]
    gpu = 1 if ray and (device or "").startswith("cuda") else 0
    # spawn: CUDA cannot be used in forked children; each worker loads the potential once
    yield from imap(relax_task, tasks, Workers(workers, ray), desc=f"{desc} ({mlff}, {where})", ordered=False, spawn=True,
                    num_gpus=gpu)


# ---------------------------------------------------------------------------- xtallm relax


@dataclass
class RelaxOptions:
    """Settings of `xtallm relax`, declared once."""

    mlff: str = option("sevennet", "potential (the hull's)", choices=tuple(S.MLFFS))
    steps: int = option(S.MAX_STEPS, "FIRE steps at most (FrechetCellFilter)")
    fmax: float = option(S.DEFAULT_FMAX, "force convergence, eV/Å")
    subsample: int | None = option(None, "relax a random N of the readable samples (--seed)")
    seed: int = option(0, "seed of the subsample")
    device: str | None = option(None, "cpu, cuda (default: a GPU when present)")
    workers: int = option(1, "parallel relaxations, each with its own potential (engine ase)")
    engine: str = option("auto", "auto: batched FIRE for SevenNet on a GPU (many crystals per model call), ASE per crystal otherwise",
                         choices=ENGINES)
    batch_atoms: int = option(S.BATCH_ATOMS, "atoms per model call (engine batched): more keeps a large GPU busier, "
                              "~7 MB of GPU memory per atom; a batch that runs out of memory is split, never lost")
    ray: str | None = option(None, RAY_HELP + "; one task per crystal (--workers is then the cluster's CPUs)", metavar="ADDRESS")

    def check(self) -> None:
        bad = [f"{name} must be {rule}, got {value}" for name, value, ok, rule in (
            ("--relax-steps", self.steps, self.steps >= 0, ">= 0"), ("--fmax", self.fmax, self.fmax > 0, "> 0"),
            ("--workers", self.workers, self.workers >= 1, ">= 1"),
            ("--subsample", self.subsample, self.subsample is None or self.subsample >= 1, ">= 1"),
            ("--batch-atoms", self.batch_atoms, self.batch_atoms >= 1, ">= 1")) if not ok]
        if bad:
            raise ValueError("; ".join(bad))
        engine_for(self.engine, self.mlff)
        check_address(self.ray)


@dataclass
class RelaxJob:
    samples: str  # sampler JSONL or a folder of CIFs
    out: str  # a folder: relaxed.jsonl in it, appended to
    options: RelaxOptions = field(default_factory=RelaxOptions)


RELAXED = "relaxed.jsonl"


def relaxed_file(path: str | Path) -> Path:
    """The relaxations `xtallm relax` wrote: its output folder's relaxed.jsonl, or a JSONL named directly."""
    path = Path(path)
    return path / RELAXED if path.is_dir() else path


def done_ids(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows already in a relax output (folder or JSONL), by sample id (a torn last line is ignored)."""
    from ..samples import read_jsonl

    return {str(r["id"]): r for r in read_jsonl(relaxed_file(path)) if "id" in r}


def run_relax(job: RelaxJob) -> dict[str, Any]:
    """Relax (or resume relaxing) the job's samples; returns counts for the CLI."""
    o = job.options
    import numpy as np

    from ..samples import JsonlWriter, ReadReport, load_samples, output_folder

    S.check_mlff(o.mlff)
    out = output_folder(job.out, RELAXED) / RELAXED
    previous = done_ids(out)
    if used := {r.get("mlff") for r in previous.values()} - {o.mlff}:
        raise S.MixedEnergyScalesError(f"{out} holds relaxations with {sorted(used)}; not resuming it with {o.mlff}")
    readable: list[tuple[str, Structure, int]] = []
    unreadable, report = 0, ReadReport()
    for sample in load_samples(job.samples, report):
        if not (sample.ok and sample.cif):
            continue
        structure = sample.structure()
        if structure is None:
            unreadable += 1
            continue
        readable.append((sample.id, structure, 2 if sample.is_layer else 3))
    if o.subsample is not None and o.subsample < len(readable):
        chosen = np.random.default_rng(o.seed).choice(len(readable), o.subsample, replace=False)
        readable = [readable[j] for j in sorted(chosen)]
    todo = [item for item in readable if item[0] not in previous]
    failed = 0
    with JsonlWriter(out) as writer:  # repairs a torn last line of a killed run before appending
        for sid, r in relax_many(todo, o.mlff, o.steps, o.fmax, o.device, o.workers, engine=o.engine,
                                 batch_atoms=o.batch_atoms, ray=o.ray):
            failed += r.error is not None
            writer.write([{"id": sid, "mlff": o.mlff, "max_steps": o.steps, **r.row(),
                           "engine": engine_for(o.engine, o.mlff, o.device), "relaxed_cif": r.structure.to(fmt="cif") if r.structure is not None else None}])
    return {"chosen": len(readable), "relaxed_now": len(todo), "failed_now": failed,
            "already_done": len(readable) - len(todo), "unreadable": unreadable, "skipped_input": report.summary()}


def cached_relaxation(row: dict[str, Any]) -> S.Relaxation:
    """A row of `xtallm relax` output back as a Relaxation (with its relaxed structure)."""
    structure = None
    if row.get("relaxed_cif"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(row["relaxed_cif"], fmt="cif")
    steps = int(row.get("steps") or 0)
    if reason := S.unphysical_energy(row.get("energy_per_atom")):  # rows written before the check existed
        return S.Relaxation(steps=steps, error=reason)
    return S.Relaxation(row.get("energy"), row.get("energy_per_atom"), structure, steps, bool(row.get("converged")), row.get("error"))
