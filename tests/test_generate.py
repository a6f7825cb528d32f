"""`xtallm generate` end to end on the embedded defaults (HF backend: no engine start in tests)."""

from __future__ import annotations

import json

import numpy as np


from xtallm.pipelines.cli import main
from xtallm.pipelines.generate import load_generate_config
from xtallm.pipelines.samples import read_jsonl as read_samples
from tests.conftest import REPO
from xtallm.tokenization import get_format


def test_generate_samples_decodes_and_refines_then_resumes(tmp_path):
    out = tmp_path / "gen"
    args = ["generate", "--num-samples", "6", "--out", str(out), "--backend", "hf", "--unconstrained",
            "--condition", "dim=3", "--condition", "sg=225", "--refine-steps", "20", "--set", "sample.max_tokens=320"]
    assert main(args) == 0
    rows = list(read_samples(out / "samples.jsonl"))
    raw = list(read_samples(out / "llm" / "samples.jsonl"))
    assert len(rows) == len(raw) == 6 and [r["id"] for r in rows] == [r["id"] for r in raw]
    parsed = [r for r in rows if r["ok"]]
    assert parsed, "the default model should parse some unconstrained samples"
    for r in parsed:
        assert r["refined"] and r["group"] == 225 and (out / "cif" / f"{r['id']}.cif").exists()
        structure = get_format("wyckoff", strict=False).decode(r["refined_text"])
        # the refiner opens clashes (the LM can write collapsed or stacked orbits) and keeps the group exactly
        assert len(structure) == 1 or structure.distance_matrix[np.triu_indices(len(structure), 1)].min() >= 0.5
        assert r["detected_group"] == 225
        assert isinstance(r["valid"], bool) and (r["valid"] or r["invalid_reason"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["refine"]["refined_now"] == len(rows)
    assert main(args) == 0  # everything is there: nothing is sampled or refined again
    again = json.loads((out / "summary.json").read_text())
    assert again["refine"]["refined_now"] == 0 and len(list(read_samples(out / "samples.jsonl"))) == 6


def test_pipeline_configs_load():
    for path in sorted((REPO / "configs" / "pipeline").glob("*.yaml")):
        config = load_generate_config(str(path))
        assert config.sample.constrained and config.refine.enabled


def test_redraw_invalid_replaces_invalid_rows_and_keeps_the_first_draws(tmp_path):
    """--redraw-invalid: the first draws stay in first_draws.jsonl (the protocol's figure), the final rows keep
    their ids, and every draw is counted. The refiner's repulsion is switched off so that some rows stay invalid."""
    out = tmp_path / "gen"
    args = ["generate", "--num-samples", "6", "--out", str(out), "--backend", "hf", "--unconstrained", "--condition", "dim=3",
            "--refine-steps", "10", "--repulsion", "0", "--polish-steps", "0", "--tau-max", "0.2", "--redraw-invalid", "2",
            "--set", "sample.max_tokens=320"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())["refine"]["redraws"]
    first = list(read_samples(out / "first_draws.jsonl"))
    final = list(read_samples(out / "samples.jsonl"))
    assert [r["id"] for r in first] == [r["id"] for r in final]
    invalid_first = sum(not r.get("valid") for r in first)
    assert summary["valid_first_draw"] == len(first) - invalid_first
    assert summary["valid_with_redraws"] == sum(bool(r.get("valid")) for r in final) >= summary["valid_first_draw"]
    assert len(first) <= summary["draws"] <= len(first) + 2 * invalid_first
    for a, b in zip(first, final):
        assert a == b or (not a.get("valid") and b["valid"] and b["redraw_round"] in (1, 2) and b["draws"] > 1)
