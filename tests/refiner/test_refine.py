"""`xtallm refine` on real crystals with the shipped refiner: symmetry and Wyckoff sites survive exactly."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import ase.io
import numpy as np
import pytest
from pymatgen.core import Structure

from xtallm.pipelines.cli import main
from xtallm.pipelines.samples import decode_sample, read_jsonl as read_samples
from xtallm.refiner.checkpoint import load_refiner
from xtallm.refiner.pretrained import default_refiner_path
from tests.conftest import read_shared
from xtallm.tokenization import get_format
from xtallm.tokenization.record import detect_group


def _samples(cifs: list[str], dim: int, prefix: str) -> list[dict]:
    fmt = get_format("wyckoff")
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, cif in enumerate(cifs):
            text = fmt.encode(Structure.from_str(cif, fmt="cif"), dim=dim)
            rows.append({**decode_sample(f"{prefix}-{i}", text).to_json(), "prompt": "", "conditions": {}})
    return rows


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _wyckoff_multiset(text: str) -> Counter:
    record = get_format("wyckoff", strict=False).decode_record(text)
    return Counter((s.element, s.label) for s in record.sites)


@pytest.fixture(scope="module")
def real_samples(tmp_path_factory):
    bulk = read_shared("mp20/val.csv.xz", n=40, seed=3)
    pedia = read_shared("twod/2dmatpedia_5914.csv.xz", n=16, seed=3)
    mc2d = read_shared("twod/mc2d_258.csv.xz", n=8, seed=3)
    rows = _samples(list(bulk.cif), 3, "mp20") + _samples(list(pedia.cif_layer_std), 2, "2dmp") + _samples(list(mc2d.cif_layer_std), 2, "mc2d")
    path = tmp_path_factory.mktemp("refine-in") / "samples.jsonl"
    _write(path, rows)
    return path, rows


def test_refined_real_crystals_keep_group_and_wyckoff_sites(real_samples, tmp_path):
    path, rows = real_samples
    out = tmp_path / "out"
    assert main(["refine", str(path), "--out", str(out), "--tau", "0.3", "--steps", "20", "--seed", "1"]) == 0
    refined = {r["id"]: r for r in read_samples(out / "samples.jsonl")}
    assert set(refined) == {r["id"] for r in rows}
    for row in rows:
        r = refined[row["id"]]
        assert r["refined"], r["refine_note"]
        assert r["raw_cif"] == row["cif"] and r["cif"] != row["cif"]  # it moved, and the input is kept
        structure = Structure.from_str(r["cif"], fmt="cif")
        assert detect_group(structure, r["dim"], symprec=0.01) == row["group"], row["id"]
        assert _wyckoff_multiset(r["refined_text"]) == _wyckoff_multiset(row["text"]), row["id"]
        assert (out / "cif" / f"{row['id']}.cif").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["group_kept_rate"] == 1.0 and summary["refined"] == len(rows)


def test_unusable_rows_pass_through_and_a_rerun_resumes(real_samples, tmp_path):
    _, rows = real_samples
    big = dict(rows[0], id="too-big")
    broken = {"id": "broken", "prompt": "", "conditions": {}, "text": "garbage", "ok": False, "error": "ParseError: line 1", "cif": None, "dim": None, "group": None}
    path = tmp_path / "samples.jsonl"
    _write(path, [rows[0], big, broken])
    out = tmp_path / "out"
    args = ["refine", str(path), "--out", str(out), "--steps", "10", "--refine-max-atoms", "200"]
    assert main(args) == 0
    _write(path, [rows[0], big, broken, rows[1]])  # one more row: only it is refined on the re-run
    assert main(args) == 0
    result = {r["id"]: r for r in read_samples(out / "samples.jsonl")}
    assert len(result) == 4 and sum(1 for _ in read_samples(out / "samples.jsonl")) == 4
    assert not result["broken"]["refined"] and "not a parsed sample" in result["broken"]["refine_note"]
    assert result[rows[1]["id"]]["refined"]
    small = tmp_path / "small"
    assert main(["refine", str(path), "--out", str(small), "--steps", "10", "--refine-max-atoms", "1"]) == 0
    notes = [r["refine_note"] for r in read_samples(small / "samples.jsonl")]
    assert any(n and "max_atoms=1" in n for n in notes)


def test_an_element_beyond_the_refiner_is_refused_for_its_row_alone(real_samples, tmp_path):
    """A pretrained LM's grammar allows every element symbol (SmolLM2 wrote Md, No, Es): the refiner's element
    table ends at Z=100, and one such row used to end the whole batch with an IndexError."""
    _, rows = real_samples
    nacl = Structure.from_spacegroup("Fm-3m", [[5.6, 0, 0], [0, 5.6, 0], [0, 0, 5.6]], ["Md", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    heavy = {**decode_sample("heavy", get_format("wyckoff").encode(nacl)).to_json(), "prompt": "", "conditions": {}}
    path = tmp_path / "samples.jsonl"
    _write(path, [rows[0], heavy, rows[1]])
    assert main(["refine", str(path), "--out", str(tmp_path / "out"), "--steps", "10"]) == 0
    result = {r["id"]: r for r in read_samples(tmp_path / "out" / "samples.jsonl")}
    assert not result["heavy"]["refined"] and "Md (Z=101)" in result["heavy"]["refine_note"]
    assert result[rows[0]["id"]]["refined"] and result[rows[1]["id"]]["refined"]


def test_cif_folder_input_redetects_the_group(real_samples, tmp_path):
    _, rows = real_samples
    folder = tmp_path / "cifs"
    folder.mkdir()
    for row in rows[:3]:
        (folder / f"{row['id']}.cif").write_text(row["cif"])  # P1 CIFs: no group declared
    out = tmp_path / "out"
    assert main(["refine", str(folder), "--out", str(out), "--steps", "10"]) == 0
    result = list(read_samples(out / "samples.jsonl"))
    assert len(result) == 3 and all(r["refined"] and r["detected_group"] == r["group"] for r in result)


def test_bad_checkpoint_and_tau_are_clear_errors(real_samples, tmp_path, capsys):
    path, _ = real_samples
    assert main(["refine", str(path), "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path)]) == 2
    assert "not a refiner checkpoint" in capsys.readouterr().err
    assert main(["refine", str(path), "--out", str(tmp_path / "o2"), "--tau", "1.5"]) == 2
    assert "tau" in capsys.readouterr().err


def test_shipped_refiner_loads():
    refiner = load_refiner(default_refiner_path())
    assert refiner.info["steps"] > 1000 and len(refiner.vocab) > 50


def test_known_monolayers_survive_encode_decode_refine(tmp_path):
    """2H-MoS2, h-BN, graphene, 1T-MoS2, phosphorene: layer group kept, slab intact, pbc-free z readable."""
    import pandas as pd

    from tests.conftest import FIXTURES

    known = pd.read_csv(FIXTURES / "known_monolayers.csv")
    rows = _samples(list(known.cif_layer_std), 2, "known")
    path = tmp_path / "samples.jsonl"
    _write(path, rows)
    out = tmp_path / "out"
    assert main(["refine", str(path), "--out", str(out), "--steps", "20", "--vacuum", "20"]) == 0
    refined = {r["id"]: r for r in read_samples(out / "samples.jsonl")}
    for i, expected in enumerate(known.layer_group):
        r = refined[f"known-{i}"]
        assert r["refined"] and r["group"] == expected and r["detected_group"] == expected, (known.name[i], r)
        structure = Structure.from_str(r["cif"], fmt="cif")
        assert structure.lattice.c >= 20 - 1e-6  # the requested vacuum on top of the thickness (h-BN, graphene: flat)
        assert f"_xtallm_layer_group_IT_number   {expected}" in r["cif"]
        atoms = ase.io.read(out / "cif" / f"known-{i}.extxyz")
        assert tuple(atoms.pbc) == (True, True, False) and atoms.info["layer_group"] == expected
        assert len(atoms) == len(structure)


def test_size_batches_bound_the_padding_and_keep_kinds_apart():
    """Batches over ascending sizes: every index once, in order; padded pairs within the budget and within
    max_padding of the real ones (a single crystal may stand alone); a new batch where split_at changes."""
    from xtallm.refiner.refine import size_batches

    rng = np.random.default_rng(0)
    sizes = sorted(int(n) for n in rng.integers(1, 90, 300))
    split = [i >= 200 for i in range(300)]
    for max_padding in (1.0, 1.5, 4.0):
        batches = size_batches(sizes, 64, split_at=split, max_padding=max_padding)
        assert [i for b in batches for i in b] == list(range(300))
        for b in batches:
            padded, real = len(b) * sizes[b[-1]] ** 2, sum(sizes[i] ** 2 for i in b)
            assert len(b) == 1 or (padded <= 64 * 24**2 and padded <= max_padding * real)
            assert len({split[i] for i in b}) == 1
    assert len(size_batches(sizes, 64, max_padding=1.5)) > len(size_batches(sizes, 64, max_padding=100.0))
