"""Grammars of constrained decoding: real crystals are sentences, impossible ones are not."""

from __future__ import annotations

import pandas as pd
import pytest
from pymatgen.core import Composition, Structure

from xtallm.llm.grammar import GrammarOptions, accepting, accepts, header_grammar, two_phase, wyckoff_grammar
from xtallm.llm.sampling import Output, Request, SamplingOptions, generate
from xtallm.pipelines.sample import constraint_grammars
from tests.conftest import FIXTURES, read_shared
from xtallm.tokenization.conditions import _elements, plain_formula
from xtallm.tokenization.formats import WyckoffFormat
from xtallm.tokenization.symmetry import get_group

FMT = WyckoffFormat()


def _ordered(text: str, dim: int, key) -> str:
    """The same crystal with its site lines sorted (the grammar's order; any order is the same crystal)."""
    head, lattice, *sites = text.split("\n")
    table = get_group(dim, int(head.split()[1]))
    index = {wp.letter: -wp.index for wp in table.wyckoffs}  # letter order: a first
    return "\n".join([head, lattice, *sorted(sites, key=lambda s: key(s.split()[0], index[s.split()[1].lstrip("0123456789")]))])


@pytest.fixture(scope="module")
def crystals() -> list[tuple[str, int, Structure]]:
    """(wyckoff text, dim, structure) of 24 MP-20 validation crystals and the known monolayers."""
    out = []
    df = read_shared("mp20/val.csv.xz", n=24, seed=3)
    for cif in df["cif"]:
        s = Structure.from_str(cif, "cif")
        out.append((FMT.encode(s), 3, s))
    for cif in pd.read_csv(FIXTURES / "known_monolayers.csv")["cif_layer_std"]:
        s = Structure.from_str(cif, "cif")
        out.append((FMT.encode(s), 2, s))
    return out


def test_real_crystals_are_sentences(crystals):
    for text, dim, s in crystals:
        kind, number = text.split("\n")[0].split()
        elements = _elements([e.symbol for e in s.composition.elements])
        formula = plain_formula(s.composition)
        by_letter = _ordered(text, dim, lambda el, letter: (letter,))
        assert accepts(wyckoff_grammar({"dim": dim, kind: int(number)}), by_letter), by_letter
        order = {el: i for i, el in enumerate(elements.split(","))}
        by_element = _ordered(text, dim, lambda el, letter: (order[el], letter))
        assert accepts(wyckoff_grammar({"dim": dim, kind: int(number), "elements": elements}), by_element), by_element
        order = {el: i for i, el in enumerate(Composition(formula).get_el_amt_dict())}
        by_formula = _ordered(text, dim, lambda el, letter: (order[el], letter))
        assert accepts(wyckoff_grammar({"dim": dim, kind: int(number), "formula": formula}), by_formula), by_formula
        assert accepts(header_grammar({"dim": dim, "formula": formula}), f"{kind} {number}\n")


def test_all_groups_grammar_takes_any_group():
    accepts = accepting(wyckoff_grammar({"dim": 3}))  # ~50 MB of EBNF: parsed and compiled once
    assert accepts( "sg 47\na 4.153 b 4.153 c 4.133\nOs 1a\nF 1d\nN 1f\nO 1g\nSc 1h")
    assert accepts("sg 1\na 2.570 b 5.563 c 6.397 alpha 87.68 beta 80.62 gamma 79.57\nC 1a 0.119 0.545 0.540")
    assert not accepts("lg 78\na 3.188\nMo 1b\nS 2f -1.559")
    assert accepting(wyckoff_grammar({}, dims=[2]))("lg 78\na 3.188\nMo 1b\nS 2f -1.559")


def test_what_the_grammar_forbids():
    nacl = "sg 225\na 5.640\n"
    grammar = wyckoff_grammar({"sg": 225})
    assert accepts(grammar, nacl + "Na 4a\nCl 4b")
    assert not accepts(grammar, nacl + "Na 4a\nCl 4a")  # two atoms on one point
    assert accepts(grammar, nacl + "Cl 4b\nNa 4a")  # any line order, as in training
    assert not accepts(grammar, nacl + "Na 4c\nCl 4b")  # 225 has no 4c
    assert not accepts(grammar, nacl + "Na 24e\nCl 4b")  # 24e has a free x
    assert not accepts(grammar, nacl + "Xx 4a")
    assert not accepts(grammar, "sg 225\na 5.640 c 5.640\nNa 4a")  # cubic: a only
    assert not accepts(grammar, nacl.rstrip())  # no site at all
    assert accepts(grammar, nacl + "Na 24e 0.100\nCl 24e 0.300")  # a free position may repeat

    elements = wyckoff_grammar({"sg": 225, "elements": "Na,Cl"})
    assert accepts(elements, nacl + "Na 4a\nCl 8c")
    assert not accepts(elements, nacl + "Na 4a")  # Cl missing
    assert not accepts(elements, nacl + "Na 4a\nK 4b")  # K not asked for
    assert not accepts(elements, nacl + "Na 4a\nCl 4a")  # two elements on one point
    assert not accepts(elements, nacl + "Cl 4a\nNa 4b")  # one block per element, in the condition's order
    formula = wyckoff_grammar({"sg": 225, "formula": "NaCl"})
    assert accepts(formula, nacl + "Na 4a\nCl 4b") and accepts(formula, nacl + "Na 4a\nNa 4b\nCl 8c")
    assert not accepts(formula, nacl + "Na 4a\nCl 8c")  # NaCl2
    assert not accepts(formula, nacl + "Na 4a\nCl 4b\nCl 8c")


def test_atom_cap_ends_every_sample():
    # Fm-3m under a 24-atom cap: 4a + 4b + 8c + ... stops where the next line would pass 24 atoms
    capped = wyckoff_grammar({"sg": 225}, options=GrammarOptions(max_atoms=24))
    nacl = "sg 225\na 5.640\n"
    assert accepts(capped, nacl + "Na 4a\nCl 4b\nF 8c")  # 16 atoms
    assert not accepts(capped, nacl + "Na 4a\nCl 24e 0.200")  # 28 atoms
    assert accepts(capped, nacl + "Cl 24e 0.200")  # 24 atoms
    assert not accepts(capped, nacl + "Cl 24e 0.200\nK 24e 0.300")
    # the default cap (80 atoms) bounds the lines of a free position, so decoding cannot run on forever
    default = wyckoff_grammar({"sg": 225})
    assert accepts(default, nacl + "Cl 24e 0.100\nCl 24e 0.200\nCl 24e 0.300\nNa 8c")
    assert not accepts(default, nacl + "Cl 24e 0.100\nCl 24e 0.200\nCl 24e 0.300\nNa 4a\nNa 8c")  # 84
    # P-1 (eight fixed positions of one atom) is capped too: 39 general lines and one fixed are 79 atoms
    p1bar = "sg 2\na 5.000 b 5.000 c 5.000 alpha 90.00 beta 90.00 gamma 90.00\n"
    lines = lambda n, letter: "".join(f"O {letter} 0.1{k:02d} 0.200 0.300\n" for k in range(n))
    assert accepts(wyckoff_grammar({"sg": 2}), p1bar + lines(39, "2i") + "Na 1a")
    assert not accepts(wyckoff_grammar({"sg": 2}), p1bar + lines(40, "2i") + "Na 1a")
    # Pmmm: counting atoms times the used subsets of its 27 positions is too large: no cap,
    # fixed positions still used once
    pmmm = "sg 47\na 5.000 b 5.000 c 5.000\n"
    assert accepts(wyckoff_grammar({"sg": 47}), pmmm + lines(11, "8A") + "Na 1a")
    assert not accepts(wyckoff_grammar({"sg": 47}), pmmm + "Na 1a\nK 1a")


def test_layer_group_needs_a_line_that_keeps_it_below_its_supergroup():
    # every p4/m crystal made of (0,0,z)-like orbits alone is p4/mmm: one line with a free x, y is required
    grammar = wyckoff_grammar({"dim": 2, "lg": 51})
    assert not accepts(grammar, "lg 51\na 4.963\nSr 2d -2.235\nSr 1a\nC 2d 2.071")
    assert accepts(grammar, "lg 51\na 4.963\nSr 2d -2.235\nSr 1a\nC 4g 0.210 0.070")
    assert accepts(wyckoff_grammar({"dim": 2, "lg": 78}), "lg 78\na 3.188\nMo 1b\nS 2f -1.559")  # 2H-MoS2 needs none


def test_impossible_conditions_are_refused_clearly():
    with pytest.raises(ValueError, match="no crystal .* meets 'sg=230 formula=NaCl'"):
        wyckoff_grammar({"sg": 230, "formula": "NaCl"})  # Ia-3d: every orbit has >= 16 atoms, Z <= 8
    header = header_grammar({"dim": 3, "formula": "NaCl"})
    assert accepts(header, "sg 225\n") and not accepts(header, "sg 230\n")
    assert two_phase({"dim": 3, "formula": "NaCl"}) and two_phase({"dim": 3}) and not two_phase({"sg": 225, "formula": "NaCl"})


class FakeSampler:
    """Answers each request from a table keyed by its prompt (a list: one answer per call); records what it was asked."""

    def __init__(self, answers: dict[tuple[int, ...], list[tuple[str, list[int]]]]):
        self.answers, self.seen = answers, []

    def generate(self, requests, options, adapter_index=None):
        self.seen.append([(tuple(r.prompt_ids), r.grammar, options.max_tokens, r.seed) for r in requests])
        out = []
        for r in requests:
            answers = self.answers[tuple(r.prompt_ids)]
            text, ids = answers.pop(0) if len(answers) > 1 else answers[0]
            out.append(Output(text, len(ids), ids))
        return out


def test_two_phase_generate_continues_from_the_group_line():
    eos = 2
    grammar, after_group = constraint_grammars({"dim": 3, "formula": "NaCl"}, [3])
    hard, hard_after_group = constraint_grammars({"dim": 3, "formula": "Yb2Ge3Pd"}, [3])
    plain, none = constraint_grammars({"dim": 3, "sg": 225}, [3])
    assert none is None and "sg 225" in plain and accepts(grammar, "sg 225\n") and accepts(hard, "sg 225\n")
    sampler = FakeSampler({
        (1, 7): [("sg 225\n", [40, 41, 9, eos])],
        (1, 7, 40, 41, 9): [("a 5.640\nNa 4a\nCl 4b", [50, 51, eos])],
        # every orbit count of Fm-3m passes the first pass's test, but not together: redrawn
        (1, 8): [("sg 225\n", [40, 41, 9, eos]), ("sg 221\n", [40, 42, 9, eos])],
        (1, 8, 40, 42, 9): [("a 4.000\nYb 2e 0.250\nGe 3c\nPd 1a", [70, eos])],
        (1, 9): [("sg 225\na 5.640\nNa 4a", [60, eos])],
    })
    requests = [
        Request("a", {"formula": "NaCl"}, [1, 7], seed=10, grammar=grammar, grammar_after_group=after_group),
        Request("b", {"formula": "Yb2Ge3Pd"}, [1, 8], seed=11, grammar=hard, grammar_after_group=hard_after_group),
        Request("c", {"sg": 225}, [1, 9], seed=12, grammar=plain),
    ]
    outputs = generate(sampler, requests, SamplingOptions(max_tokens=448), eos_token_id=eos)
    assert outputs[0].text == "sg 225\na 5.640\nNa 4a\nCl 4b" and outputs[0].n_tokens == 7 and outputs[0].error is None
    assert outputs[1].text == "sg 221\na 4.000\nYb 2e 0.250\nGe 3c\nPd 1a" and outputs[1].error is None
    assert outputs[2].text == "sg 225\na 5.640\nNa 4a"
    whole, heads, retry, rest = sampler.seen
    assert whole == [((1, 9), plain, 448, 12)] and [h[2] for h in heads] == [8, 8]
    assert retry[0][0] == (1, 8) and not accepts(retry[0][1], "sg 225\n") and accepts(retry[0][1], "sg 221\n")
    assert [r[0] for r in rest] == [(1, 7, 40, 41, 9), (1, 8, 40, 42, 9)] and "formula" not in rest[0][1]
    assert rest[0][1].count("g3_225 ::=") == 1 and rest[0][2] == 440

    stuck = FakeSampler({(1, 8): [("sg 225\n", [40, 41, 9, eos])]})  # the model insists on a group that cannot fit
    [out] = generate(stuck, requests[1:2], SamplingOptions(max_tokens=448), eos_token_id=eos)
    assert out.error and "sg=225" in out.error and len(stuck.seen) == 4


class CutOff:
    """Every answer parses but was stopped by max_tokens."""

    def generate(self, requests, options, adapter_index=None):
        return [Output("sg 225\na 5.640\nNa 4a", 3, [1, 2, 3], truncated=True) for _ in requests]


def test_a_constrained_sample_cut_off_by_max_tokens_is_not_a_crystal(tmp_path):
    from xtallm.llm.model import default_model_path
    from xtallm.pipelines.samples import read_jsonl as read_samples
    from xtallm.pipelines.sample import SampleJob, SampleOptions, run_sample

    job = SampleJob(str(tmp_path), num_samples=2, conditions={"sg": 225},
                    options=SampleOptions(model=str(default_model_path()), constrained=True))
    assert run_sample(job, sampler=CutOff())["parse_rate"] == 0.0
    assert all("cut off at max_tokens" in r["error"] for r in read_samples(tmp_path / "samples.jsonl"))
    free = SampleJob(str(tmp_path / "free"), num_samples=2, conditions={"sg": 225}, options=SampleOptions(model=str(default_model_path()), constrained=False))
    assert run_sample(free, sampler=CutOff())["parse_rate"] == 1.0  # free decoding: scored as written
