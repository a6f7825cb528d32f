"""Every command the README shows exists as written (issue 27: a documented `xtallm release` did not exist, and
`generate --steps` changed meaning), and the blocks that run in seconds run, from a scratch folder."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def commands(program: str) -> list[list[str]]:
    """Each README line that runs `program`, as argv: comments cut, continuations joined, `[--opt X]` kept
    without its brackets, and `a|b` choices read as their first alternative."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip().rstrip("&").strip()
            if not line.startswith(program + " "):
                continue
            words = shlex.split(line.replace("[", " ").replace("]", " "))
            found.append([w.split("|")[0] if "|" in w and not w.startswith("|") else w for w in words[1:]])
    return found


XTALLM = commands("xtallm")


def test_the_readme_shows_the_main_commands():
    shown = {argv[0] for argv in XTALLM}
    assert {"generate", "sample", "refine", "evaluate", "relax", "hull", "export", "data", "serve", "push", "improve"} <= shown, shown


@pytest.mark.parametrize("argv", XTALLM, ids=[" ".join(a[:2]) for a in XTALLM])
def test_every_xtallm_line_parses(argv):
    """The subcommand and every flag exist, and each value has the type the flag takes."""
    from xtallm.pipelines.cli import _command, build_parser

    try:
        build_parser(_command(argv)).parse_args(argv)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"README line `xtallm {' '.join(argv)}` does not parse (exit {exc.code})")


def test_every_recipe_and_shipped_file_the_readme_names_exists():
    named = set(re.findall(r"(?<![\w/])((?:configs|llm|refiner|tokenization|benchmarks)/[\w./-]+\.(?:yaml|py|csv|xz|json))", README))
    assert len(named) >= 10
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert missing == []


def test_every_module_the_readme_runs_exists():
    import importlib.util

    modules = set(re.findall(r"(?:python|launch)[^\n]*? -m (xtallm[\w.]+)", README))
    assert modules and all(importlib.util.find_spec(m) is not None for m in modules), modules


def test_the_python_block_runs(tmp_path):
    """The tokenization example, on a monolayer the repo ships instead of the reader's MoS2.cif."""
    from pymatgen.core import Structure

    code = blocks("python")[0]
    layer = (REPO / "tokenization" / "examples" / "layer_examples.csv")
    import pandas as pd

    cif = pd.read_csv(layer)["cif_layer_std" if "cif_layer_std" in pd.read_csv(layer, nrows=1) else "cif"].iloc[0]
    Structure.from_str(cif, fmt="cif").to(filename=str(tmp_path / "MoS2.cif"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-1500:]
    assert "line 3: site 1 (Na 24e)" in run.stdout


def test_data_prepare_runs_as_shown_from_another_folder(tmp_path):
    """The README command with the shipped example table, run as a user would (another working folder)."""
    xtallm = [sys.executable, "-m", "xtallm.pipelines.cli"]
    prepare = next(a for a in XTALLM if a[:2] == ["data", "prepare"])
    argv = [str(REPO / "tokenization/examples/bulk_examples.csv") if w == "path/or/url/or/owner/name" else w for w in prepare]
    run = subprocess.run([*xtallm, *argv], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0 and "rows encoded" in run.stdout, run.stderr[-1500:]
    assert (tmp_path / "data" / "mp20_val" / "dataset_info.json").exists()


@pytest.mark.slow
def test_a_recipe_trains_on_the_shipped_examples_as_shown(tmp_path):
    """The README's fresh-clone fine-tuning block, with 2 steps instead of 20, run from another folder."""
    block = next(b for b in blocks("bash") if "data.train=[data/examples]" in b)
    prepare, finetune = [shlex.split(line) for line in block.strip().splitlines()]
    for argv in (prepare, finetune):
        argv = [str(REPO / w) if (REPO / w).is_file() else w for w in argv]  # the repo's files, the user's folder
        argv = [w.replace("train.max_steps=20", "train.max_steps=2") for w in argv]
        argv = [sys.executable, "-m", "xtallm.pipelines.cli", *argv[1:]] if argv[0] == "xtallm" else [sys.executable, *argv[1:]]
        quick = ["train.sample_every=0", "train.eval_every=2", "train.batch_size=8"] if "finetune" in argv[1] else []
        run = subprocess.run([*argv, *quick],
                             capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "runs" / "try" / "metrics.json").exists() and "2 steps in" in run.stdout


def _readme_line(start: str) -> list[str]:
    line = next(a for a in XTALLM if " ".join(a).startswith(start))
    return line


@pytest.mark.slow
def test_refine_and_evaluate_run_as_shown(tmp_path):
    """The README's reference, refine and evaluation lines (the last without its optional [..] parts), on samples the
    test writes to samples/samples.jsonl, from another folder; the reference is built from ../shared/data."""
    import json as _json

    from pymatgen.core import Lattice, Structure

    samples = tmp_path / "samples"
    samples.mkdir()
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rows = [{"id": f"s{i}", "ok": True, "cif": nacl.to(fmt="cif"), "dim": 3, "group": 225,
             "text": "sg 225\na 5.640\nNa 4a\nCl 4b"} for i in range(3)]
    (samples / "samples.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    from tests.conftest import shared_file

    data = shared_file("mp20/val.csv.xz").parents[1]
    reference = [str(data) if w == "DIR" else w for w in _readme_line("data reference mp20-heldout-v1")]
    refine = _readme_line("refine samples/samples.jsonl")
    # the evaluation line without its optional parts (they name the reader's own tables)
    line = next(l for l in README.splitlines() if l.startswith("xtallm evaluate samples/samples.jsonl --reference"))
    full = line + " " + next(l for l in README.splitlines() if "--train-meta" in l and l.strip().startswith("["))
    evaluate = shlex.split(re.sub(r"\[[^\]]*\]", " ", full.replace("\\", " ")))[1:]
    for argv in (reference, refine, evaluate):
        argv = [str(REPO / w) if (REPO / w).is_file() else w for w in argv]
        run = subprocess.run([sys.executable, "-m", "xtallm.pipelines.cli", *argv, *(["--no-coverage"] if argv[0] == "evaluate" else [])],
                             capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert run.returncode == 0, (argv, run.stderr[-1500:])
    assert len((tmp_path / "refined" / "samples.jsonl").read_text().splitlines()) == 3
    assert _json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_samples"] == 3
