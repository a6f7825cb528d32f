"""MLFF stability: a small hull built in the test, e_above_hull of known stable crystals ~ 0."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from xtallm.pipelines.evaluation import stability as S
from xtallm.pipelines.cli import main
from xtallm.pipelines.evaluation import evaluate
from xtallm.pipelines.evaluation.hull import HullJob, HullOptions, build_hull

from .conftest import read_shared

# few-atom crystals that are on the Materials Project hull (e_above_hull 0 in MP-20)
STABLE = ["mp-22862", "mp-149"]  # rock-salt NaCl (2 atoms), diamond Si (2 atoms)


@pytest.fixture(scope="module")
def small_hull(tmp_path_factory):
    data = pd.concat([read_shared("mp20/val.csv.xz"), read_shared("mp20/train_partial.csv.xz")])
    known = data[data.material_id.isin(STABLE)]
    assert len(known) == 2
    folder = tmp_path_factory.mktemp("hull")
    known.to_csv(folder / "known.csv", index=False)
    out = folder / "hull"  # a folder: hull.csv in it
    # Na and Cl have no elemental structure among the known ones: ASE references are added
    summary = build_hull(HullJob([str(folder / "known.csv")], str(out), HullOptions(mlff="sevennet", steps=30, device="cpu")))
    assert summary["rows"] == 4 and summary["failed_now"] == 0
    return folder, known, out


def test_hull_file_and_resume(small_hull):
    folder, _, out = small_hull
    table = pd.read_csv(out / "hull.csv")
    assert set(table["id"]) == {*STABLE, "element:Na", "element:Cl"}
    assert set(table["mlff"]) == {"sevennet"} and set(table["scheme"]) == {"MP2020"}
    nacl = table[table["id"] == "mp-22862"].iloc[0]
    assert nacl["energy_corrected"] < nacl["energy"] - 0.3  # MP2020 chloride correction applied once
    again = build_hull(HullJob([str(folder / "known.csv")], str(out), HullOptions(mlff="sevennet", steps=30, device="cpu")))
    assert again["computed_now"] == 0 and again["rows"] == 4  # resumed: nothing recomputed
    with pytest.raises(S.MixedEnergyScalesError):
        build_hull(HullJob([str(folder / "known.csv")], str(out), HullOptions(mlff="chgnet")))


def test_known_stable_crystals_sit_on_the_hull(small_hull, tmp_path):
    _, known, out = small_hull
    rows = [{"id": mid, "ok": True, "cif": cif, "group": None} for mid, cif in zip(known.material_id, known.cif)]
    # CsCl-type NaCl: a real polymorph above rock salt; symmetry keeps it CsCl-type during relaxation
    cscl = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rows.append({"id": "NaCl-B2", "ok": True, "cif": str(CifWriter(cscl)), "group": None})
    rows.append({"id": "garbage", "ok": False, "cif": None, "group": None})
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = tmp_path / "ref.csv"
    known.to_csv(ref, index=False)
    assert main(["evaluate", str(samples), "--reference", str(ref), "--train", str(ref), "--hull", str(out), "--mlff", "sevennet",
                 "--relax-steps", "40", "--device", "cpu", "--no-coverage", "--num-proc", "1", "--out", str(tmp_path / "e")]) == 0
    details = pd.read_csv(tmp_path / "e" / "stability.csv").set_index("id")
    for mid in STABLE:
        assert abs(details.loc[mid, "e_above_hull"]) < 0.03, details.loc[mid].to_dict()
    assert details.loc["NaCl-B2", "e_above_hull"] > 0.02
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n_relaxed"] == 3 and metrics["n_samples"] == 4
    assert metrics["sun_rate"] == 0.0  # the stable ones are not novel (they are the training set)
    assert metrics["stable_rate"] <= 2 / 4 and metrics["metastable_rate"] >= 2 / 4
    assert (tmp_path / "e" / "e_above_hull.png").exists()
    assert "over all 4 samples" in (tmp_path / "e" / "summary.md").read_text()


def test_mixing_potentials_refused(small_hull, tmp_path):
    _, known, out = small_hull
    with pytest.raises(S.MixedEnergyScalesError, match="sevennet"):
        evaluate(tmp_path / "unused.jsonl", out, hull=out, mlff="chgnet")
    table = pd.read_csv(out / "hull.csv")
    table.loc[0, ["mlff", "scheme"]] = ["chgnet", S.MLFFS["chgnet"]]
    mixed = tmp_path / "mixed.csv"
    table.to_csv(mixed, index=False)
    with pytest.raises(S.MixedEnergyScalesError, match="mixes"):
        S.Hull(mixed)


def test_chgnet_is_never_corrected_again():
    s = Structure(Lattice.cubic(4.2), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert S.corrected_energy("chgnet", s, -15.0) == (-15.0, None)
    corrected, _ = S.corrected_energy("sevennet", s, -15.0)
    assert corrected < -15.0  # oxide + Fe GGA/GGA+U mixing corrections


def test_failed_relaxation_is_recorded_not_raised():
    s = Structure(Lattice.cubic(3.0), ["Na"], [[0, 0, 0]])
    r = S.relax(s, object(), steps=5)  # not a calculator: ASE raises inside, the batch goes on
    assert r.energy is None and r.error


def _sample_rows(known) -> list[dict]:
    rows = [{"id": mid, "ok": True, "cif": cif, "group": None} for mid, cif in zip(known.material_id, known.cif)]
    cscl = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rows.append({"id": "NaCl-B2", "ok": True, "cif": str(CifWriter(cscl)), "group": None})
    rows.append({"id": "garbage", "ok": False, "cif": None, "group": None})
    return rows


def test_relax_in_workers_resumes_and_evaluate_reads_it(small_hull, tmp_path):
    _, known, out = small_hull
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in _sample_rows(known)))
    relaxed = tmp_path / "relaxed"  # a folder: relaxed.jsonl in it
    args = ["relax", str(samples), "--out", str(relaxed), "--relax-steps", "40", "--device", "cpu", "--workers", "2"]
    assert main(args) == 0
    rows = {r["id"]: r for r in map(json.loads, (relaxed / "relaxed.jsonl").read_text().splitlines())}
    assert set(rows) == {*STABLE, "NaCl-B2"} and all(r["relaxed_cif"] and r["energy"] < 0 for r in rows.values())
    assert main(args) == 0 and len((relaxed / "relaxed.jsonl").read_text().splitlines()) == 3  # resumed: nothing relaxed twice
    ref = tmp_path / "ref.csv"
    known.to_csv(ref, index=False)
    common = ["--reference", str(ref), "--train", str(ref), "--hull", str(out), "--no-coverage", "--num-proc", "1"]
    assert main(["evaluate", str(samples), *common, "--relaxed", str(relaxed), "--out", str(tmp_path / "e")]) == 0
    details = pd.read_csv(tmp_path / "e" / "stability.csv").set_index("id")
    for mid in STABLE:
        assert abs(details.loc[mid, "e_above_hull"]) < 0.03
    assert details.loc["NaCl-B2", "e_above_hull"] > 0.02
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n_relaxed"] == 3
    with pytest.raises(S.MixedEnergyScalesError, match="sevennet"):  # relaxations of one potential, hull of another
        evaluate(samples, ref, hull=out, mlff="chgnet", relaxed=relaxed)
    assert main(["relax", str(samples), "--out", str(relaxed), "--mlff", "chgnet"]) == 2  # not resumed with another potential


def test_chgnet_end_to_end(tmp_path):
    """CHGNet: hull, relaxations and e_above_hull on its own (MP2020-compatible) scale, no second correction."""
    data = pd.concat([read_shared("mp20/val.csv.xz"), read_shared("mp20/train_partial.csv.xz")])
    known = data[data.material_id.isin(STABLE)]
    known.to_csv(tmp_path / "known.csv", index=False)
    hull = tmp_path / "hull"
    assert main(["hull", "build", "--structures", str(tmp_path / "known.csv"), "--mlff", "chgnet", "--relax-steps", "30",
                 "--device", "cpu", "--out", str(hull)]) == 0
    table = pd.read_csv(hull / "hull.csv")
    assert set(table["scheme"]) == {"chgnet-native-MP2020"} and (table["energy_corrected"] == table["energy"]).all()
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in _sample_rows(known)))
    relaxed = tmp_path / "relaxed"
    assert main(["relax", str(samples), "--out", str(relaxed), "--mlff", "chgnet", "--relax-steps", "40", "--device", "cpu"]) == 0
    assert main(["evaluate", str(samples), "--reference", str(tmp_path / "known.csv"), "--hull", str(hull), "--relaxed",
                 str(relaxed), "--no-coverage", "--num-proc", "1", "--out", str(tmp_path / "e")]) == 0
    details = pd.read_csv(tmp_path / "e" / "stability.csv").set_index("id")
    for mid in STABLE:
        assert abs(details.loc[mid, "e_above_hull"]) < 0.03, details.loc[mid].to_dict()
    assert details.loc["NaCl-B2", "e_above_hull"] > 0.02


def test_mlff_artefact_energies_count_as_failed(tmp_path):
    """An energy far below any real crystal's (atoms driven into each other) is a failed relaxation, also when read back."""
    from xtallm.pipelines.evaluation.relax import cached_relaxation

    assert S.unphysical_energy(-2226.0) and S.unphysical_energy(-9.2) is None and S.unphysical_energy(None) is None
    cif = str(CifWriter(Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])))
    row = {"id": "x", "energy": -4452.0, "energy_per_atom": -2226.0, "steps": 250, "converged": False, "relaxed_cif": cif}
    r = cached_relaxation(row)
    assert r.energy is None and "artefact" in r.error
    assert cached_relaxation({**row, "energy": -6.0, "energy_per_atom": -3.0}).energy == -6.0


def test_mp_anchored_hull_and_formation_energy(small_hull, tmp_path):
    """The matbench-discovery style hull moves each known phase by MP's own e_above_hull; formation energies use
    the same potential's elemental references; the hull reports how many samples' chemical systems it holds."""
    _, known, out = small_hull
    mp = tmp_path / "mp.csv"
    pd.DataFrame({"material_id": STABLE, "energy_above_hull_eV_per_atom_MP": [0.0, 0.05]}).to_csv(mp, index=False)
    plain, anchored = S.Hull(out), S.Hull(out, anchor=str(mp))
    si = next(e for e in plain.entries if e.entry_id == "mp-149")
    si_anchored = next(e for e in anchored.entries if e.entry_id == "mp-149")
    assert abs(si.energy_per_atom - si_anchored.energy_per_atom - 0.05) < 1e-9
    assert anchored.anchor["references_anchored"] == 2
    nacl = next(e for e in plain.entries if e.entry_id == "mp-22862")
    fe = plain.formation_energy(nacl.composition, nacl.energy)
    assert -5.0 < fe < -1.0  # NaCl: about -2 eV/atom; the Na and Cl references are SevenNet energies too
    from pymatgen.core import Composition

    assert plain.chemical_systems_covered([Composition("NaCl"), Composition("Si"), Composition("NaSi")]) == 2 / 3
    # element pairs with a binary compound: Na-Cl yes, Na-Si no; NaSiCl has one of three pairs
    assert plain.binary_systems_covered([Composition("NaCl"), Composition("NaSi")]) == 0.5
    assert abs(plain.binary_systems_covered([Composition("NaSiCl")]) - 1 / 3) < 1e-12
    rows = [{"id": "s0", "ok": True, "cif": known.cif.iloc[0], "group": None, "conditions": {"formation_energy": -2.0}}]
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = evaluate(samples, _ref(known, tmp_path), None, num_proc=1, coverage=False, hull=str(out),
                 hull_anchor=str(mp), relax_steps=20, device="cpu")
    assert r["hull_entries"] == 4 and r["hull_chemsys_coverage"] == 1.0 and "metastable_rate_mp_anchored" in r
    assert r["n_far_below_hull"] == 0 and 0.0 <= r["hull_binary_coverage"] <= 1.0
    assert r["formation_energy_conditioning"]["n_scored"] == 1 and r["formation_energy_conditioning"]["mae"] < 3


def _ref(known, tmp_path):
    path = tmp_path / "ref.csv"
    known.to_csv(path, index=False)
    return path


def test_energies_above_any_crystal_count_as_failed():
    assert S.unphysical_energy(6.5e6) and "above" in S.unphysical_energy(6.5e6)
    assert S.unphysical_energy(-3.0) is None and S.unphysical_energy(None) is None


def test_relax_options_name_the_bad_setting():
    from xtallm.pipelines.evaluation.relax import RelaxOptions

    with pytest.raises(ValueError, match=r"^--batch-atoms must be >= 1, got 0$"):
        RelaxOptions(batch_atoms=0).check()
    RelaxOptions().check()
