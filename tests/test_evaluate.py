"""Evaluation metrics on real data with known answers."""

from __future__ import annotations

import json

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from xtallm.pipelines.evaluation import metrics as M
from xtallm.pipelines.cli import main
from xtallm.pipelines.evaluation import evaluate

from .conftest import read_shared


def _rows(cifs):
    return [{"id": f"s{i}", "ok": True, "cif": c, "group": None} for i, c in enumerate(cifs)]


def test_mp20_val_against_itself(tmp_path):
    df = read_shared("mp20/val.csv.xz", n=300, seed=1)
    ref = tmp_path / "ref.csv"
    df.to_csv(ref, index=False)
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in _rows(df.cif)))
    r = evaluate(samples, ref, [ref], num_proc=2, coverage=False)  # coverage: tests/test_coverage.py
    assert r["n_samples"] == 300 and r["parse_rate"] == 1.0
    assert r["struct_validity"] == 1.0
    assert r["novelty"] == 0.0
    assert r["uniqueness"] >= 0.98
    assert 0.84 <= r["comp_validity"] <= 0.96  # ~90% of MP-20 passes SMACT (CDVAE definition)
    assert r["p1_rate"] <= 0.05
    assert r["sg_jsd"] < 1e-9  # same crystals, same groups
    assert r["wdist_density"] < 0.3  # valid subset (~90%) vs all of them
    assert r["cov_recall"] is None and "cov_recall" in r["not_computed"]
    assert r["stable_rate"] is None and "hull" in r["not_computed"]["stable_rate"]


def test_broken_samples_count_as_invalid(tmp_path):
    df = read_shared("mp20/val.csv.xz", n=20, seed=2)
    ref = tmp_path / "ref.csv"
    df.to_csv(ref, index=False)
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    flat = Structure(Lattice([[4, 0, 0], [0, 4, 0], [0, 0, 0.001]]), ["Na"], [[0, 0, 0]])
    rows = _rows(list(df.cif[:8]) + [str(CifWriter(overlap)), str(CifWriter(flat))])
    rows.append({"id": "garbage", "ok": False, "cif": None, "group": None, "error": "ParseError: ..."})
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = evaluate(samples, ref, None, num_proc=1)
    assert r["n_samples"] == 11
    assert r["parse_rate"] in (9 / 11, 10 / 11)  # pymatgen may refuse the zero-volume CIF itself
    assert r["struct_validity"] == 8 / 11
    assert r["novelty"] is None and "novelty" in r["not_computed"]


def test_novelty_catches_perturbed_copies():
    df = read_shared("mp20/val.csv.xz", n=30, seed=3)
    refs = [Structure.from_str(c, fmt="cif") for c in df.cif]
    index = M.ReferenceIndex(refs)
    rng = np.random.default_rng(0)
    copies = []
    for s in refs[:10]:
        c = s.copy()
        c.perturb(0.05)
        c.scale_lattice(s.volume * rng.uniform(0.97, 1.03))
        copies.append(c)
    other = Structure(Lattice.cubic(7.7), ["Xe", "Kr"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert M.novelty_flags(copies + [other, None], index) == [False] * 10 + [True, False]


def test_cli(tmp_path, capsys):
    df = read_shared("mp20/val.csv.xz", n=12, seed=4)
    ref = tmp_path / "ref.csv"
    df.to_csv(ref, index=False)
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for i, c in enumerate(df.cif):
        (cifs / f"{i}.cif").write_text(c)
    assert main(["evaluate", str(cifs), "--reference", str(ref), "--train", str(ref), "--out", str(tmp_path / "e"), "--num-proc", "1"]) == 0
    assert "novelty=0.0000" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n_samples"] == 12 and (tmp_path / "e" / "summary.md").exists()


def test_wyckoff_jsd_conditions_and_plots(tmp_path):
    from xtallm import tokenization

    df = read_shared("mp20/val.csv.xz", n=40, seed=5)
    ref = tmp_path / "ref.csv"
    df.to_csv(ref, index=False)
    rows = []
    for i, cif in enumerate(df.cif):
        s = Structure.from_str(cif, fmt="cif")
        text = tokenization.encode(s)
        group = int(text.split("\n")[0].split()[1])
        rows.append({"id": f"s{i}", "ok": True, "cif": cif, "text": text, "group": group,
                     "conditions": {"sg": group if i % 2 else 225, "band_gap": 1.0}})
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = evaluate(samples, ref, None, num_proc=1, coverage=False)
    assert r["wyckoff_jsd"] < 1e-9
    expected = sum(1 for i, row in enumerate(rows) if i % 2 or row["group"] == 225) / 40
    assert r["conditional_accuracy"]["sg"]["rate"] == expected
    gap = r["property_requests"]["band_gap"]  # every sample asked for 1 eV: shuffling the requests changes nothing
    assert gap["n_requested"] == 40 and gap["n_scored"] == round(r["validity"] * 40) >= 30  # every valid sample is predicted
    assert abs(gap["shuffled_mae"] - gap["mae"]) < 1e-9 and gap["predictor_heldout"]["split"] == "mp20-heldout-v1"
    from xtallm.pipelines.evaluation import write_report

    write_report(r, tmp_path / "report")
    assert (tmp_path / "report" / "space_groups.png").stat().st_size > 1000
    assert (tmp_path / "report" / "property_requests.png").stat().st_size > 1000
    assert "![distributions](distributions.png)" in (tmp_path / "report" / "summary.md").read_text()


def test_novelty_against_cells_without_positions(tmp_path):
    """MP-20 train metadata has formula + cell only: a sample with that composition and cell is not novel."""
    df = read_shared("mp20/val.csv.xz", n=25, seed=6)
    structures = [Structure.from_str(c, fmt="cif") for c in df.cif]
    meta = []
    for s in structures[:20]:
        p = s.get_primitive_structure()
        meta.append({"formula": p.composition.formula.replace(" ", ""), "a": p.lattice.a, "b": p.lattice.b, "c": p.lattice.c,
                     "alpha": p.lattice.alpha, "beta": p.lattice.beta, "gamma": p.lattice.gamma})
    import pandas as pd

    lattices = M.LatticeIndex(pd.DataFrame(meta))
    empty = M.ReferenceIndex([])
    flags = M.novelty_flags(structures, empty, lattices)
    assert flags[:20] == [False] * 20
    assert sum(flags[20:]) >= 4  # the five others are (almost surely) new
    real = read_shared("mp20/train_meta_no_positions.csv.xz", n=500)
    index = M.LatticeIndex(real)
    assert len(index) == 500
    row = real.iloc[0]
    from pymatgen.core import Lattice

    twin = Structure(Lattice.from_parameters(row.a, row.b, row.c, row.alpha, row.beta, row.gamma), row.species.split(),
                     np.random.default_rng(0).random((row.num_atoms, 3)))
    assert index.contains(twin)  # random positions: no smaller cell, so the cell itself is compared


def test_monolayer_metrics(tmp_path):
    import pandas as pd

    from tests.conftest import FIXTURES

    known = pd.read_csv(FIXTURES / "known_monolayers.csv")
    rows = [{"id": r["name"], "ok": True, "cif": r.cif_layer_std, "dim": 2, "group": int(r.layer_group),
             "conditions": {"lg": int(r.layer_group)}} for _, r in known.iterrows()]
    # a broken layer: one atom floats 8 Å above the slab
    s = Structure.from_str(known.cif_layer_std[0], fmt="cif")
    s.append("S", s.cart_coords[0] + [0, 0, 8.0], coords_are_cartesian=True)
    rows.append({"id": "floating", "ok": True, "cif": str(CifWriter(s)), "dim": 2, "group": None, "conditions": {"lg": 78}})
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = tmp_path / "ref.csv"
    pd.DataFrame({"cif_layer_std": known.cif_layer_std}).to_csv(ref, index=False)  # a 2D table
    bulk = tmp_path / "bulk.csv"
    read_shared("mp20/val.csv.xz", n=5, seed=7).to_csv(bulk, index=False)
    r = evaluate(samples, ref, [ref, bulk], num_proc=1)
    assert r["novelty_2d"] == 1 / 6 and r["novelty"] == 1 / 6  # only the broken layer is new
    assert r["uniqueness_2d"] >= 5 / 6  # 2H- and 1T-MoS2 may match under the lenient pinned matcher
    assert 1.2 < r["wdist_thickness"] < 1.45  # same layers, but one is 8 Å thicker: 8/6 Å
    assert r["cov_recall"] == 1.0
    assert r["n_2d"] == 6 and r["layer_group_detected_rate"] == 1.0
    assert r["slab_contiguous_rate"] == 5 / 6 and r["vacuum_ok_rate"] == 1.0
    assert r["lg_match_rate"] == 5 / 6  # the floating atom breaks p-6m2
    assert 0 < r["mean_thickness"] < 10
    geometry = M.layer_geometry(Structure.from_str(known.cif_layer_std[3], fmt="cif"))  # graphene
    assert geometry["thickness"] < 0.01 and geometry["contiguous"]


def test_monolayers_matched_at_common_vacuum(tmp_path):
    """A monolayer with more vacuum than its reference copy is still the same crystal (not novel)."""
    import pandas as pd

    df = read_shared("twod/2dmatpedia_5914.csv.xz", n=20, seed=8)
    ref = tmp_path / "train2d.csv"
    df[["cif_layer_std"]].to_csv(ref, index=False)
    rows = []
    for i, cif in enumerate(df.cif_layer_std):
        s = M.with_vacuum(Structure.from_str(cif, fmt="cif"), vacuum=25.0)
        rows.append({"id": f"l{i}", "ok": True, "cif": str(CifWriter(s)), "dim": 2, "group": None})
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = evaluate(samples, ref, [ref], num_proc=1, coverage=False)
    assert r["novelty_2d"] == 0.0 and r["n_train_reference_2d"] == 20
    assert r["wdist_thickness"] < 1e-3  # same layers, only the vacuum differs
    assert pd.read_csv(ref).shape[0] == 20


def test_mixed_reference_tables_with_a_dim_column(tmp_path):
    """The references `pipelines.training_data` writes (`cif` + `dim`, bulk and 2D rows mixed, held-out
    monolayers with dim=2): monolayer rows are 2D references, so a copy of one is not novel."""
    import pandas as pd

    from xtallm.pipelines.training_data import TWOD_SPLIT, heldout_reference

    layers = read_shared("twod/2dmatpedia_5914.csv.xz", n=6, seed=9)
    bulk = read_shared("mp20/val.csv.xz", n=6, seed=9)
    train = tmp_path / "train_joint.csv"
    pd.concat([bulk[["cif"]].assign(dim=3), layers[["cif_layer_std"]].rename(columns={"cif_layer_std": "cif"}).assign(dim=2)]).to_csv(train, index=False)
    ref = tmp_path / "heldout2d.csv"
    layers[["cif_layer_std"]].rename(columns={"cif_layer_std": "cif"}).assign(dim=2).to_csv(ref, index=False)
    rows = [{"id": f"l{i}", "ok": True, "cif": cif, "dim": 2, "group": None} for i, cif in enumerate(layers.cif_layer_std)]
    rows += [{"id": f"b{i}", "ok": True, "cif": cif, "dim": 3, "group": None} for i, cif in enumerate(bulk.cif)]
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = evaluate(samples, ref, [train], num_proc=1, coverage=False)
    assert r["novelty_2d"] == 0.0 and r["novelty"] == 0.0 and r["n_train_reference_2d"] == 6
    assert r["wdist_thickness"] is not None and r["wdist_thickness"] < 1e-3  # thickness vs the held-out monolayers
    assert set(heldout_reference(TWOD_SPLIT)["dim"]) == {2}


def test_big_formula_bucket_filter_is_exact():
    """Novelty in a 60-polymorph bucket (carbon_24): the primitive-size filter gives the matcher's own answer."""
    cells = [Structure.from_str(c, fmt="cif") for c in read_shared("carbon_24/val.csv.xz", n=80, seed=3).cif]
    refs, others = cells[:60], cells[60:]
    rng = np.random.default_rng(0)
    copies = []
    for s in refs[:: 6]:
        c = s.copy()
        c.perturb(0.05, min_distance=0.0)
        c.apply_strain(rng.uniform(-0.02, 0.02, 3))
        copies.append(c)
    samples = copies + others
    index = M.ReferenceIndex(refs)
    brute = [any(index.matcher.fit(s, r) for r in refs) for s in samples]
    assert [index.contains(s) for s in samples] == brute
    assert all(brute[: len(copies)])  # every perturbed copy is found


def test_summary_never_contradicts_the_metrics(tmp_path):
    """Issue 27: metrics.json held formation_energy_conditioning (n 3, MAE 1.646) while summary.md said
    `no property predictor for formation_energy: not evaluated`. Now every property request with a predictor is
    scored (issue 29) and only what has none is listed as not computed."""
    from types import SimpleNamespace

    from xtallm.pipelines.evaluation.report import write_report
    from xtallm.pipelines.evaluation.suite import conditions, property_conditioning, property_requests

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    asked = [{"formation_energy": -1.0 - i} for i in range(3)] + [{"band_gap": 2.0}, {"mag_density": 0.1}]
    samples = [SimpleNamespace(conditions=c) for c in asked]
    details = [{"index": i, "formation_energy_per_atom": -1.5} for i in range(3)]
    ctx = SimpleNamespace(samples=samples, structures=[nacl] * 5, groups=[None] * 5, not_computed={}, valid=[True] * 5,
                          layer=[False] * 5, plots={}, result={"_stability_details": details}, stability=SimpleNamespace(mlff="sevennet"))
    result = {**conditions(ctx), **property_requests(ctx), **property_conditioning(ctx)}
    fe = result["formation_energy_conditioning"]
    assert fe["n_scored"] == 3 and abs(fe["mae"] - (0.5 + 0.5 + 1.5) / 3) < 1e-9
    assert result["property_requests"]["formation_energy"]["n_scored"] == 3 and result["property_requests"]["band_gap"]["n_scored"] == 1
    assert ctx.not_computed == {"property_requests": "mag_density: no predictor"}
    write_report({"n_samples": 5, **result, "not_computed": ctx.not_computed, "_plots": ctx.plots}, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "`formation_energy` requested vs achieved: MAE (eV/atom) | 0.8333 (of 3 relaxed" in summary
    assert "`band_gap` requested vs achieved: MAE (eV)" in summary and "held-out MAE" in summary
    assert "not evaluated" not in summary and "mag_density: no predictor" in summary


def test_a_tables_parsed_crystals_are_cached_and_read_back_the_same(tmp_path, monkeypatch):
    """Issue 30: a training table is parsed once; the cache holds plain arrays, and a table with a disordered site
    is parsed every time instead."""
    from xtallm.pipelines.evaluation import context

    df = read_shared("mp20/val.csv.xz", n=40, seed=3)
    table = tmp_path / "train.csv"
    df.to_csv(table, index=False)
    cifs = df.cif.tolist() + ["not a cif"]
    first = context.read_structures(table, "cif", cifs, 1)

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed again")

    monkeypatch.setattr(context, "parse_many", no_parsing)
    again = context.read_structures(table, "cif", cifs, 1)
    assert first[-1] is None and again[-1] is None and len(again) == len(first) == 41
    for a, b in zip(first[:-1], again[:-1]):
        assert a.composition == b.composition and [str(x) for x in a.species] == [str(x) for x in b.species]
        assert np.allclose(a.lattice.matrix, b.lattice.matrix) and np.allclose(a.frac_coords, b.frac_coords)
    monkeypatch.undo()

    disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("cif\n")
    calls = []
    monkeypatch.setattr(context, "parse_many", lambda c, w, d: calls.append(1) or [disordered])
    for _ in range(2):
        assert context.read_structures(mixed, "cif", [str(CifWriter(disordered))], 1)[0] is disordered
    assert len(calls) == 2


CALLS: list = []


def _counted_square(x):
    CALLS.append(x)
    return x * x


def test_repeated_crystal_texts_are_computed_once_with_the_same_results():
    """Issue 30, nothing computed twice: equal keys are computed once, every item gets the result, in order; repeated
    CIF texts are parsed and fingerprinted once and give what computing each row would."""
    from xtallm.pipelines.evaluation import coverage as C
    from xtallm.pipelines.evaluation.context import parse_many
    from xtallm.pipelines.parallel import Workers, map_ordered

    CALLS.clear()
    assert map_ordered(_counted_square, [3, 4, 3, 5, 4], Workers(1), keys=[3, 4, 3, 5, 4]) == [9, 16, 9, 25, 16]
    assert CALLS == [3, 4, 5]
    cifs = read_shared("mp20/val.csv.xz", n=4, seed=5).cif.tolist()
    rows = [cifs[0], cifs[1], cifs[0], None, cifs[2], cifs[1]]
    parsed = parse_many(rows, 1, "reading")
    assert parsed[3] is None and parsed[0] is not parsed[2] and parsed[0] == parsed[2]  # copies, not one shared object
    once = C.fingerprints(parsed, 1, keys=rows)
    each = C.fingerprints(parsed, 1)
    assert np.array_equal(once[0], each[0], equal_nan=True) and np.array_equal(once[1], each[1], equal_nan=True)
