"""Element hints for property requests (issue 29): a hinted draw's prompt names the elements of a training crystal
with the requested property; the hint is seeded, optional, and never overrides what the prompt itself decides."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import SHARED_DATA, shared_file
from xtallm.pipelines import property_hints as H


def test_a_hint_names_the_elements_of_training_crystals_with_the_requested_property():
    table, hints = H.table(), H.ElementHints(1.0)
    for asked in (0.0, 2.0, 5.0):
        got = {hints({"dim": 3, "band_gap": asked}, seed)["elements"] for seed in range(60)}
        assert got <= set(table.loc[(table["band_gap"] - asked).abs() <= 0.5, "elements"]) and len(got) > 10
    got = {hints({"dim": 3, "band_gap": 3.0, "formation_energy": -2.5}, seed)["elements"] for seed in range(30)}
    both = table[((table["band_gap"] - 3.0).abs() <= 0.5) & ((table["formation_energy"] + 2.5).abs() <= 0.25)]
    assert got <= set(both["elements"])
    # a request beyond every known crystal: the nearest ones
    widest = set(table.nlargest(H.MIN_CANDIDATES, "band_gap")["elements"])
    assert {hints({"dim": 3, "band_gap": 40.0}, seed)["elements"] for seed in range(30)} <= widest


def test_hints_are_seeded_shared_out_and_never_override_the_prompt():
    hints = H.ElementHints(0.5)
    asked = {"dim": 3, "formation_energy": -1.0}
    assert [hints(asked, s) for s in range(20)] == [hints(asked, s) for s in range(20)]
    hinted = sum(hints(asked, s) is not None for s in range(400))
    assert 150 < hinted < 250
    assert all(H.ElementHints(0.0)(asked, s) is None for s in range(50))
    for prompt in ({"dim": 3, "band_gap": 2.0, "elements": "Li,O"}, {"dim": 3, "band_gap": 2.0, "formula": "LiCoO2"},
                   {"dim": 2, "band_gap": 2.0}, {"dim": 3, "density": 3.0}):
        assert all(H.ElementHints(1.0)(prompt, s) is None for s in range(20))
    with pytest.raises(ValueError, match="screen.hints must be in"):
        H.ElementHints(1.5)


def test_a_hint_is_in_the_prompt_text_only():
    """The model reads the hint; the grammar and the row's conditions stay the prompt's own."""
    from transformers import AutoTokenizer

    from xtallm.llm.model import resolve_model
    from xtallm.pipelines.sample import SampleJob, build_requests, model_info

    model = resolve_model(None)
    tokenizer, info = AutoTokenizer.from_pretrained(model), model_info(model, None)
    asked = {"dim": 3, "band_gap": 5.0}
    plain = build_requests(SampleJob("unused", 4, asked), model, None, tokenizer, info)
    hinted = build_requests(SampleJob("unused", 4, asked, hint=H.ElementHints(1.0)), model, None, tokenizer, info)
    for a, b in zip(plain, hinted):
        assert b.conditions == asked == a.conditions and b.seed == a.seed and b.grammar == a.grammar
        assert b.hint and f"elements={b.hint['elements']}" in tokenizer.decode(b.prompt_ids)
        assert "elements=" not in tokenizer.decode(a.prompt_ids)
    # a model never trained with elements= gets no hint
    unaware = {**info, "conditions": [c for c in info["conditions"] if c != "elements"]}
    assert not any(r.hint for r in build_requests(SampleJob("unused", 4, asked, hint=H.ElementHints(1.0)), model, None, tokenizer, unaware))


def test_the_shipped_table_is_what_the_builder_makes_from_mp20():
    shared_file("mp20/train_meta_no_positions.csv.xz")
    built = H.build_table(SHARED_DATA)
    pd.testing.assert_frame_equal(built, H.table(), check_dtype=False)


def test_a_request_beyond_the_trained_range_is_refused_in_one_line(tmp_path, capsys):
    from xtallm.pipelines.cli import main

    low, high = H.trained_range("band_gap")
    assert low == 0.0 and 5.0 < high < 10.0
    H.check_trained_range({"band_gap": 5.0, "formation_energy": -3.0})  # the ladders are inside
    for asked, key in (("band_gap=12", "band_gap"), ("formation_energy=1.5", "formation_energy")):
        code = main(["generate", "--num-samples", "1", "--condition", asked, "--out", str(tmp_path / "g"), "--backend", "hf"])
        err = capsys.readouterr().err
        assert code != 0 and f"{asked}: outside what the default model and its {key} predictor were trained on" in err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "g" / "llm").exists()  # refused before any sampling
