"""Sampling on a GPU cluster: data-parallel engine replicas as Ray actors, one per `tensor_parallel_size` GPUs.

`xtallm sample --ray ADDRESS` (and `xtallm generate` with `ray.address` on a cluster that has GPUs) starts one
replica of the sampling backend per GPU group and splits every batch of requests between them, in contiguous
shards. A request carries its own seed, so a sample is the same whichever replica draws it, and a resumed run
regenerates exactly the missing ones; the driver alone writes. An actor whose node dies is restarted and its
shard drawn again (same seeds, same samples).

vLLM's CPU backend does not run under Ray, so on CPUs sampling stays in the local process: asked for a cluster
without GPUs, this refuses in one line. Status 2026-12-05: written and tested with a stand-in engine on a
CPU cluster; not yet run with vLLM on GPUs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from xtallm.llm.sampling import SAMPLERS, Output, Request, SamplingOptions

from .parallel import cluster_gpus, connect

ACTOR_RESTARTS = 3


class Replica:
    """One engine inside a Ray actor (built there: the GPUs are the actor's)."""

    def __init__(self, factory: Callable[..., Any], *args: Any) -> None:
        self.engine = factory(*args)

    def generate(self, requests: list[Request], options: SamplingOptions | None, adapter_index: int | None) -> list[Output]:
        return self.engine.generate(requests, options, adapter_index=adapter_index)

    def close(self) -> None:
        if hasattr(self.engine, "close"):
            self.engine.close()


class RayReplicas:
    """A `Sampler` whose `generate` spreads the requests over engine replicas on a Ray cluster."""

    def __init__(self, address: str, factory: Callable[..., Any], args: tuple, replicas: int, gpus_per_replica: float) -> None:
        import ray

        connect(address)
        actor = ray.remote(num_cpus=1, num_gpus=gpus_per_replica, max_restarts=ACTOR_RESTARTS,
                           max_task_retries=ACTOR_RESTARTS)(Replica)
        self.actors = [actor.remote(factory, *args) for _ in range(replicas)]

    @classmethod
    def start(cls, address: str, backend: str, model: str, adapters: list[str] | None, options: SamplingOptions,
              max_model_len: int, seed: int = 0, batch_size: int = 256) -> "RayReplicas":
        """One replica of `backend` per `tensor_parallel_size` GPUs (or `data_parallel_size` replicas when set)."""
        gpus = cluster_gpus(address)
        tp = options.tensor_parallel_size
        if gpus < tp:
            raise RuntimeError(f"--ray {address}: sampling runs engine replicas on GPUs and this cluster has {gpus}; vLLM's CPU "
                               "backend does not run under Ray, so sample on this machine (without --ray)")
        replicas = options.data_parallel_size if options.data_parallel_size > 1 else gpus // tp
        one = replace(options, data_parallel_size=1)  # each replica is one engine; Ray is the data parallelism
        return cls(address, SAMPLERS[backend].start, (model, adapters, one, max_model_len, seed, batch_size), replicas, tp)

    def generate(self, requests: list[Request], options: SamplingOptions | None = None, adapter_index: int | None = None) -> list[Output]:
        import ray

        size = -(-len(requests) // len(self.actors))
        shards = [requests[k : k + size] for k in range(0, len(requests), size)]
        refs = [actor.generate.remote(shard, options, adapter_index) for actor, shard in zip(self.actors, shards)]
        return [output for part in ray.get(refs) for output in part]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.get(actor.close.remote())
            finally:
                ray.kill(actor)
        self.actors = []
