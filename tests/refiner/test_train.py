"""refiner/train.py: trains from a recipe, and a killed run resumes to exactly the same weights."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from xtallm.refiner.checkpoint import load_refiner
from xtallm.refiner.config import load_refiner_config
from xtallm.refiner.train import train
from tests.conftest import REPO


def _config(out, *extra):
    return load_refiner_config(REPO / "configs" / "refiner" / "tiny_test.yaml", [f"train.output_dir={out}", "train.max_steps=6", "train.save_every=3", "train.eval_every=6", *extra])


def _weights(out):
    files = sorted((out / "model").glob("*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def test_resume_after_a_stop_gives_the_same_model(tmp_path):
    straight = tmp_path / "straight"
    train(_config(straight), resume=False)
    stopped = tmp_path / "stopped"
    partial = train(_config(stopped, "train.stop_after_steps=3"), resume=False)
    assert "steps" not in partial and (stopped / "checkpoints" / "step_00000003" / "progress.json").exists()
    train(_config(stopped), resume=True)
    a, b = _weights(straight), _weights(stopped)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    metrics = json.loads((stopped / "metrics.json").read_text())
    assert metrics["steps"] == 6 and "initial_eval" in metrics
    refiner = load_refiner(stopped / "model")
    assert refiner.info["steps"] == 6 and refiner.model.config.hidden == 32


def test_recipe_errors_name_the_setting(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="t_min"):
        _config(tmp_path, "train.t_min=0.9", "train.t_max=0.5")
    with pytest.raises(ValueError, match="unknown setting"):
        _config(tmp_path, "train.nope=1")


class _Payload:
    """Unpickling this creates a file: what a crafted checkpoint would do with a real command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    import pytest

    from xtallm.configs.training import CheckpointError

    out = tmp_path / "run"
    train(_config(out, "train.stop_after_steps=3"), resume=False)
    step = out / "checkpoints" / "step_00000003"
    sentinel = tmp_path / "payload-ran"
    torch.save({"state": _Payload(sentinel), "param_groups": []}, step / "optimizer.pt")
    with pytest.raises(CheckpointError, match="optimizer.pt: refused to load"):
        train(_config(out), resume=True)
    assert not sentinel.exists()
    (step / "optimizer.pt").unlink()
    (step / "extra_state.pkl").write_bytes(b"\x80\x04N.")  # accelerate's save_state layout
    with pytest.raises(CheckpointError, match="holds pickle files"):
        train(_config(out), resume=True)


def test_a_half_written_checkpoint_is_passed_over(tmp_path):
    """A run killed while saving leaves a checkpoint folder without progress.json: resume takes the one before."""
    straight = tmp_path / "straight"
    train(_config(straight), resume=False)
    out = tmp_path / "run"
    train(_config(out, "train.stop_after_steps=3"), resume=False)
    torn = out / "checkpoints" / "step_00000005"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\x00" * 100)  # cut off mid-write, progress.json never written
    train(_config(out), resume=True)
    a, b = _weights(straight), _weights(out)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def _corrupted_loss(refiner_dir) -> float:
    """Coordinate loss of a refiner on every fixture crystal, corrupted LLM-style (seeded), at the corruption's level."""
    from xtallm.refiner.corrupt import corrupt, training_levels
    from xtallm.refiner.data import load_arrays, make_batch
    from xtallm.refiner.diffusion import training_loss

    refiner = load_refiner(refiner_dir)
    crystals = load_arrays(REPO / "tests" / "fixtures" / "refiner_examples.npz")[0]
    losses = []
    for start in range(0, len(crystals), 16):
        batch = make_batch(crystals, range(start, min(start + 16, len(crystals))), refiner.vocab)
        v, k, _ = corrupt(batch, 1.0, torch.Generator().manual_seed(start))
        t = training_levels(batch, v, refiner.schedule, torch.zeros(batch.size), 0.3, 0.8)
        torch.manual_seed(0)
        with torch.no_grad():
            losses.append(float(training_loss(refiner.model, batch, refiner.schedule, t, (v, k))["coord"]))
    return sum(losses) / len(losses)


def test_training_on_llm_like_corruptions_lowers_the_loss_on_them(tmp_path):
    """Fine-tuning a saved refiner with train.corruption lowers its loss on corrupted crystals, keeps its vocabulary."""
    base = tmp_path / "base"
    train(_config(base), resume=False)
    tuned = tmp_path / "tuned"
    train(_config(tuned, f"train.init_from={base / 'model'}", "train.corruption=1.0", "train.max_steps=60",
                  "train.eval_every=60", "train.lr=1e-2", "train.warmup_steps=0", "train.max_grad_norm=0", "train.ema_decay=0.5"),
          resume=False)
    before, after = _corrupted_loss(base / "model"), _corrupted_loss(tuned / "model")
    assert after < 0.99 * before, (before, after)
    assert load_refiner(tuned / "model").vocab == load_refiner(base / "model").vocab
