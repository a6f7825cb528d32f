"""The property predictors (issue 29): CGCNN band gap and formation energy against DFT on the shipped examples,
loaded without unpickling anything but weights; exact predictors as the training prompts computed them; a request
scored against shuffled requests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from tests.conftest import REPO
from xtallm.pipelines.evaluation import properties as P
from xtallm.pipelines.samples import read_cif

EXAMPLES = REPO / "tokenization" / "examples" / "bulk_examples.csv"


@pytest.fixture(scope="module")
def examples():
    table = pd.read_csv(EXAMPLES)
    return table, [read_cif(c) for c in table["cif"]]


def test_cgcnn_predictors_beat_the_mean_by_far_on_real_crystals(examples):
    table, structures = examples
    dims = [3] * len(structures)
    gap = np.array(P.band_gap(structures, dims))
    energy = np.array(P.formation_energy(structures, dims))
    true_gap, true_energy = table["band_gap"].to_numpy(), table["formation_energy_per_atom"].to_numpy()
    assert np.abs(gap - true_gap).mean() < 0.5 * np.abs(true_gap - true_gap.mean()).mean()
    assert np.abs(energy - true_energy).mean() < 0.2 * np.abs(true_energy - true_energy.mean()).mean()
    assert (gap >= 0).all() and ((gap == 0) == (true_gap == 0)).mean() > 0.8  # the metal classifier sets metals to 0


def test_a_missing_structure_gets_no_prediction_and_the_rest_are_unchanged(examples):
    _, structures = examples
    alone = P.formation_energy(structures[:3], [3] * 3)
    mixed = P.formation_energy([structures[0], None, structures[1], structures[2]], [3] * 4)
    assert mixed[1] is None and np.allclose([mixed[0], mixed[2], mixed[3]], alone, atol=1e-5)


def test_exact_predictors_are_what_the_prompts_wrote():
    from xtallm.tokenization.conditions import structure_conditions

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    written = structure_conditions(nacl, 3, 225)
    assert P.PREDICTORS["density"].predict([nacl], [3]) == [written["density"]]
    assert P.PREDICTORS["hhi"].predict([nacl], [3]) == [written["hhi"]]
    assert P.PREDICTORS["n_atoms"].predict([nacl], [3]) == [8.0]
    assert P.PREDICTORS["density"].predict([nacl], [2]) == [None]  # a layer has no density (it depends on the vacuum)
    assert P.PREDICTORS["density"].within(4.0, 4.39) and not P.PREDICTORS["density"].within(4.0, 4.5)


def test_every_predictor_reports_its_held_out_error_or_is_exact():
    for key, predictor in P.PREDICTORS.items():
        held = predictor.validation()
        if predictor.source.startswith("exact"):
            assert held is None, key
        else:
            assert held["split"] == "mp20-heldout-v1" and held["n"] >= 900 and held["mae"] < held["mae_of_the_mean"], key
