"""Held-out splits and pretokenized training data (what the shipped default was trained on)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from xtallm.llm.config import DataConfig
from xtallm.llm.data import CrystalExamples, PretokenizedExamples, is_pretokenized
from xtallm.pipelines.training_data import MP20_SPLIT, TWOD_SPLIT, SPLIT_DIR, Splits, pretokenize, read_splits, split_fraction, trained_rows
from tests.conftest import REPO
from xtallm.tokenization.data import prepare_dataset
from xtallm.tokenization.tokenizer import build_crystal_tokenizer

BULK_EXAMPLES = REPO / "tokenization" / "examples" / "bulk_examples.csv"


def test_committed_splits_follow_their_rule():
    splits = read_splits()
    assert 900 <= len(splits.mp20) <= 1100 and 200 <= len(splits.twod) <= 400
    assert all(split_fraction(MP20_SPLIT, i) < 0.08 for i in splits.mp20["material_id"])
    assert all(split_fraction(TWOD_SPLIT, k) < 0.05 for k in splits.twod["key"])
    assert splits.mp20["material_id"].is_unique and splits.twod["key"].is_unique
    assert (SPLIT_DIR / "README.md").exists()


def test_heldout_materials_are_excluded_from_every_source():
    splits = read_splits()
    held = splits.mp20.iloc[0]
    rows = pd.DataFrame({
        "id": [held["material_id"], "wbm-x", "mp-nothing", "7"],
        "source": ["mpts52_val", "wbm_10k", "mp20_val", "2dmatpedia"],
        "dim": [3, 3, 3, 2],
        "group": [int(held["group"]), int(held["group"]), 1, 1],
        "reduced_formula": ["Xx", held["reduced_formula"], "Zz", "Qq"],
    })
    key = splits.twod.iloc[0]
    rows.loc[3, "id"], rows.loc[3, "source"] = key["id"], key["source"]
    # same id in another source, same material (formula+group) from another database, unrelated, held-out 2D key
    assert rows.pipe(splits.excluded).tolist() == [True, True, False, True]


def test_novelty_reference_is_what_training_kept(tmp_path):
    """A held-out crystal is not training data: the novelty reference leaves it out (and gives dim)."""
    splits = read_splits()
    held = splits.mp20.iloc[0]
    table = pd.read_csv(BULK_EXAMPLES).head(6)
    table.loc[0, "material_id"] = held["material_id"]  # this row is now the held-out crystal
    (tmp_path / "mp20").mkdir()
    table.to_csv(tmp_path / "mp20" / "val.csv.xz", index=False)
    reference = trained_rows(tmp_path, "mp20_val", splits, num_proc=1)
    kept = set(table["cif"][1:])
    assert set(reference["cif"]) <= kept and len(reference) >= 4 and set(reference["dim"]) == {3}
    assert table["cif"][0] not in set(reference["cif"])


def test_pretokenized_examples_are_the_training_draws(tmp_path):
    tok = build_crystal_tokenizer(model_max_length=512)
    rows = prepare_dataset(BULK_EXAMPLES).dataset
    cfg = DataConfig(max_length=512)
    meta = pretokenize(rows, tok, cfg, tmp_path / "x_train", n_variants=3)
    assert meta["n_examples"] == len(rows) and meta["n_variants"] == 3
    assert is_pretokenized([str(tmp_path / "x_train")])
    live = CrystalExamples(rows, tok, cfg, 0, train=True)
    stored = PretokenizedExamples([str(tmp_path / "x_train")], 512, train=True)
    for epoch in (0, 2, 4):  # epoch 4 reuses variant 1
        live.set_epoch(epoch % 3)
        stored.set_epoch(epoch)
        for i in (0, len(stored) - 1):
            assert stored[i] == live[i]


def test_finetune_from_pretokenized_needs_no_pymatgen(tmp_path):
    """What runs on the bare GPU machine: llm/finetune.py with pymatgen, moyopy and datasets unavailable."""
    tok = build_crystal_tokenizer(model_max_length=512)
    rows = prepare_dataset(BULK_EXAMPLES).dataset
    pretokenize(rows, tok, DataConfig(max_length=512), tmp_path / "pt" / "a_train", n_variants=2)
    pretokenize(rows, tok, DataConfig(max_length=512), tmp_path / "pt" / "a_eval", n_variants=1, train=False)
    code = (
        "import sys; sys.modules.update(pymatgen=None, moyopy=None, datasets=None, pyxtal=None)\n"
        "from llm.finetune import main\n"
        f"sys.exit(main(['--config', 'configs/llm/xtallm_default.yaml', 'train.output_dir={tmp_path / 'run'}',"
        f" 'model.tokenizer={tmp_path / 'pt' / 'tokenizer'}', 'data.train=[{tmp_path / 'pt' / 'a_train'}]',"
        f" 'data.eval=[{tmp_path / 'pt' / 'a_eval'}]', 'model.scratch.hidden_size=32', 'model.scratch.num_layers=1',"
        " 'model.scratch.num_heads=2', 'model.scratch.num_kv_heads=2', 'model.scratch.intermediate_size=64',"
        " 'train.max_steps=3', 'train.batch_size=4', 'train.compile=false', 'train.report_to=[]']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["final_eval_loss"] > 0


def test_pretokenized_and_table_sources_do_not_mix(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pretokenized.json").write_text("{}")
    with pytest.raises(ValueError, match="pretokenize all or none"):
        is_pretokenized([str(tmp_path / "p"), str(BULK_EXAMPLES)])
