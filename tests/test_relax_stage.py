"""The optional relaxation stage after refinement (`xtallm refine --relax`): planted slightly-wrong crystals
relax under FixSymmetry (energy down, group kept exactly, a monolayer's c fixed), same ids, resumable,
bad rows passed through with a note. A handful of FIRE steps with SevenNet-0 on the CPU."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from xtallm.configs.recipe import RecipeError, build
from xtallm.pipelines.cli import main
from xtallm.pipelines.evaluation.stability import MixedEnergyScalesError
from xtallm.pipelines.generate import load_generate_config
from xtallm.pipelines.refine import RefineSettings
from xtallm.pipelines.relax_stage import run_relax_stage
from xtallm.pipelines.samples import read_cif, read_samples, structure_cif
from xtallm.tokenization.record import detect_group
from xtallm.tokenization.symmetry import GroupId

from .conftest import FIXTURES

STEPS = 6


def _nacl(a: float) -> Structure:
    """Rock salt in its primitive cell (2 atoms), lattice constant a (the relaxed one is ~5.7 Å)."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def _mos2_stretched() -> Structure:
    """2H-MoS2 (layer group 78) with its in-plane lattice stretched 4%."""
    s = read_cif(pd.read_csv(FIXTURES / "known_monolayers.csv").cif_layer_std[0])
    lat = s.lattice
    return Structure(Lattice.from_parameters(lat.a * 1.04, lat.b * 1.04, lat.c, lat.alpha, lat.beta, lat.gamma),
                     s.species, s.frac_coords)


def _row(sid: str, structure: Structure | None, dim: int, group: int | None, **extra) -> dict:
    cif = structure_cif(structure, GroupId(dim, group) if group else None) if structure is not None else None
    return {"id": sid, "ok": cif is not None, "cif": cif, "dim": dim, "group": group, "refined": True, "raw_cif": None, **extra}


@pytest.fixture(scope="module")
def relaxed_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("refined")
    rows = [
        _row("nacl", _nacl(6.0), 3, 225),
        _row("mos2", _mos2_stretched(), 2, 78),
        _row("bad-cif", None, 3, 225, ok=True, cif="data_x\n_cell_length_a oops\n"),
        _row("unparsed", None, 3, None, error="ParseError: no group"),
        _row("wrong-group", _nacl(6.0), 3, 221),  # rock salt is not Pm-3m: nothing exact to keep
    ]
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = RefineSettings(relax=True, relax_steps=STEPS, device="cpu")
    summary = run_relax_stage(out, settings)
    return out, rows, settings, summary


def _relaxed(out) -> dict:
    return {s.id: s for s in read_samples(out / "relaxed" / "samples.jsonl")}


def test_planted_crystals_relax_in_their_group(relaxed_dir):
    out, rows, _, summary = relaxed_dir
    got = _relaxed(out)
    assert list(got) == [r["id"] for r in rows]  # same ids, input order, every row kept
    nacl = got["nacl"]
    info = nacl.extra["relax"]
    assert info["relaxed"] and info["mlff"] == "sevennet" and info["max_steps"] == STEPS and 1 <= info["steps"] <= STEPS
    assert info["energy_per_atom"] < info["energy_per_atom_start"] - 0.01  # a 5% stretched cell: energy clearly goes down
    relaxed = read_cif(nacl.cif)
    assert relaxed.lattice.a < _nacl(6.0).lattice.a - 0.02  # the cell shrank towards ~5.7 Å ...
    assert detect_group(relaxed, 3, symprec=1e-4) == 225 and nacl.detected_group == 225 and info["group_kept"]  # ... in Fm-3m
    assert nacl.raw_cif == rows[0]["cif"]  # the stage's input (the refined crystal) is kept
    assert nacl.valid is True and "sevennet" in info["note"]

    mos2 = got["mos2"]
    info = mos2.extra["relax"]
    assert info["relaxed"] and info["energy_per_atom"] < info["energy_per_atom_start"]
    before, after = read_cif(mos2.raw_cif), read_cif(mos2.cif)
    assert after.lattice.a < before.lattice.a - 0.01  # the in-plane stretch relaxes ...
    assert abs(after.lattice.c - before.lattice.c) < 1e-6  # ... c (and the vacuum with it) does not move
    z = after.cart_coords[:, 2]
    assert z.max() - z.min() < 4.0 and after.lattice.c - (z.max() - z.min()) > 15.0  # one slab, vacuum intact
    assert mos2.detected_group == 78 and detect_group(after, 2, symprec=1e-4) == 78
    assert "_xtallm_layer_group_IT_number   78" in mos2.cif

    assert summary["relaxed"] == 2 and summary["passed_through"] == 3 and summary["group_kept_rate"] == 1.0
    assert summary["max_steps"] == STEPS and summary["relaxed_now"] == 5 and summary["mean_energy_drop_per_atom"] > 0
    assert json.loads((out / "relaxed" / "summary.json").read_text())["relaxed"] == 2
    assert (out / "relaxed" / "cif" / "nacl.cif").exists() and (out / "relaxed" / "cif" / "mos2.extxyz").exists()


def test_bad_rows_pass_through_with_a_note(relaxed_dir):
    out, rows, _, summary = relaxed_dir
    got = _relaxed(out)
    for sid, why in (("bad-cif", "CIF does not parse"), ("unparsed", "no crystal: ParseError"),
                     ("wrong-group", "not in its group: sg 221")):
        info = got[sid].extra["relax"]
        assert not info["relaxed"] and info["note"].startswith(why), (sid, info)
    wrong = got["wrong-group"]
    assert wrong.cif == rows[4]["cif"]  # unchanged
    assert set(summary["pass_reasons"]) == {"CIF does not parse", "no crystal", "not in its group"}


def test_rerun_relaxes_nothing_and_potentials_never_mix(relaxed_dir):
    out, _, settings, _ = relaxed_dir
    before = (out / "relaxed" / "samples.jsonl").read_bytes()
    again = run_relax_stage(out, settings)
    assert again["relaxed_now"] == 0 and again["samples"] == 5 and again["relaxed"] == 2
    assert (out / "relaxed" / "samples.jsonl").read_bytes() == before
    with pytest.raises(MixedEnergyScalesError, match="sevennet"):  # SevenNet's raw and CHGNet's corrected scales
        run_relax_stage(out, RefineSettings(relax=True, relax_mlff="chgnet", device="cpu"))


def test_settings_flags_and_recipe(capsys):
    assert RefineSettings().relax is False  # off by default
    assert load_generate_config(None, ["refine.relax=true", "refine.relax_steps=50"]).refine.relax_steps == 50
    with pytest.raises(RecipeError, match="relax-steps"):
        build(RefineSettings, {"relax_steps": -1})
    with pytest.raises(RecipeError, match="unknown MLFF"):
        build(RefineSettings, {"relax_mlff": "mace"})
    with pytest.raises(SystemExit):
        main(["refine", "--help"])
    shown = capsys.readouterr().out
    assert all(flag in shown for flag in ("--relax,", "--relax-mlff", "--relax-steps", "--relax-fmax"))
    assert main(["refine", "x.jsonl", "--out", "o", "--relax-fmax", "0"]) == 2
    assert capsys.readouterr().err.strip() == "xtallm refine: error: options: --relax-fmax must be > 0, got 0.0"


def test_refine_runs_the_stage_at_its_end(tmp_path):
    """`xtallm refine --relax` on rows refined before (nothing left to refine): the stage runs, the figures stay apart."""
    rows = [_row("nacl", _nacl(5.9), 3, 225)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "llm.jsonl").write_text(text)
    (tmp_path / "samples.jsonl").write_text(text)  # as an earlier `xtallm refine` left it
    assert main(["refine", str(tmp_path / "llm.jsonl"), "--out", str(tmp_path), "--relax", "--relax-steps", "2", "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["refined"] == 1 and summary["refined_now"] == 0  # the refiner's own figures, as without --relax
    assert summary["relax"]["relaxed"] == 1 and summary["relax"]["max_steps"] == 2
    assert (tmp_path / "samples.jsonl").read_text() == text  # the refined rows are never rewritten
    assert _relaxed(tmp_path)["nacl"].extra["relax"]["steps"] == 2
    # the refined crystal of an id changes (generate --redraw-invalid): its stale relaxation is redone, not kept
    changed = [_row("nacl", _nacl(5.95), 3, 225)]
    (tmp_path / "samples.jsonl").write_text(json.dumps(changed[0]) + "\n")
    again = run_relax_stage(tmp_path, RefineSettings(relax=True, relax_steps=1, device="cpu"))
    assert again["redone_changed"] == 1 and again["relaxed_now"] == 1 and again["samples"] == 1
    rows = list(read_samples(tmp_path / "relaxed" / "samples.jsonl"))
    assert len(rows) == 1 and rows[0].raw_cif == changed[0]["cif"] and rows[0].extra["relax"]["steps"] == 1
