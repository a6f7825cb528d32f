"""The package's seams: one installed namespace, pinned token ids, settings declared once, typed rows."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from tests.conftest import REPO

TOP_LEVEL = ("llm", "pipelines", "refiner", "tokenization", "configs")


def test_nothing_is_installed_under_a_taken_top_level_name(tmp_path):
    """`llm`, `pipelines`, ... are PyPI names: xtallm installs only `xtallm.*` (checked away from the source tree)."""
    code = (
        "import importlib.util, importlib.metadata, json\n"
        f"names = {TOP_LEVEL!r}\n"
        "found = {n: importlib.util.find_spec(n) is not None for n in names}\n"
        "ours = {n: importlib.util.find_spec('xtallm.' + n) is not None for n in names}\n"
        "files = [str(f) for f in importlib.metadata.distribution('xtallm').files or []]\n"
        "tops = sorted({f.split('/')[0] for f in files if not f.startswith(('xtallm-', '__editable__', '..'))})\n"
        "print(json.dumps({'found': found, 'ours': ours, 'tops': tops}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert not any(report["found"].values()), report["found"]
    assert all(report["ours"].values()), report["ours"]
    assert set(report["tops"]) <= {"xtallm", "__pycache__"}, report["tops"]


def test_no_sys_path_tricks_in_entry_points():
    for script in ("llm/finetune.py", "llm/merge.py", "refiner/train.py"):
        assert "sys.path.insert" not in (REPO / script).read_text(), script


def test_token_ids_are_pinned_and_new_conditions_append():
    from xtallm.llm.model import default_model_path
    from xtallm.tokenization import conditions as C
    from xtallm.tokenization.tokenizer import build_crystal_tokenizer, crystal_vocabulary, pinned_vocabulary

    shipped = json.loads((default_model_path() / "tokenizer.json").read_text())["model"]["vocab"]
    assert list(pinned_vocabulary()) == sorted(shipped, key=shipped.get)  # the shipped model's ids, in the pinned file
    tok = build_crystal_tokenizer()
    assert tok.convert_tokens_to_ids(["<pad>", "sg", "Na", "Cl"]) == [shipped["<pad>"], shipped["sg"], shipped["Na"], shipped["Cl"]]
    before = crystal_vocabulary()
    spec = C.ConditionSpec("zz_new_property", "float", 0, 1)
    C.SPECS[spec.key] = spec
    C.ORDER.append(spec.key)
    try:
        import xtallm.tokenization.tokenizer as T

        T.CONDITION_KEYS = C.ORDER
        after = crystal_vocabulary()
    finally:
        del C.SPECS[spec.key]
        C.ORDER.remove(spec.key)
    assert after[: len(before)] == before and after[-1] == "zz_new_property"


def test_hf_sample_does_not_depend_on_its_batch():
    """A request's text is drawn from its own seed: the same alone as next to other prompts (the module's promise)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from xtallm.llm.hf_generate import generate_ids
    from xtallm.tokenization.tokenizer import build_crystal_tokenizer

    tok = build_crystal_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    prompt = [tok.bos_token_id] + tok("sg=225\n", add_special_tokens=False)["input_ids"]
    other = [tok.bos_token_id] + tok("dim=2 lg=78 elements=Mo,S\n", add_special_tokens=False)["input_ids"]
    alone = generate_ids(model, tok, [prompt], max_new_tokens=24, seeds=[7])
    batched = generate_ids(model, tok, [other, prompt, other], max_new_tokens=24, seeds=[1, 7, 2])
    assert batched[1] == alone[0]
    assert generate_ids(model, tok, [prompt], max_new_tokens=24, seeds=[8]) != alone  # the seed matters


def test_sample_and_generate_share_one_declaration_of_each_setting():
    from xtallm.llm.sampling import SamplingOptions
    from xtallm.pipelines.generate import GenerateConfig, RefineStage, load_generate_config
    from xtallm.pipelines.refine import RefineSettings
    from xtallm.pipelines.sample import SampleOptions
    from xtallm.refiner.refine import RefineOptions

    assert issubclass(SampleOptions, SamplingOptions) and issubclass(RefineSettings, RefineOptions)
    assert issubclass(RefineStage, RefineSettings)
    types = {f.name: f.type for f in fields(GenerateConfig)}
    assert types == {"sample": "SampleOptions", "refine": "RefineStage", "screen": "ScreenStage", "ray": "RaySection"}
    config = load_generate_config(None)  # the shipped recipe, found from the installed package
    assert config.sample.constrained and config.refine.steps == 50 and RefineOptions().steps == 200


def test_cli_flags_come_from_the_dataclasses():
    from xtallm.pipelines.cli import build_parser
    from xtallm.pipelines.sample import SampleOptions

    parser = build_parser()
    sample = next(a for a in parser._subparsers._group_actions[0].choices["sample"]._actions if a.dest == "top_k")
    assert "most likely" in sample.help
    generate = parser._subparsers._group_actions[0].choices["generate"]
    dests = {a.dest for a in generate._actions}
    # every sample flag but the cluster: a pipeline names its Ray cluster once (ray.address, `generate --ray`)
    assert {f"sample_{f.name}" for f in fields(SampleOptions) if f.name not in ("extra", "ray")} | {"ray_address"} <= dests
    assert "sample_ray" not in dests and "refine_ray" not in dests
    assert {"refine_tau", "refine_steps", "refine_enabled", "refine_batch_size"} <= dests
    args = parser.parse_args(["generate", "--out", "x", "--top-k", "5", "--refine-batch-size", "8", "--no-refine"])
    assert (args.sample_top_k, args.refine_batch_size, args.refine_enabled) == (5, 8, False)


def _flags(parser, where=()):
    """(command, flag, default shown in the help, help) of every option of every subcommand."""
    import argparse
    import re

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, (*where, name))
        elif action.option_strings and action.dest != "help":
            shown = re.search(r"\(default: (.*)\)\s*$", action.help or "", re.S)
            for flag in action.option_strings:
                yield " ".join(where), flag, shown.group(1) if shown else action.default, action.help or ""


def test_one_flag_name_has_one_default_across_commands():
    """Issue 27: `--steps` was 200 in refine and 50 in generate, `--constrained` off in sample and on in generate."""
    from collections import defaultdict

    from xtallm.pipelines.cli import build_parser

    defaults = defaultdict(dict)
    for command, flag, default, _ in _flags(build_parser()):
        defaults[flag][command] = str(default)
    # --out: required everywhere but in `demo`; --mlff: evaluate's is the hull's own potential (another is refused)
    differing = {flag: by for flag, by in defaults.items() if len(set(by.values())) > 1 and flag not in ("--out", "--mlff")}
    assert differing == {}
    assert defaults["--constrained"] == {"sample": "yes", "generate": "yes"}
    assert set(defaults["--relax-steps"].values()) == {"1500"} and len(defaults["--relax-steps"]) == 5
    assert "--steps" not in defaults or set(defaults["--steps"]) == {"refine"}  # generate's chain: --refine-steps
    assert defaults["--out"]["demo"] == "outputs/demo" and set(defaults["--out"].values()) == {"None", "outputs/demo"}


def test_every_out_is_a_folder():
    from xtallm.pipelines.cli import build_parser

    outs = {command: text for command, flag, _, text in _flags(build_parser()) if flag == "--out"}
    assert len(outs) == 11 and all("folder" in text for text in outs.values()), outs


def test_top_level_help_imports_no_heavy_library():
    """`xtallm --help` answers before torch or transformers load (it took 5.7 s when every command's flags were built)."""
    code = ("import sys, contextlib, io\nfrom xtallm.pipelines.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "assert 'generate' in out.getvalue() and 'evaluate' in out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pymatgen', 'vllm') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lr=fast", "config.train.lr: 'fast' is not a number"),
        ("train.batch_size=2.5", "config.train.batch_size: 2.5 is not an integer"),
        ("data.train=tokenization/examples/bulk_examples.csv", "config.data.train: expected a list"),
        ("train.compile=maybe", "config.train.compile: 'maybe' is not true/false"),
        ("model.lora.target_modules=[1, [2]]", "config.model.lora.target_modules[1]"),
    ],
)
def test_recipe_values_are_type_checked_before_any_work(override, message):
    from xtallm.llm.config import load_config

    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        load_config(REPO / "configs" / "llm" / "tiny_test.yaml", [override])


def test_sample_rows_round_trip_typed(tmp_path):
    from xtallm.pipelines.samples import JsonlWriter, Sample, decode_sample, read_samples
    from xtallm.tokenization.symmetry import GroupId

    mos2 = decode_sample("p0-0", "lg 78\na 3.188\nMo 1b\nS 2f -1.559")
    nacl = decode_sample("p0-1", "sg 225\na 5.640\nNa 4a\nCl 4b")
    bad = decode_sample("p0-2", "sg 225\na 5.640\nNa 24e")
    assert mos2.group == GroupId(2, 78) and mos2.is_layer and mos2.record.n_atoms == 3
    assert nacl.group == GroupId(3, 225) and not nacl.is_layer and nacl.record is not None
    assert not bad.ok and "free coordinate" in bad.error
    nacl.extra["set"] = "mine"  # a benchmark's own key survives a round trip
    with JsonlWriter(tmp_path / "s.jsonl") as writer:
        writer.write([s.to_json() for s in (mos2, nacl, bad)])
    back = list(read_samples(tmp_path / "s.jsonl"))
    assert [s.to_json() for s in back] == [s.to_json() for s in (mos2, nacl, bad)]
    assert back[0].group.kind == "lg" and back[1].record.group == 225
    with pytest.raises(ValueError, match="no 'id'"):
        Sample.from_json({"ok": True})


def test_symmetry_jsd_compares_like_with_like(tmp_path):
    """Monolayer samples' layer groups are compared with the reference's monolayers, not with space groups."""
    from xtallm.pipelines.evaluation import evaluate

    rows = [{"id": f"l{i}", "text": "lg 78\na 3.188\nMo 1b\nS 2f -1.559"} for i in range(4)]
    from xtallm.pipelines.samples import decode_sample

    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(decode_sample(r["id"], r["text"]).to_json()) + "\n" for r in rows))
    layers = Path(REPO / "tests" / "fixtures" / "known_monolayers.csv")
    result = evaluate(samples, layers, None, num_proc=1, coverage=False)
    assert result["sg_jsd"] is None and result["lg_jsd"] is not None and result["lg_jsd"] < 0.9


def test_every_training_recipe_says_how_to_make_its_data():
    """Issue 27: recipes named `.devdata/...` a clone does not have, and nothing said how to make it."""
    from xtallm.configs.recipe import recipe_data_hint

    recipes = [p for p in sorted((REPO / "configs").glob("*/*.yaml")) if p.parent.name in ("llm", "refiner")]
    assert len(recipes) >= 12
    lacking = [p.name for p in recipes if p.stem != "tiny_test" and "xtallm" not in recipe_data_hint(p)]
    assert lacking == []
