"""A corpus of bad inputs, every command and the Python API: each is refused with one line that names the
input and the problem (exit status 2, no traceback), before any expensive work; nothing is lost.

docs/bad_inputs.md holds the table of these cases with the verdict of each on the main before them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Molecule, Structure

from tests.conftest import REPO
from xtallm.pipelines.cli import main

EXAMPLES = REPO / "tokenization" / "examples" / "bulk_examples.csv"
TINY_LLM = REPO / "configs" / "llm" / "tiny_test.yaml"
TINY_REFINER = REPO / "configs" / "refiner" / "tiny_test.yaml"
NACL = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bad"))


def make_files(d: Path) -> Path:
    """Small bad (and good) input files shared by the cases (benchmarks/bad_inputs_table.py writes them too)."""
    (d / "empty.csv").write_text("")
    (d / "nocif.csv").write_text("material_id,formula\nmp-1,NaCl\n")
    (d / "garbage.csv").write_bytes(b"\x00\x01\x02 not a table \xff\xfe")
    (d / "bad.yaml").write_text("train: [unclosed\n")
    (d / "list.yaml").write_text("- just\n- a list\n")
    (d / "unknown.yaml").write_text("sample:\n  temprature: 1.0\n")
    (d / "empty.jsonl").write_text("")
    (d / "notjson.jsonl").write_text("this is not json\n")
    (d / "folder").mkdir()
    (d / "nocifs").mkdir()
    (d / "foreign").mkdir()
    (d / "foreign" / "thesis.tex").write_text("do not delete me")
    (d / "a_file").write_text("x")
    (d / "conds_empty.csv").write_text("sg,band_gap\n")
    (d / "conds_bad.csv").write_text("sg,band_gap\n225,1.0\n14,-3\n")
    (d / "hull_bad.csv").write_text("id,energy\n1,2\n")
    good = {"id": "g0", "ok": True, "cif": NACL.to(fmt="cif"), "dim": 3, "group": 225}
    (d / "good.jsonl").write_text(json.dumps(good) + "\n")
    (d / "noid.jsonl").write_text(json.dumps({**good, "id": None}) + "\n" + json.dumps(good) + "\n")
    (d / "notadapter").mkdir()
    (d / "nomodel").mkdir()
    (d / "ref.csv").write_text("cif\n" + json.dumps(NACL.to(fmt="cif")) + "\n")
    return d


# (argv with {file} placeholders, substring the one-line error must hold)
CLI_CASES = [
    # data prepare
    (["data", "prepare", "{folder}/missing.csv", "--out", "{tmp}/o"], "no such file"),
    (["data", "prepare", "{folder}", "--out", "{tmp}/o"], "is a folder"),
    (["data", "prepare", "{nocif}", "--out", "{tmp}/o"], "no CIF column"),
    (["data", "prepare", "{empty}", "--out", "{tmp}/o"], "empty.csv"),
    (["data", "prepare", "{garbage}", "--out", "{tmp}/o"], "garbage.csv"),
    (["data", "prepare", str(EXAMPLES), "--out", "{foreign}"], "not empty and was not written by"),
    (["data", "prepare", str(EXAMPLES), "--out", "{a_file}"], "is a file"),
    (["data", "prepare", str(EXAMPLES), "--out", "{tmp}/o", "--max-input-atoms", "0"], "max_atoms"),
    (["data", "prepare", str(EXAMPLES), "--out", "{tmp}/o", "--symprec", "-1"], "symprec"),
    (["data", "prepare", str(EXAMPLES), "--out", "{tmp}/o", "--limit", "0"], "limit"),
    (["data", "prepare", str(EXAMPLES), "--out", "{tmp}/o", "--num-proc", "0"], "--num-proc"),
    (["data", "prepare", "./runs/nowhere.csv.xz", "--out", "{tmp}/o"], "no such file"),
    # sample
    (["sample", "--model", "{folder}/nomodel-here", "--out", "{tmp}/s"], "no such folder"),
    (["sample", "--model", "{nomodel}", "--out", "{tmp}/s"], "holds no model"),
    (["sample", "--model", "./runs/typo-model", "--out", "{tmp}/s"], "no such folder"),
    (["sample", "--adapter", "{folder}/missing-adapter", "--out", "{tmp}/s"], "--adapter"),
    (["sample", "--adapter", "{notadapter}", "--out", "{tmp}/s"], "no adapter_config.json"),
    (["sample", "--num-samples", "0", "--out", "{tmp}/s"], "at least 1"),
    (["sample", "--num-samples", "-1", "--out", "{tmp}/s"], "at least 1"),
    (["sample", "--condition", "sg=abc", "--out", "{tmp}/s"], "sg: 'abc' is not a number"),
    (["sample", "--condition", "colour=red", "--out", "{tmp}/s"], "unknown condition 'colour'"),
    (["sample", "--condition", "sg=225", "--condition", "dim=2", "--out", "{tmp}/s"], "dim=2 with sg"),
    (["sample", "--condition", "sg", "--out", "{tmp}/s"], "malformed condition"),
    (["sample", "--conditions-file", "{folder}/none.csv", "--out", "{tmp}/s"], "none.csv"),
    (["sample", "--conditions-file", "{conds_empty}", "--out", "{tmp}/s"], "no condition rows"),
    (["sample", "--conditions-file", "{conds_bad}", "--out", "{tmp}/s"], "line 3: band_gap=-3"),
    (["sample", "--backend", "server", "--out", "{tmp}/s"], "needs --server"),
    (["sample", "--temperature", "-1", "--out", "{tmp}/s"], "temperature must be >= 0"),
    (["sample", "--top-p", "0", "--out", "{tmp}/s"], "top_p"),
    (["sample", "--max-tokens", "0", "--out", "{tmp}/s"], "max_tokens"),
    (["sample", "--max-atoms", "0", "--out", "{tmp}/s"], "max_atoms"),
    (["sample", "--constrained", "--condition", "sg=225", "--condition", "formula=Na7Cl3", "--max-atoms", "8", "--out", "{tmp}/s"],
     "no crystal with at most 8 atoms"),
    (["sample", "--out", "{a_file}"], "a_file"),
    (["sample", "--condition", "band_gap=abc", "--out", "{tmp}/s"], "band_gap"),
    # generate
    (["generate", "--config", "{folder}/missing.yaml", "--out", "{tmp}/g"], "no such file"),
    (["generate", "--config", "{bad}", "--out", "{tmp}/g"], "not valid YAML"),
    (["generate", "--config", "{list}", "--out", "{tmp}/g"], "expected a mapping"),
    (["generate", "--config", "{unknown}", "--out", "{tmp}/g"], "config.sample.temprature: unknown setting"),
    (["generate", "--set", "sample.temperature=hot", "--out", "{tmp}/g"], "'hot' is not a number"),
    (["generate", "--set", "sample", "--out", "{tmp}/g"], "expected section.key=value"),
    (["generate", "--set", "nosection.x=1", "--out", "{tmp}/g"], "config.nosection: unknown setting"),
    (["generate", "--num-samples", "0", "--out", "{tmp}/g"], "at least 1"),
    (["generate", "--tau", "2", "--out", "{tmp}/g"], "tau must be in (0, 1]"),
    (["generate", "--checkpoint", "{folder}/nocheckpoint", "--out", "{tmp}/g"], "nocheckpoint"),
    (["generate", "--model", "{folder}/nomodel-here", "--out", "{tmp}/g"], "no such folder"),
    # refine
    (["refine", "{folder}/none.jsonl", "--out", "{tmp}/r"], "no such samples file"),
    (["refine", "{empty_jsonl}", "--out", "{tmp}/r"], "no samples"),
    (["refine", "{nocifs}", "--out", "{tmp}/r"], "no *.cif files"),
    (["refine", "{notjson}", "--out", "{tmp}/r"], "no samples"),
    (["refine", "{good}", "--out", "{tmp}/r", "--tau", "0"], "tau must be in (0, 1]"),
    (["refine", "{good}", "--out", "{tmp}/r", "--steps", "0"], "steps"),
    (["refine", "{good}", "--out", "{tmp}/r", "--batch-size", "0"], "batch_size"),
    (["refine", "{good}", "--out", "{tmp}/r", "--checkpoint", "{folder}"], "not a refiner checkpoint"),
    (["refine", "{good}", "--out", "{tmp}/r", "--checkpoint", "{folder}/none"], "none"),
    (["refine", "{good}", "--out", "{a_file}"], "a_file"),
    (["refine", "{good}", "--out", "{tmp}/r", "--group", "sg 231"], "--group 'sg 231'"),
    (["refine", "{good}", "--out", "{tmp}/r", "--group", "lg 81"], "--group 'lg 81'"),
    (["refine", "{good}", "--out", "{tmp}/r", "--group", "Pnma"], "--group 'Pnma'"),
    # evaluate
    (["evaluate", "{folder}/none.jsonl", "--reference", "{ref}", "--out", "{tmp}/e"], "no such samples file"),
    (["evaluate", "{good}", "--reference", "{folder}/none.csv", "--out", "{tmp}/e"], "no such reference table"),
    (["evaluate", "{good}", "--reference", "{nocif}", "--out", "{tmp}/e"], "no 'cif'"),
    (["evaluate", "{good}", "--reference", str(REPO / "configs/data/mp20-heldout-v1.csv"), "--out", "{tmp}/e"],
     "xtallm data reference mp20-heldout-v1 --data DIR --out FOLDER"),
    (["evaluate", "{good}", "--reference", "{garbage}", "--out", "{tmp}/e"], "garbage.csv"),
    (["evaluate", "{good}", "--reference", "{ref}", "--train", "{folder}/none.csv", "--out", "{tmp}/e"], "no such training table"),
    (["evaluate", "{good}", "--reference", "{ref}", "--hull", "{folder}/none.csv", "--out", "{tmp}/e"], "none.csv"),
    (["evaluate", "{good}", "--reference", "{ref}", "--hull", "{hull_bad}", "--out", "{tmp}/e"], "not a hull file"),
    (["evaluate", "{good}", "--reference", "{ref}", "--coverage-cutoffs", "a,b", "--out", "{tmp}/e"], "--coverage-cutoffs"),
    (["evaluate", "{good}", "--reference", "{ref}", "--relaxed", "{good}", "--out", "{tmp}/e"], "--relaxed needs --hull"),
    (["evaluate", "{good}", "--reference", "{ref}", "--num-proc", "0", "--out", "{tmp}/e"], "num_proc"),
    # relax
    (["relax", "{folder}/none.jsonl", "--out", "{tmp}/x"], "no such samples file"),
    (["relax", "{good}", "--out", "{a_file}"], "is a file; --out is a folder"),
    (["relax", "{good}", "--out", "{tmp}/x", "--relax-steps", "-1"], "--relax-steps must be >= 0"),
    (["relax", "{good}", "--out", "{tmp}/x", "--mlff", "chgnet", "--engine", "batched"], "batched engine runs SevenNet only"),
    (["relax", "{good}", "--out", "{tmp}/x", "--workers", "0"], "--workers must be >= 1"),
    # hull build
    (["hull", "build", "--structures", "{folder}/none.csv", "--out", "{tmp}/h"], "no such table"),
    (["hull", "build", "--structures", "{nocif}", "--out", "{tmp}/h"], "no 'cif' column"),
    (["hull", "build", "--structures", "{ref}", "--out", "{tmp}/h", "--relax-steps", "-1"], "steps"),
    (["hull", "build", "--structures", "{ref}", "--out", "{a_file}"], "is a file; --out is a folder"),
    # export
    (["export", "{folder}/none.jsonl", "--benchmark", "lemat-genbench", "--out", "{tmp}/x"], "no such samples file"),
    (["export", "{good}", "--benchmark", "lemat-genbench", "--out", "{foreign}"], "not empty"),
    (["export", "{good}", "--benchmark", "lemat-genbench", "--out", "{tmp}/x", "--size", "0"], "--size"),
]


def _fill(argv: list[str], files: Path, tmp: Path) -> list[str]:
    names = {p.stem: p for p in files.iterdir() if p.suffix != ".jsonl"}
    names.update({("empty_jsonl" if p.stem == "empty" else p.stem): p for p in files.iterdir() if p.suffix == ".jsonl"})
    names.update(folder=files / "folder", tmp=tmp)
    return [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]


@pytest.mark.parametrize("argv,message", CLI_CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CLI_CASES)])
def test_cli_refuses_bad_input_in_one_line(files, tmp_path, capsys, argv, message):
    argv = _fill(argv, files, tmp_path)
    before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own refusals (a wrong choice or type) exit 2 with a usage line
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(("xtallm", "usage:")) or "error" in ln]
    assert any(message in ln for ln in lines), err[-600:]
    assert {p: p.read_bytes() for p in files.rglob("*") if p.is_file() and p in before} == before  # nothing lost or changed


# (callable, exception, substring)
API_CASES = [
    (lambda: __import__("xtallm.tokenization", fromlist=["encode"]).encode(Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]])),
     "EncodeError", "expected a pymatgen Structure, got Molecule"),
    (lambda: __import__("xtallm.tokenization", fromlist=["encode"]).encode(Structure(Lattice.cubic(3), [], [])),
     "EncodeError", "no atoms"),
    (lambda: __import__("xtallm.tokenization", fromlist=["encode"]).encode(None), "EncodeError", "got NoneType"),
    (lambda: __import__("xtallm.tokenization", fromlist=["decode"]).decode(123), "ParseError", "expected text"),
    (lambda: __import__("xtallm.tokenization", fromlist=["decode"]).decode("sg 225\na 5.6\nNa 4a\nCl 4a"),
     "ParseError", "fixed position 4a is used twice"),
    (lambda: __import__("xtallm.tokenization", fromlist=["encode"]).encode(
        Structure(Lattice.cubic(5), ["Na", "Na"], [[0, 0, 0], [0.0012, 0, 0]])), "EncodeError", "Å apart"),
    (lambda: __import__("xtallm.tokenization", fromlist=["decode"]).decode("lg 78\na 3.188\nMo 1b\nS 2f -1.559", vacuum=-40),
     "ParseError", "vacuum"),
    (lambda: __import__("xtallm.tokenization", fromlist=["get_format"]).get_format("nope"), "ValueError", "unknown text format"),
    (lambda: __import__("xtallm.tokenization", fromlist=["validate_conditions"]).validate_conditions({"sg": 0}),
     "ConditionError", "sg=0 is out of range"),
    (lambda: __import__("xtallm.tokenization.data", fromlist=["prepare_dataset"]).prepare_dataset("/nonexistent/x.csv"),
     "FileNotFoundError", "no such file"),
    (lambda: __import__("xtallm.tokenization", fromlist=["decode"]).decode("sg 225\na nan\nNa 4a"), "ParseError", "not a number"),
    (lambda: __import__("xtallm.tokenization", fromlist=["decode"]).decode("sg 999\na 5\nNa 4a"), "ParseError", "1..230"),
]


@pytest.mark.parametrize("call,error,message", API_CASES, ids=[f"api-{i}" for i in range(len(API_CASES))])
def test_api_refuses_bad_input(call, error, message):
    with pytest.raises(Exception) as info:
        call()
    assert type(info.value).__name__ == error or error in [c.__name__ for c in type(info.value).__mro__], info.value
    assert message in str(info.value)


# entry points run as scripts: (argv after the script, substring)
SCRIPT_CASES = [
    ("llm/finetune.py", ["--config", "{folder}/missing.yaml"], "no such file"),
    ("llm/finetune.py", ["--config", str(TINY_LLM), "train.speed=3"], "config.train.speed: unknown setting"),
    ("llm/finetune.py", ["--config", str(TINY_LLM), "train.batch_size=lots"], "config.train.batch_size"),
    ("llm/finetune.py", ["--config", str(TINY_LLM), "data.train=[/nonexistent/train.csv]"], "/nonexistent/train.csv"),
    ("llm/finetune.py", ["--config", str(TINY_LLM), "model.base=/nonexistent/base", "model.method=lora"], "/nonexistent/base"),
    ("llm/finetune.py", ["--config", "{bad}"], "not valid YAML"),
    # a recipe whose data a clone does not have says how to make it (issue 27)
    ("llm/finetune.py", ["--config", str(REPO / "configs/llm/xtallm_lg_lora.yaml"), "data.train=[.devdata-not-here/lora_lg_train]"],
     "python -m xtallm.pipelines.training_data build"),
    ("llm/finetune.py", ["--config", str(REPO / "configs/llm/crystal_lm_small.yaml"), "data.train=[../not-here/mp20/val.csv.xz]"],
     "xtallm data prepare TABLE --out FOLDER"),
    ("refiner/train.py", ["--config", "{folder}/missing.yaml"], "no such file"),
    ("refiner/train.py", ["--config", str(TINY_REFINER), "train.nope=1"], "unknown setting"),
    ("refiner/train.py", ["--config", str(TINY_REFINER), "data.train=[/nonexistent/r.csv]"], "/nonexistent/r.csv"),
    ("refiner/train.py", ["--config", str(REPO / "configs/refiner/default.yaml"), "data.train=[../not-here/val.csv.xz]"],
     "xtallm data prepare TABLE --out FOLDER"),
]


AS_SCRIPT = {min(i for i, c in enumerate(SCRIPT_CASES) if c[0] == script) for script, _, _ in SCRIPT_CASES}


@pytest.mark.parametrize("case", range(len(SCRIPT_CASES)), ids=[f"script-{i}" for i in range(len(SCRIPT_CASES))])
def test_entry_point_scripts_refuse_bad_recipes(files, tmp_path, capsys, case):
    """The first case of each script runs it as a script (`python llm/finetune.py ...`); the others call the
    same `main(argv)` in this process (a new interpreter per case costs ~15 s of imports)."""
    script, argv, message = SCRIPT_CASES[case]
    argv = _fill(argv, files, tmp_path) + [f"train.output_dir={tmp_path / 'run'}"]
    if case in AS_SCRIPT:
        out = subprocess.run([sys.executable, str(REPO / script), *argv], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        code, err = out.returncode, out.stderr
    else:
        from xtallm.llm.finetune import main as finetune_main
        from xtallm.refiner.train import main as refiner_main

        code = (finetune_main if script == "llm/finetune.py" else refiner_main)(argv)
        err = capsys.readouterr().err
    assert code == 2, err[-1500:]
    assert "Traceback" not in err and message in err, err[-1500:]
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any work


def test_refine_row_without_id_is_reported_and_the_rest_refined(files, tmp_path, capsys):
    assert main(["refine", str(files / "noid.jsonl"), "--out", str(tmp_path / "r"), "--steps", "4"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["refined"] == 1 and summary["unreadable_input_rows"]["n_skipped"] == 1
    assert "no 'id'" in summary["unreadable_input_rows"]["skipped"][0]["reason"]
    out = capsys.readouterr().out  # the skip is on the console too, not only in the files (issue 27)
    assert "1 input row skipped: noid.jsonl row 1: no 'id'" in out and out.count("noid.jsonl row") == 1


def test_hull_build_counts_unreadable_known_structures(files, tmp_path):
    import pandas as pd

    from xtallm.pipelines.evaluation.hull import _known
    from xtallm.pipelines.samples import ReadReport

    pd.DataFrame({"cif": [NACL.to(fmt="cif"), "data_broken\n_cell_length_a 1\n"]}).to_csv(tmp_path / "known.csv", index=False)
    report = ReadReport()
    known = list(_known([str(tmp_path / "known.csv")], None, report=report))
    assert len(known) == 1 and len(report) == 1 and report.skipped[0][0] == "known.csv line 3"


def test_evaluate_counts_torn_and_foreign_lines(files, tmp_path, capsys):
    good = (files / "good.jsonl").read_text()
    path = tmp_path / "s.jsonl"
    path.write_text(good + "not json\n" + "[1, 2]\n" + good.replace('"g0"', '"g1"')[: len(good) // 2])
    assert main(["evaluate", str(path), "--reference", str(files / "ref.csv"), "--no-coverage", "--num-proc", "1", "--out",
                 str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n_samples"] == 1 and metrics["inputs"]["samples_skipped"]["n_skipped"] == 3
    assert "3 sample line(s) could not be read" in (tmp_path / "e" / "summary.md").read_text()
    assert "3 input rows skipped: s.jsonl:2: not JSON" in capsys.readouterr().out


@contextlib.contextmanager
def _small_disk(path: Path, options: str):
    """A 64 KiB tmpfs at `path` (root only), unmounted afterwards."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options},size=64k", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip(f"cannot mount a {options} tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_full_disk_is_one_line(files, tmp_path, capsys):
    """A full disk (a 64 KiB tmpfs) mid-write: one line naming the problem, no traceback."""
    with _small_disk(tmp_path / "disk", "rw") as disk:
        big = files / "big.jsonl"
        row = json.loads((files / "good.jsonl").read_text())
        big.write_text("".join(json.dumps({**row, "id": f"g{i}"}) + "\n" for i in range(60)))
        assert main(["refine", str(big), "--out", str(disk / "r"), "--steps", "2"]) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and "Traceback" not in err
        big.unlink()


def test_two_runs_on_one_out_are_refused(files, tmp_path):
    from xtallm.pipelines.samples import JsonlWriter

    with JsonlWriter(tmp_path / "samples.jsonl"):
        code = ("import sys\nfrom xtallm.pipelines.cli import main\n"
                f"sys.exit(main(['refine', {str(files / 'good.jsonl')!r}, '--out', {str(tmp_path)!r}, '--steps', '4']))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "another xtallm run is writing it" in out.stderr, out.stderr[-800:]
    assert not (tmp_path / "samples.jsonl.lock").exists()  # released with the writer


def test_read_only_output_folder_is_one_line(files, tmp_path, capsys):
    """An output folder on a read-only file system (root ignores chmod, so a read-only tmpfs)."""
    with _small_disk(tmp_path / "ro", "ro") as disk:
        for argv in (["refine", str(files / "good.jsonl"), "--out", str(disk / "r"), "--steps", "2"],
                     ["data", "prepare", str(EXAMPLES), "--out", str(disk / "d")],
                     ["export", str(files / "good.jsonl"), "--benchmark", "lemat-genbench", "--out", str(disk / "x")]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            errors = [line for line in err.splitlines() if "error:" in line]
            assert len(errors) == 1 and "Read-only file system" in errors[0] and "Traceback" not in err, err


def test_evaluate_against_the_held_out_reference_built_from_the_data(files, tmp_path):
    """Issue 27: `--reference configs/data/mp20-heldout-v1.csv` (ids only) failed on a fresh clone; the error now names
    `xtallm data reference`, which builds the split's structures from the source tables (../shared/data here)."""
    import pandas as pd

    from tests.conftest import shared_file

    data = shared_file("mp20/val.csv.xz").parents[1]
    assert main(["data", "reference", "mp20-heldout-v1", "--data", str(data), "--out", str(tmp_path / "ref")]) == 0
    reference = tmp_path / "ref" / "mp20-heldout-v1-reference.csv.xz"
    assert main(["evaluate", str(files / "good.jsonl"), "--reference", str(reference), "--no-coverage", "--num-proc", "2",
                 "--out", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    split = pd.read_csv(REPO / "configs/data/mp20-heldout-v1.csv")
    assert metrics["inputs"]["reference_rows"] == len(split) and metrics["inputs"]["reference_unreadable"] == 0
