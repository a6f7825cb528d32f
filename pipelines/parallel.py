"""One way to fan work out, for every command: in this process, a local process pool, or a Ray cluster.

A command that takes `--ray ADDRESS` hands its units of work (evaluation's per-sample parsing,
fingerprints and group detection, its uniqueness and novelty per formula bucket; refine chunks;
relaxations) to `imap`, which runs them where the `Workers` say and gives the results back to
the driver, which alone writes. Without `--ray` nothing changes: a process pool of `num_proc`.

- `--ray auto`: the Ray cluster running on this machine (`ray start --head`), else a private one
  started here on 127.0.0.1 and stopped when the command ends.
- `--ray HOST:PORT` (a head started with `ray start --head`), or `ray://HOST:10001` (Ray client): that
  cluster. Its nodes need xtallm installed (the same version): tasks name xtallm's functions.

Faults: a unit of work is a Ray task with retries, so one whose worker or node dies runs again on
another, and its result reaches the driver once (the driver keeps nothing of a failed attempt).
Results come back in input order (`ordered=True`) or as they finish; either way every item once.
vLLM's CPU backend does not run under Ray, so CPU sampling stays local (llm/ says how GPUs serve).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import pickle
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

RAY_HELP = ("run the work on a Ray cluster: ADDRESS (HOST:PORT of `ray start --head`, or ray://HOST:10001) or auto "
            "(this machine's cluster, else a local one on 127.0.0.1); needs pip install -e \".[ray]\"")
TASK_RETRIES = 5  # a task whose worker or node dies runs again elsewhere, up to this many times


class RayUnavailable(RuntimeError):
    """--ray was asked for, but Ray is not installed."""


@dataclass(frozen=True)
class Workers:
    """Where a command's units of work run: `num_proc` local processes, or the Ray cluster at `ray`."""

    num_proc: int = 1
    ray: str | None = None

    @property
    def parallel(self) -> int:
        """How many units run at once: the cluster's CPUs under Ray, else the local processes."""
        return max(int(cluster_resources(self.ray).get("CPU", 1)), 1) if self.ray else max(self.num_proc, 1)


def cluster_resources(address: str) -> dict[str, float]:
    """What the cluster at `address` holds (CPU, GPU, ...), joining it first."""
    import ray

    connect(address)
    return ray.cluster_resources()


def cluster_gpus(address: str) -> int:
    return int(cluster_resources(address).get("GPU", 0))


def check_address(address: str | None) -> None:
    """A bad --ray value is refused before any work: `auto`, HOST:PORT or ray://HOST:PORT."""
    if address is None:
        return
    if address != "auto" and ":" not in address:
        raise ValueError(f"--ray {address!r}: expected auto, HOST:PORT (a head started with `ray start --head`) or ray://HOST:PORT")
    if importlib.util.find_spec("ray") is None:
        raise RayUnavailable('--ray needs Ray: pip install -e ".[ray]"')


def _running_cluster() -> bool:
    """Whether `ray start` left a cluster on this machine (Ray's own address file), or RAY_ADDRESS names one."""
    return bool(os.environ.get("RAY_ADDRESS")) or Path("/tmp/ray/ray_current_cluster").is_file()


def connect(address: str) -> None:
    """Join the cluster at `address` once per process (a private local one for `auto` when none runs)."""
    check_address(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine unasked
    local = address == "auto" and not _running_cluster()
    if local and "ray" not in sys.modules:
        # read when Ray is imported: a private cluster advertises 127.0.0.1, not the machine's network address
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    verbose = os.environ.get("XTALLM_VERBOSE") == "1"  # `--verbose` sets it: Ray's own logs and the workers' output
    quiet = {"logging_level": logging.INFO if verbose else logging.WARNING, "log_to_driver": verbose}
    if local:
        ray.init(include_dashboard=False, **quiet)
    else:
        ray.init(address=address, **quiet)


def imap(fn: Callable[[Any], Any], items: Iterable[Any], workers: Workers, *, desc: str | None = None,
         ordered: bool = True, chunksize: int = 1, total: int | None = None, spawn: bool = False,
         num_gpus: float = 0) -> Iterator[Any]:
    """`fn(item)` for every item: in input order (`ordered`) or as each finishes, every item exactly once.

    `fn` must be a module-level function (it travels by name). `chunksize` items make one unit of
    work; at most ~2 units per worker are in flight, so a long input is never all sent at once.
    `spawn` starts local workers fresh (CUDA cannot run in forked children); `num_gpus` is what one
    Ray task asks for (a GPU relaxation)."""
    items = items if isinstance(items, Sequence) else list(items)
    total = len(items) if total is None else total
    bar = tqdm(total=total, desc=desc, leave=False, disable=desc is None)
    try:
        if workers.ray:
            results = _imap_ray(fn, items, workers, ordered, chunksize, num_gpus)
        elif workers.num_proc <= 1 or len(items) < 2 * chunksize:
            results = ([fn(x)] for x in items)
        else:
            results = _imap_pool(fn, items, workers.num_proc, ordered, chunksize, spawn)
        for chunk in results:
            yield from chunk
            bar.update(len(chunk))
    finally:
        bar.close()


def map_ordered(fn: Callable[[Any], Any], items: Sequence[Any], workers: Workers, desc: str | None = None,
                chunksize: int = 8, keys: Sequence[Hashable] | None = None) -> list[Any]:
    """`fn` over `items`, results in input order (the evaluation's per-sample work). `keys`: items with equal keys
    (e.g. the same CIF text) have equal results, so each key is computed once and its result given to every item."""
    if keys is None:
        return list(imap(fn, items, workers, desc=desc, chunksize=chunksize))
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    results = dict(zip(first, imap(fn, [items[i] for i in first.values()], workers, desc=desc, chunksize=chunksize)))
    return [results[key] for key in keys]


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def run_chunk(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    """One unit of work: `fn` over a few items, in the worker."""
    return [fn(x) for x in chunk]


def run_pickled_chunk(fn: Callable[[Any], Any], payload: bytes) -> bytes:
    """A Ray task: items and results travel as plain pickles, because Ray hands numpy arrays over as read-only
    views, and spglib (through pymatgen's symmetry analysis) refuses those ("buffer source array is read-only")."""
    return pickle.dumps(run_chunk(fn, pickle.loads(payload)))


def one_thread() -> None:
    """A worker's start: one thread per process (N workers, not N x cores threads), as Ray gives its 1-CPU tasks.
    Measured: SevenNet relaxations, 2 workers on 2 cores, 3.5x faster than with each worker's default threads."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    if "torch" in sys.modules:  # forked from a process that had loaded it
        sys.modules["torch"].set_num_threads(1)


def _imap_pool(fn, items, num_proc: int, ordered: bool, chunksize: int, spawn: bool) -> Iterator[list[Any]]:
    context = get_context("spawn") if spawn else None
    if not spawn:
        # Forked workers inherit this process's heap (an evaluation holds ~10k structures); frozen, the children's
        # garbage collector leaves it alone instead of walking it again and again.
        gc.freeze()
    try:
        with ProcessPoolExecutor(num_proc, mp_context=context, initializer=one_thread) as pool:
            yield from _bounded(lambda chunk: pool.submit(run_chunk, fn, chunk), _chunks(items, chunksize), 2 * num_proc, ordered,
                                lambda fut: fut.result(), lambda running: wait(running, return_when=FIRST_COMPLETED)[0])
    finally:
        if not spawn:
            gc.unfreeze()


def _imap_ray(fn, items, workers: Workers, ordered: bool, chunksize: int, num_gpus: float) -> Iterator[list[Any]]:
    import ray

    connect(workers.ray)
    task = _ray_task(num_gpus)
    in_flight = 2 * workers.parallel
    yield from _bounded(lambda chunk: task.remote(fn, pickle.dumps(chunk)), _chunks(items, chunksize), in_flight, ordered,
                        lambda ref: pickle.loads(ray.get(ref)), lambda running: set(ray.wait(list(running), num_returns=1)[0]))


_RAY_TASKS: dict[float, Any] = {}


def _ray_task(num_gpus: float):
    import ray

    if num_gpus not in _RAY_TASKS:
        _RAY_TASKS[num_gpus] = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=TASK_RETRIES)(run_pickled_chunk)
    return _RAY_TASKS[num_gpus]


def _bounded(submit, chunks: Iterator[list[Any]], in_flight: int, ordered: bool, result, first_done) -> Iterator[list[Any]]:
    """Keep `in_flight` units running (a finished one is replaced at once, so a slow unit at the head never idles the
    others); yield the results in submission order, or as they finish."""
    chunks = iter(chunks)
    running: set = set()
    waiting: deque = deque()  # submitted, not yet yielded, in submission order

    def fill() -> None:
        while len(running) < in_flight and (chunk := next(chunks, None)) is not None:
            handle = submit(chunk)
            running.add(handle)
            waiting.append(handle)

    fill()
    while waiting:
        if ordered and waiting[0] not in running:  # the head is done
            yield result(waiting.popleft())
            continue
        done = set(first_done(running))
        running -= done
        if not ordered:
            for handle in done:
                waiting.remove(handle)
                yield result(handle)
        fill()


def as_workers(workers: "Workers | int | None") -> Workers:
    """Callers that predate `Workers` pass a process count."""
    if isinstance(workers, Workers):
        return workers
    return Workers(num_proc=max(int(workers or 1), 1))
