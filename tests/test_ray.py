"""`--ray`: the same answers as the local run, on a 2-node cluster kept on 127.0.0.1, and no row lost or
written twice when a worker node dies mid-run.

The cluster is `ray.cluster_utils.Cluster` (1 CPU per node), started and shut down here; conftest.py
sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray can be imported, so every node listens on
127.0.0.1 (../shared/DESIGN.md, "Ray"). Never `ray stop` here: it would end every Ray process.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from xtallm.pipelines.evaluation import evaluate
from xtallm.pipelines.evaluation.relax import RelaxJob, RelaxOptions, run_relax
from xtallm.pipelines.parallel import Workers, check_address, map_ordered
from xtallm.pipelines.refine import RefineJob, RefineSettings, run_refine
from xtallm.pipelines.samples import read_jsonl

from .conftest import read_shared
from .refiner.test_refine import _samples

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
from ray.cluster_utils import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    assert ray._private.ray_constants.ENABLE_RAY_CLUSTER is False  # loopback only (set in conftest.py)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    assert c.address.startswith("127.0.0.1:")
    yield c
    ray.shutdown()
    c.shutdown()


def _square(x: int) -> int:
    time.sleep(0.01)
    return x * x


def test_fan_out_keeps_input_order_on_both_nodes(cluster):
    workers = Workers(ray=cluster.address)
    assert workers.parallel == 2
    assert map_ordered(_square, list(range(50)), workers, chunksize=3) == [x * x for x in range(50)]
    assert map_ordered(_square, list(range(50)), Workers(num_proc=2), chunksize=3) == [x * x for x in range(50)]
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}


def test_bad_address_is_refused_in_one_line():
    with pytest.raises(ValueError, match="--ray 'cluster'"):
        check_address("cluster")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-in")
    df = read_shared("mp20/val.csv.xz", n=60, seed=5)
    df.head(40).to_csv(folder / "ref.csv", index=False)
    cifs = list(df.cif) + list(df.cif[:5])  # duplicates, so uniqueness has work per formula bucket
    rows = [{"id": f"s{i}", "ok": True, "cif": c, "group": None} for i, c in enumerate(cifs)]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_evaluate_with_ray_equals_local(cluster, samples):
    args = (samples / "samples.jsonl", samples / "ref.csv", [samples / "ref.csv"])
    local = evaluate(*args, num_proc=2)
    remote = evaluate(*args, num_proc=2, ray=cluster.address)
    for key in ("n_samples", "parse_rate", "validity", "uniqueness", "novelty", "cov_recall", "cov_precision",
                "sg_jsd", "wyckoff_jsd", "wdist_density", "p1_rate"):
        assert remote[key] == pytest.approx(local[key], abs=1e-9), key
    assert 0 < local["uniqueness"] < 1 and 0 < local["novelty"] < 1 and local["cov_recall"] > 0  # every part had work


def _refine_input(folder):
    df = read_shared("mp20/val.csv.xz", n=12, seed=8)
    path = folder / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _samples(list(df.cif), 3, "mp20")))
    return path


def _lattices(path) -> dict[str, np.ndarray]:
    from pymatgen.core import Structure

    return {r["id"]: np.array([*Structure.from_str(r["cif"], fmt="cif").lattice.parameters]) for r in read_jsonl(path)}


def test_refine_with_ray_equals_local_and_survives_a_dead_node(cluster, tmp_path):
    source = _refine_input(tmp_path)
    settings = dict(tau=0.3, steps=40, batch_size=1, seed=3, device="cpu", write_cifs=False)  # 6 chunks of 2 rows
    run_refine(RefineJob(str(source), str(tmp_path / "local"), RefineSettings(**settings)))
    # a third node joins, and dies once rows are coming back: its chunks run again elsewhere
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "ray" / "samples.jsonl"
    done, rows_at_kill = threading.Event(), []

    def kill_when_rows_arrive():
        while not done.is_set():
            if out.exists() and (n := out.read_text().count("\n")) >= 2:
                cluster.remove_node(doomed, allow_graceful=False)
                rows_at_kill.append(n)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_rows_arrive)
    killer.start()
    try:
        run_refine(RefineJob(str(source), str(tmp_path / "ray"), RefineSettings(**settings, ray=cluster.address)))
    finally:
        done.set()
        killer.join()
    assert rows_at_kill and rows_at_kill[0] < 12 and not doomed.any_processes_alive()  # killed mid-run
    local_rows = list(read_jsonl(tmp_path / "local" / "samples.jsonl"))
    ray_rows = list(read_jsonl(out))
    assert [r["id"] for r in ray_rows] == [r["id"] for r in local_rows]  # every row once, in input order
    a, b = _lattices(tmp_path / "local" / "samples.jsonl"), _lattices(out)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-3)  # float noise only: 1 thread per task vs 2
    assert [r["valid"] for r in ray_rows] == [r["valid"] for r in local_rows]


def test_relax_with_ray_equals_local(cluster, tmp_path):
    df = read_shared("mp20/val.csv.xz", n=20, seed=31)
    df = df[[len(c.splitlines()) < 50 for c in df.cif]].head(4)
    rows = [{"id": f"s{i}", "ok": True, "cif": c, "dim": 3, "group": None} for i, c in enumerate(df.cif)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = dict(steps=5, device="cpu", engine="ase")
    run_relax(RelaxJob(str(tmp_path / "samples.jsonl"), str(tmp_path / "local"), RelaxOptions(**options)))
    run_relax(RelaxJob(str(tmp_path / "samples.jsonl"), str(tmp_path / "ray"), RelaxOptions(**options, ray=cluster.address)))
    local = {r["id"]: r for r in read_jsonl(tmp_path / "local" / "relaxed.jsonl")}
    remote = [r for r in read_jsonl(tmp_path / "ray" / "relaxed.jsonl")]
    assert sorted(r["id"] for r in remote) == sorted(local)  # every crystal once
    for r in remote:
        assert r["energy_per_atom"] == pytest.approx(local[r["id"]]["energy_per_atom"], abs=1e-4)


class EchoEngine:
    """A stand-in sampling engine: the text names the request and the process that drew it."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def generate(self, requests, options=None, adapter_index=None):
        import os

        from xtallm.llm.sampling import Output

        return [Output(f"{self.tag}:{r.id}:{r.seed}:{os.getpid()}", 1) for r in requests]


def test_sampling_replicas_split_requests_and_keep_their_order(cluster):
    from xtallm.llm.sampling import Request
    from xtallm.pipelines.ray_sampler import RayReplicas

    replicas = RayReplicas(cluster.address, EchoEngine, ("echo",), replicas=2, gpus_per_replica=0)
    try:
        requests = [Request(f"r{i}", {}, [1, 2], seed=100 + i) for i in range(7)]
        outputs = replicas.generate(requests)
        assert [o.text.rsplit(":", 1)[0] for o in outputs] == [f"echo:r{i}:{100 + i}" for i in range(7)]
        assert len({o.text.rsplit(":", 1)[1] for o in outputs}) == 2  # both replicas drew
    finally:
        replicas.close()


def test_sampling_on_a_cluster_without_gpus_is_refused_in_one_line(cluster):
    from xtallm.llm.sampling import SamplingOptions
    from xtallm.pipelines.ray_sampler import RayReplicas

    with pytest.raises(RuntimeError, match="has 0; vLLM's CPU backend does not run under Ray"):
        RayReplicas.start(cluster.address, "vllm", "model", None, SamplingOptions(), 512)


def test_generate_refines_on_the_cluster_and_samples_here(cluster, tmp_path, capsys):
    from xtallm.pipelines.cli import main

    args = ["generate", "--num-samples", "4", "--backend", "hf", "--unconstrained", "--condition", "sg=225",
            "--refine-steps", "10", "--refine-batch-size", "1", "--set", "sample.max_tokens=320"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--ray", cluster.address]) == 0  # no GPUs: sampling stays here
    local, remote = list(read_jsonl(tmp_path / "local" / "samples.jsonl")), list(read_jsonl(tmp_path / "ray" / "samples.jsonl"))
    assert [r["id"] for r in remote] == [r["id"] for r in local] and [r["raw_cif"] for r in remote] == [r["raw_cif"] for r in local]
    assert [r["refined"] for r in remote] == [r["refined"] for r in local] and any(r["refined"] for r in remote)
    assert main([*args, "--out", str(tmp_path / "x"), "--set", "refine.ray=auto"]) == 2
    assert "refine.ray: 'auto': a pipeline names its Ray cluster once, as ray.address" in capsys.readouterr().err
