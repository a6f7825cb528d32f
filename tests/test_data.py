"""Dataset building: columns, conditions, cache, parallel map, table readers, the CLI."""

import json

import pandas as pd
import pytest

from xtallm.pipelines.cli import main
from xtallm.pipelines.demo import example_path
from xtallm.tokenization.data import PrepareOptions, prepare_dataset, read_table

from .conftest import shared_file


def test_bulk_examples(tmp_path):
    prepared = prepare_dataset(example_path("bulk"), PrepareOptions(), num_proc=1, cache_dir=tmp_path)
    ds = prepared.dataset
    assert len(ds) == prepared.n_rows == 64 and len(prepared.failures) == 0
    assert {"id", "cif", "dim", "group", "text", "record", "conditions", "n_atoms"} <= set(ds.column_names)
    row = ds[0]
    conditions = json.loads(row["conditions"])
    assert conditions["dim"] == 3 and conditions["sg"] == row["group"]
    assert {"band_gap", "formation_energy", "e_above_hull", "formula", "elements", "density"} <= set(conditions)
    assert row["text"].startswith(f"sg {row['group']}\n")


def test_layers_are_recognized_by_their_column(tmp_path):
    ds = prepare_dataset(example_path("layers"), PrepareOptions(), num_proc=1, cache_dir=tmp_path).dataset
    assert set(ds["dim"]) == {2}
    assert all(t.startswith("lg ") for t in ds["text"])
    assert json.loads(ds[0]["conditions"])["band_gap"] == pytest.approx(1.6, abs=0.01)


def test_cache_and_parallel_map_agree(tmp_path):
    opts = PrepareOptions(limit=130)
    first = prepare_dataset(example_path("bulk"), opts, num_proc=2, cache_dir=tmp_path)
    again = prepare_dataset(example_path("bulk"), opts, num_proc=1, cache_dir=tmp_path)
    assert again.path == first.path
    assert again.dataset["text"] == first.dataset["text"]
    single = prepare_dataset(example_path("bulk"), opts, num_proc=1, cache_dir=tmp_path, use_cache=False)
    assert single.dataset["text"] == first.dataset["text"]


def test_xyz_dataset(tmp_path):
    ds = prepare_dataset(example_path("bulk"), PrepareOptions(fmt="xyz", limit=10), num_proc=1, cache_dir=tmp_path).dataset
    assert len(ds) == 10 and ds[0]["text"].count("\n") >= 3 and ds[0]["record"]


def test_read_table_formats(tmp_path):
    df = pd.read_csv(example_path("bulk")).head(5)
    df.to_csv(tmp_path / "t.csv.gz", index=False)
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv.gz", "t.jsonl", "t.parquet"):
        assert read_table(tmp_path / name)["material_id"].tolist() == df["material_id"].tolist()
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_table(tmp_path / "missing.csv.xz")
    with pytest.raises(FileNotFoundError, match="neither a file, a URL nor a hub dataset id"):
        read_table("just-a-word")


def test_real_compressed_table():
    df = read_table(shared_file("mp20/val.csv.xz"))
    assert len(df) == 9047 and "cif" in df.columns


def test_cli_data_prepare(tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["data", "prepare", str(example_path("layers")), "--out", str(out), "--num-proc", "1"]) == 0
    assert "48 of 48 rows encoded" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == 48 and (out / "failures.csv").exists()
    assert main(["data", "prepare", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
