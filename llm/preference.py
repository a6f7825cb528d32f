"""Preference pairs from scored samples, built against mode collapse (the data of `xtallm improve`).

PLaID++ reached the best metastable rate of its leaderboard with rounds of DPO against a stability
reward, and collapsed onto known, repeated crystals (uniqueness 0.78, novelty 0.24). Pairs here are
built so that the loss never rewards a repeat:

- a pair joins two different crystals of the same prompt: never a sample with itself, never two
  samples StructureMatcher calls the same crystal (their texts may differ: site order, setting);
- the better sample is in a higher tier: no crystal < not valid < valid (and in the requested group
  for sg=/lg= prompts) but above the hull's tolerance < metastable; within metastable, novel beats
  known (from `novel_from_round`, as PLaID++ did from its third round); within one tier of valid
  crystals, an energy above the hull lower by at least `energy_margin` (eV/atom) is better: a
  reward with a gradient while few or no samples are metastable; for a prompt that requests a
  property (band_gap=, formation_energy=, ...), predictions closer to the request by at least
  `distance_margin` (in the predictor's tolerances) are better instead;
- a chosen sample whose composition is over-represented in the round (more than `max_share` of the
  valid samples) is not chosen: the reward for a prototype the model already repeats is withheld;
- each chosen sample meets at most `rejected_per_chosen` rejected ones, each rejected sample is used
  at most `uses_per_rejected` times.

The KL anchor (DPO's beta, reference = the adapter switched off) lives in the trainer, not here.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

TIERS = ("no crystal", "invalid", "valid", "metastable")


@dataclass
class Scored:
    """One sample as the pair builder sees it."""

    id: str
    prompt: str  # the prompt text the sample was drawn from (the pair's shared prompt)
    text: str | None  # the completion the model wrote
    tier: int  # index into TIERS
    e_above_hull: float | None = None
    novel: bool | None = None
    formula: str | None = None  # reduced formula (over-representation)
    structure: Any = None  # pymatgen Structure of the refined crystal (duplicate check), if any
    distance: float | None = None  # from the prompt's property request, in predictor tolerances (property prompts)


@dataclass
class PairOptions:
    rejected_per_chosen: int = 2
    uses_per_rejected: int = 2
    max_share: float = 0.05  # a composition holding more of the round's valid samples is not chosen
    energy_margin: float = 0.2  # eV/atom: within a tier of valid crystals, this much lower above the hull is better
    distance_margin: float = 0.5  # property prompts: this much closer to the request (in tolerances) is better
    novel_from_round: int = 3
    seed: int = 0


@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str
    chosen_id: str
    rejected_id: str
    reason: str  # which tier difference (or novelty) decided

    def row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, "chosen_id": self.chosen_id,
                "rejected_id": self.rejected_id, "reason": self.reason}


@dataclass
class PairReport:
    pairs: list[Pair] = field(default_factory=list)
    skipped_same_crystal: int = 0
    withheld_over_represented: int = 0

    def summary(self) -> dict[str, Any]:
        return {"pairs": len(self.pairs), "reasons": dict(Counter(p.reason for p in self.pairs)),
                "skipped_same_crystal": self.skipped_same_crystal, "withheld_over_represented": self.withheld_over_represented}


def _rank(s: Scored, round_index: int, options: PairOptions) -> tuple[int, int]:
    novel = int(bool(s.novel)) if s.tier == TIERS.index("metastable") and round_index >= options.novel_from_round else 0
    return s.tier, novel


def _better(a: Scored, b: Scored, round_index: int, options: PairOptions) -> str | None:
    """Why `a` is preferred to `b` (None: it is not)."""
    ra, rb = _rank(a, round_index, options), _rank(b, round_index, options)
    if ra != rb:
        return (f"{TIERS[a.tier]} > {TIERS[b.tier]}" if a.tier != b.tier else "novel > known") if ra > rb else None
    if a.tier < TIERS.index("valid"):
        return None
    if a.distance is not None and b.distance is not None:  # a property request: its distance is the reward
        return "closer to the request" if a.distance + options.distance_margin <= b.distance else None
    if a.e_above_hull is not None and b.e_above_hull is not None and a.e_above_hull + options.energy_margin <= b.e_above_hull:
        return "lower e_above_hull"
    return None


def _same_crystal_test() -> Callable[[Any, Any], bool]:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)  # the evaluation's uniqueness test

    def same(a, b) -> bool:
        if a is None or b is None or a.composition.reduced_composition != b.composition.reduced_composition:
            return False
        try:
            return bool(matcher.fit(a, b))
        except Exception:  # a pair the matcher cannot compare is treated as different crystals
            return False

    return same


def build_pairs(samples: list[Scored], round_index: int = 1, options: PairOptions | None = None,
                same_crystal: Callable[[Any, Any], bool] | None = None) -> PairReport:
    """Chosen/rejected pairs per prompt (see the module docstring)."""
    options = options or PairOptions()
    same = same_crystal or _same_crystal_test()
    rng = random.Random(options.seed + round_index)
    report = PairReport()
    valid = [s for s in samples if s.tier >= TIERS.index("valid")]
    counts = Counter(s.formula for s in valid if s.formula)
    over = {f for f, n in counts.items() if len(valid) >= 20 and n / len(valid) > options.max_share}
    by_prompt: dict[str, list[Scored]] = defaultdict(list)
    for s in samples:
        if s.text:
            by_prompt[s.prompt].append(s)
    for prompt, group in sorted(by_prompt.items()):
        energy = {s.id: -s.distance if s.distance is not None else -s.e_above_hull if s.e_above_hull is not None else -math.inf
                  for s in group}  # within a rank: the closest to a property request, else the lowest above the hull
        group = sorted(group, key=lambda s: (_rank(s, round_index, options), energy[s.id], s.id), reverse=True)
        uses: Counter = Counter()
        for chosen in group:
            if chosen.tier < TIERS.index("valid"):
                break  # only valid crystals are ever preferred
            if chosen.formula in over:
                report.withheld_over_represented += 1
                continue
            worse = [(s, why) for s in group if (why := _better(chosen, s, round_index, options))
                     and uses[s.id] < options.uses_per_rejected and s.text != chosen.text]
            rng.shuffle(worse)
            taken = 0
            for rejected, reason in worse:
                if taken == options.rejected_per_chosen:
                    break
                if same(chosen.structure, rejected.structure):  # one crystal written twice is no preference
                    report.skipped_same_crystal += 1
                    continue
                report.pairs.append(Pair(prompt, chosen.text, rejected.text, chosen.id, rejected.id, reason))
                uses[rejected.id] += 1
                taken += 1
    return report
