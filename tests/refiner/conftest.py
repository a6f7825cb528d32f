"""Refiner fixtures: records of the repo's embedded example crystals (bulk + monolayers)."""

from __future__ import annotations

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session")
def example_records():
    import warnings

    import pandas as pd
    from pymatgen.core import Structure

    from xtallm.tokenization import get_format

    fmt = get_format("wyckoff")
    records = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, dim in (("bulk_examples.csv", 3), ("layer_examples.csv", 2)):
            table = pd.read_csv(REPO / "tokenization" / "examples" / name)
            column = "cif_layer_std" if "cif_layer_std" in table.columns else "cif"
            for cif in table[column]:
                records.append(fmt.record(Structure.from_str(cif, fmt="cif"), dim=dim))
    return [r for r in records if r.n_atoms <= 60]


@pytest.fixture(scope="session")
def example_arrays(example_records):
    from xtallm.refiner.crystal import record_to_arrays

    return [record_to_arrays(r) for r in example_records]
