"""Coarse crystals put into the group they declare (`fit_to_group`), and `xtallm refine` on such rows.

The coarse input imitates LLM output on real held-out crystals: bulk fractional coordinates with
Gaussian noise 0.005 and rounded to 2 decimals, monolayer Cartesian coordinates with 0.05 Å noise
and rounded to 0.01 Å; the declared group is the true one.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from tests.conftest import REPO, read_shared
from xtallm.pipelines.refine import RefineJob, RefineSettings, run_refine
from xtallm.pipelines.samples import Sample, read_jsonl
from xtallm.tokenization.errors import EncodeError
from xtallm.tokenization.record import detect_group, layer_cell
from xtallm.tokenization.symmetrize import fit_to_group
from xtallm.tokenization.symmetry import GroupId


def _structure(cif: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def coarse_bulk(structure: Structure, rng: np.random.Generator, noise: float = 0.005) -> Structure:
    frac = np.round((structure.frac_coords + rng.normal(0.0, noise, structure.frac_coords.shape)) % 1.0, 2)
    return Structure(structure.lattice, structure.species, frac)


def coarse_layer(structure: Structure, rng: np.random.Generator, noise: float = 0.05) -> Structure:
    layer = layer_cell(structure)
    cart = np.round(layer.cart_coords + rng.normal(0.0, noise, layer.cart_coords.shape), 2)
    return Structure(layer.lattice, layer.species, cart, coords_are_cartesian=True)


@pytest.fixture(scope="module")
def heldout_mp20() -> pd.DataFrame:
    """30 held-out MP-20 crystals (configs/data/mp20-heldout-v1.csv) with their CIFs and groups."""
    split = pd.read_csv(REPO / "configs/data/mp20-heldout-v1.csv", dtype={"material_id": str})
    rows = pd.concat([read_shared("mp20/val.csv.xz"), read_shared("mp20/train_partial.csv.xz")]).drop_duplicates("material_id")
    rows = rows.merge(split[["material_id", "group"]], on="material_id").sort_values("material_id")
    return rows.sample(30, random_state=0).reset_index(drop=True)


def _nacl() -> Structure:
    return Structure.from_spacegroup(225, Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _quick_refine(**settings) -> RefineSettings:
    """A short chain on the CPU; the clash polish after the chain (where the refiner has one) is off: not what is tested here."""
    if "polish_steps" in {f.name for f in dataclasses.fields(RefineSettings)}:
        settings.setdefault("polish_steps", 0)
    return RefineSettings(tau=0.1, steps=20, device="cpu", **settings)


def _random_triclinic(seed: int = 7) -> Structure:
    rng = np.random.default_rng(seed)
    lattice = Lattice.from_parameters(4.3, 5.1, 6.2, 73.0, 82.0, 101.0)
    frac: list[np.ndarray] = []
    while len(frac) < 5:  # atoms at least 1.8 Å apart
        x = rng.random(3)
        if all(lattice.get_distance_and_image(x, y)[0] > 1.8 for y in frac):
            frac.append(x)
    return Structure(lattice, ["Si", "O", "O", "Mg", "O"], frac)


def test_coarse_heldout_bulk_crystals_keep_their_declared_group(heldout_mp20):
    rng = np.random.default_rng(0)
    kept = []
    for row in heldout_mp20.itertuples():
        truth = _structure(row.cif)
        fit = fit_to_group(coarse_bulk(truth, rng), 3, int(row.group))
        built = fit.record.to_structure()
        assert fit.record.group == row.group and fit.max_shift <= 0.5, (row.material_id, fit.note)
        assert built.composition.reduced_formula == truth.composition.reduced_formula, row.material_id
        assert abs(built.volume / len(built) - truth.volume / len(truth)) < 0.05 * truth.volume / len(truth), row.material_id
        kept.append(detect_group(built, 3, symprec=0.01) == row.group)
    assert np.mean(kept) >= 0.95, f"declared group recovered for {sum(kept)} of {len(kept)}"


def test_coarse_heldout_monolayers_keep_their_layer_group():
    split = pd.read_csv(REPO / "configs/data/twod-heldout-v1.csv", dtype={"id": str})
    split = split[split.source == "2dmatpedia"].head(12)
    table = read_shared("twod/2dmatpedia_5914.csv.xz")
    rng = np.random.default_rng(0)
    kept = []
    for row in split.itertuples():
        fit = fit_to_group(coarse_layer(_structure(table.cif_layer_std[int(row.id)]), rng), 2, int(row.group))
        assert fit.record.dim == 2 and fit.record.group == row.group, (row.key, fit.note)
        kept.append(detect_group(fit.record.to_structure(), 2, symprec=0.01) == row.group)
    assert np.mean(kept) >= 0.9, f"layer group recovered for {sum(kept)} of {len(kept)}"


@pytest.mark.parametrize("declared", [166, 139, 216, 221, 62])
def test_a_more_symmetric_crystal_is_written_in_its_declared_subgroup(declared):
    """Rocksalt (Fm-3m) declared as a subgroup: t-subgroups (R-3m, I4/mmm, F-43m), a k-subgroup with the
    centring lost (Pm-3m) and one through both (Pnma); the record is in the declared group, its crystal
    still rocksalt."""
    nacl = _nacl()
    fit = fit_to_group(nacl, 3, declared)
    assert fit.record.group == declared and fit.detected == 225
    built = fit.record.to_structure()
    assert detect_group(built, 3, symprec=0.01) == 225
    assert built.composition.reduced_formula == "NaCl" and built.volume / len(built) == pytest.approx(nacl.volume / len(nacl))
    assert "supergroup sg 225" in fit.note and fit.max_shift < 1e-6


def test_a_coarse_tetragonal_distortion_is_kept_in_the_declared_subgroup():
    """Rocksalt stretched 2% along c, coarse: looks cubic at a loose tolerance; written in I4/mmm with c/a kept."""
    stretched = Structure(Lattice.tetragonal(5.64, 5.64 * 1.02), _nacl().species, _nacl().frac_coords)
    fit = fit_to_group(coarse_bulk(stretched, np.random.default_rng(1), noise=0.002), 3, 139)
    assert fit.record.group == 139
    assert fit.record.lattice["c"] / (fit.record.lattice["a"] * np.sqrt(2)) == pytest.approx(1.02, abs=0.01)


def test_a_layer_written_in_its_declared_layer_subgroup():
    graphene = Structure(Lattice.hexagonal(2.46, 20.0), ["C", "C"], [[1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5]])
    fit = fit_to_group(graphene, 2, GroupId(2, 78))
    assert fit.record.group == 78 and fit.detected == 80
    assert detect_group(fit.record.to_structure(), 2, symprec=0.01) == 80


def test_what_cannot_fit_is_refused_in_one_line_naming_the_group():
    with pytest.raises(EncodeError, match=r"does not fit sg 225 \(Fm-3m\) within 0.5 Å") as info:
        fit_to_group(_random_triclinic(), 3, 225)
    assert "\n" not in str(info.value)
    with pytest.raises(EncodeError, match="sg 194"):  # rocksalt is cubic: no hexagonal subgroup
        fit_to_group(_nacl(), 3, 194)
    with pytest.raises(EncodeError, match="within 0.01 Å"):  # 0.05 Å of noise does not fit a 0.01 Å budget
        fit_to_group(coarse_bulk(_nacl(), np.random.default_rng(0), noise=0.01), 3, 225, max_tolerance=0.01)
    with pytest.raises(EncodeError, match="layer group"):
        fit_to_group(_nacl(), 3, GroupId(2, 78))


def test_refine_symmetrizes_declared_rows_and_refuses_what_does_not_fit(heldout_mp20, tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for row in heldout_mp20.head(2).itertuples():
        coarse = coarse_bulk(_structure(row.cif), rng)
        rows.append(Sample(row.material_id, ok=True, cif=coarse.to(fmt="cif"), group=GroupId(3, int(row.group))).to_json())
    rows.append(Sample("triclinic", ok=True, cif=_random_triclinic().to(fmt="cif"), group=GroupId(3, 225)).to_json())
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_refine(RefineJob(str(path), str(tmp_path / "out"), _quick_refine()))
    out = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "samples.jsonl")}
    assert set(out) == {r["id"] for r in rows} and summary["refined"] == 2
    refused = out["triclinic"]
    assert not refused["refined"] and refused["refine_note"].startswith("refused: ") and "sg 225" in refused["refine_note"]
    assert refused["cif"] == rows[2]["cif"]  # passed through as it came
    for row in rows[:2]:
        r = out[row["id"]]
        assert r["refined"] and r["refine_note"].startswith("symmetrized into sg ") and r["group"] == row["group"]
        assert r["detected_group"] == row["group"] and r["raw_cif"] == row["cif"]
    assert summary["pass_reasons"] == {"refused": 1}


def test_refine_group_setting_declares_the_group_of_a_cif_folder(tmp_path, capsys):
    from xtallm.pipelines.cli import build_parser, main

    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "rocksalt.cif").write_text(coarse_bulk(_nacl(), np.random.default_rng(3)).to(fmt="cif"))  # a P1 CIF
    run_refine(RefineJob(str(folder), str(tmp_path / "out"), _quick_refine(group="sg=139")))
    (row,) = read_jsonl(tmp_path / "out" / "samples.jsonl")
    assert row["refined"] and row["group"] == 139 and "supergroup sg 225" in row["refine_note"]
    assert build_parser().parse_args(["refine", str(folder), "--out", "o", "--group", "lg 78"]).group == "lg 78"
    assert main(["refine", str(folder), "--out", str(tmp_path / "bad"), "--group", "sg 231", "--device", "cpu"]) == 2
    assert "--group 'sg 231'" in capsys.readouterr().err
