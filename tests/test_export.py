"""`xtallm export --benchmark lemat-genbench`: the files LeMat-GenBench's loaders read, first N crystals in order."""

from __future__ import annotations

import csv
import json
import zipfile

from pymatgen.core import Structure

from xtallm.pipelines.cli import main
from xtallm.pipelines.samples import decode_sample


def test_lemat_genbench_export(tmp_path):
    texts = ["sg 225\na 5.640\nNa 4a\nCl 4b", "sg 225\na 5.6\nNa 24e", "sg 221\na 4.000\nCs 1a\nCl 1b", "lg 78\na 3.188\nMo 1b\nS 2f -1.559",
             "sg 229\na 3.300\nFe 2a"]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(decode_sample(f"p0-{i}", t).to_json()) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "sub"
    assert main(["export", str(path), "--benchmark", "lemat-genbench", "--size", "3", "--out", str(out)]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["n_structures"] == 3 and info["samples_read"] == 4 and info["samples_without_a_crystal"] == 1 and not info["relaxed"]
    with open(out / "structures.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["material_id"] for r in rows] == ["p0-0", "p0-2", "p0-3"]  # in order, the unparsed one skipped, none chosen
    assert Structure.from_dict(json.loads(rows[0]["structure"])).composition.reduced_formula == "NaCl"
    with zipfile.ZipFile(out / "cifs.zip") as z:
        names = sorted(z.namelist())
        assert names == ["p0-0.cif", "p0-2.cif", "p0-3.cif"]
        assert len(Structure.from_str(z.read("p0-2.cif").decode(), fmt="cif")) == 2
    assert main(["export", str(path), "--benchmark", "lemat-genbench", "--out", str(out)]) == 2  # never writes into a full folder
