"""SIGKILL mid-run, then the same command again: nothing lost, nothing duplicated, the same result as a run
that was never interrupted (fine-tuning, refiner training, relaxations, the hull, the refine stage)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, read_shared

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _kill_when(cmd: list[str], ready, timeout: float = 600) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds (it must not have finished by then)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{cmd[1:3]} ended (rc {proc.returncode}) before the kill point")
            if time.time() > deadline:
                pytest.fail("kill point not reached in time")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


def _run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def test_finetune_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    common = [sys.executable, "llm/finetune.py", "--config", "configs/llm/tiny_test.yaml", "train.report_to=[]", "train.max_steps=40",
              "train.save_every=10", "train.eval_every=10", "train.sample_every=0", "train.log_every=5"]
    _run([*common, f"train.output_dir={tmp_path / 'straight'}"])
    killed = tmp_path / "killed"
    _kill_when([*common, f"train.output_dir={killed}"], lambda: (killed / "checkpoints" / "step_00000020" / "progress.json").exists())
    assert not (killed / "metrics.json").exists()
    _run([*common, f"train.output_dir={killed}"])
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    pick = lambda m: [(h["step"], round(h.get("train_loss", 0), 5), round(h.get("eval_loss", 0), 5)) for h in m["history"]]
    assert pick(a) == pick(b) and b["steps"] == 40


def test_refiner_training_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    common = [sys.executable, "refiner/train.py", "--config", "configs/refiner/tiny_test.yaml", "train.max_steps=16", "train.save_every=4",
              "train.eval_every=8"]
    _run([*common, f"train.output_dir={tmp_path / 'straight'}"])
    killed = tmp_path / "killed"
    _kill_when([*common, f"train.output_dir={killed}"], lambda: (killed / "checkpoints" / "step_00000008" / "progress.json").exists())
    _run([*common, f"train.output_dir={killed}"])
    a = {k: v for f in sorted((tmp_path / "straight" / "model").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    b = {k: v for f in sorted((killed / "model").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.fixture(scope="module")
def crystals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    df = read_shared("mp20/val.csv.xz", n=16, seed=31)
    df = df[[len(c.splitlines()) < 60 for c in df.cif]].head(7)
    df.to_csv(folder / "known.csv", index=False)
    rows = [{"id": f"s{i}", "ok": True, "cif": c, "dim": 3, "group": None} for i, c in enumerate(df.cif)]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _same_rows(a: Path, b: Path, key: str) -> None:
    ra = {r["id"]: r for r in map(json.loads, a.read_text().splitlines())}
    rb = [json.loads(line) for line in b.read_text().splitlines()]
    assert len(rb) == len({r["id"] for r in rb}) == len(ra)  # nothing lost, nothing twice
    for r in rb:
        assert r[key] == pytest.approx(ra[r["id"]][key], abs=1e-4) if r[key] is not None else ra[r["id"]][key] is None


def test_relax_killed_mid_run_resumes(crystals, tmp_path):
    cmd = [sys.executable, "-m", "xtallm.pipelines.cli", "relax", str(crystals / "samples.jsonl"), "--relax-steps", "30",
           "--device", "cpu", "--engine", "ase", "--out"]
    _run([*cmd, str(tmp_path / "straight")])  # --out folders: relaxed.jsonl in each
    killed = tmp_path / "killed"
    _kill_when([*cmd, str(killed)], lambda: _lines(killed / "relaxed.jsonl") >= 3)
    _run([*cmd, str(killed)])
    _same_rows(tmp_path / "straight" / "relaxed.jsonl", killed / "relaxed.jsonl", "energy_per_atom")


def test_hull_build_killed_mid_run_resumes(crystals, tmp_path):
    cmd = [sys.executable, "-m", "xtallm.pipelines.cli", "hull", "build", "--structures", str(crystals / "known.csv"),
           "--relax-steps", "5", "--device", "cpu", "--engine", "ase", "--no-elements", "--out"]
    _run([*cmd, str(tmp_path / "straight")])  # --out folders: hull.csv in each
    killed = tmp_path / "killed"
    _kill_when([*cmd, str(killed)], lambda: _lines(killed / "hull.csv") >= 4)
    _run([*cmd, str(killed)])
    a = pd.read_csv(tmp_path / "straight" / "hull.csv").set_index("id")
    b = pd.read_csv(killed / "hull.csv")
    assert len(b) == b["id"].nunique() == len(a)
    assert (b.set_index("id")["energy_corrected"] - a["energy_corrected"]).abs().max() < 1e-4


def test_refine_stage_of_generate_killed_mid_stage_resumes_exactly(tmp_path):
    args = [sys.executable, "-m", "xtallm.pipelines.cli", "generate", "--num-samples", "24", "--backend", "hf", "--unconstrained",
            "--condition", "sg=225", "--max-tokens", "200", "--refine-steps", "30", "--refine-batch-size", "8", "--out"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run([*args, str(straight)])
    _kill_when([*args, str(killed)], lambda: _lines(killed / "samples.jsonl") >= 8)  # one chunk refined, others to go
    assert _lines(killed / "samples.jsonl") < 24
    _run([*args, str(killed)])
    a = {r["id"]: r for r in map(json.loads, (straight / "samples.jsonl").read_text().splitlines())}
    b = [json.loads(line) for line in (killed / "samples.jsonl").read_text().splitlines()]
    assert len(b) == len({r["id"] for r in b}) == 24
    assert all(r["cif"] == a[r["id"]]["cif"] for r in b)  # the same refined crystals, byte for byte
