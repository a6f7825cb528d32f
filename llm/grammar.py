"""Grammars for constrained decoding (vLLM structured outputs, xgrammar EBNF).

A grammar derived from the `wyckoff` format makes every sample a crystal the parser accepts
and the prompt asked for:

- the group's header and its own free lattice parameters, numbers in the parser's ranges;
- only that group's Wyckoff positions, each with exactly its free coordinates;
- a position without free coordinates (4a of Fm-3m) takes at most one line: two lines on it
  put two atoms on one point. The automaton remembers which fixed positions are used, so the
  lines may come in any order, as in training (which shuffles them); forcing one order (say
  a, b, c, ...) bends the model's choices: it pushed samples onto the general position;
- `elements=`: only those elements, each at least once; `formula=`: each element's count in
  the (conventional) cell is Z times its count in the formula, one Z for all. Then the lines
  come in blocks, one per element (in the condition's order), any order inside a block.

The site lines are a small automaton (element block, fixed positions used, atoms of the block);
only states from which the end can still be reached become rules. Where tracking the used
positions makes it too large (`MAX_EDGES`: long formulas in P-1, Pmmm), the larger
formula-unit counts Z are left out; if even Z=1 is too large, fixed positions go untracked. One group's grammar is
small; over all groups it is megabytes, so a prompt without sg=/lg= is decoded in two passes
(`two_phase`): the group line under `header_grammar`, then the rest under that group's grammar.
The cell holds at most `GrammarOptions.max_atoms` atoms, so a sample cannot run on forever;
where counting atoms times the used positions is too large (P222, Pmmm), the count is dropped
and the sampler's max_tokens (768, 1.5x the longest training text) is the only bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from pymatgen.core import Composition
from pymatgen.core.periodic_table import Element

from xtallm.tokenization.symmetry import ANGLES, N_GROUPS, GroupTable, get_group

ELEMENTS = tuple(sorted((el.symbol for el in Element if el.Z <= 103), key=lambda s: (-len(s), s)))


@dataclass(frozen=True)
class Block:
    """A run of site lines: `element` (None: any element) and its atom count in the cell."""

    element: str | None
    atoms: int | None = None  # None: at least one line


def _numbers(length_decimals: int, angle_decimals: int, coord_decimals: int) -> str:
    return "\n".join([
        f'length ::= ([1-9] | [1-9] [0-9] | [1-4] [0-9] [0-9]) "." [0-9]{{{length_decimals}}}',  # 1 .. 499.9 Å
        f'angle ::= ("1" [1-9] | [2-9] [0-9] | "1" [0-6] [0-9]) "." [0-9]{{{angle_decimals}}}',  # 11 .. 169.9 degrees
        f'frac ::= "0." [0-9]{{{coord_decimals}}}',  # [0, 1)
        f'zcart ::= "-"? ([0-9] | "1" [0-9]) "." [0-9]{{{coord_decimals}}}',  # Å from the mid-plane, |z| < 20
        "element ::= " + " | ".join(f'"{s}"' for s in ELEMENTS),
    ])


def _site_rules(
    prefix: str,
    table: GroupTable,
    blocks: tuple[Block, ...],
    track_fixed: bool,
    breaking: frozenset[int] | None = None,
    max_atoms: int | None = None,
) -> tuple[list[str], str | None, int]:
    """Rules of the site-line automaton of one group, its start rule (None: no crystal fits) and its size (edges).

    State (block, fixed positions used, atoms in the block, atoms in the cell): a line may take
    any position with free coordinates, or a fixed one not yet used (`track_fixed`); a satisfied
    block closes and the next element's block starts. Lines come in any order inside a block, as
    in training. With `max_atoms`, the cell holds at most that many atoms, which also bounds the
    number of lines: a constrained sample always ends. With `breaking`, the crystal must have a
    line on one of those positions (see `_breaking_positions`). Exploration stops past
    `EXPLORE_LIMIT` edges (size returned as that limit + 1, no rules).
    """
    positions = table.wyckoffs
    accept = (len(blocks), 0, -1, 0, True)

    def moves(state):  # (element, position index or None, next state)
        b, used, c, total, broken = state
        if b == len(blocks):
            return []
        block = blocks[b]
        out = []
        if (c == block.atoms) if block.atoms is not None else c > 0:
            if b + 1 < len(blocks):
                out.append((None, None, (b + 1, used, 0, total, broken)))
            elif broken or breaking is None:
                out.append((None, None, accept))
        for i, wp in enumerate(positions):
            bit = 0 if wp.free or not track_fixed else 1 << i
            if used & bit:
                continue
            now_broken = broken or (breaking is not None and i in breaking)
            m = wp.multiplicity
            if max_atoms is not None and total + m > max_atoms:
                continue
            after = total + m if max_atoms is not None else 0
            if block.atoms is None:  # the block only needs a line: remember that it has one
                out.append((block.element, i, (b, used | bit, 1, after, now_broken)))
            elif c + m <= block.atoms:
                out.append((block.element, i, (b, used | bit, c + m, after, now_broken)))
        return out

    start = (0, 0, 0, 0, False)
    explored = _explore(start, moves)
    if explored is None:
        return [], None, EXPLORE_LIMIT + 1
    edges, size = explored
    live = _live_states(edges, accept)
    if start not in live:
        return [], None, size

    names: dict[tuple, str] = {}

    def name(state) -> str:
        return names.setdefault(state, f"{prefix}_s{len(names)}")

    rules = []
    for i, wp in enumerate(positions):
        coords = "".join(' " " zcart' if (table.dim == 2 and j == 2) else ' " " frac' for j in wp.free)
        rules.append(f'{prefix}_w{i} ::= "{wp.multiplicity}{wp.letter}"{coords}')
    for state, out in edges.items():
        if state not in live or state == accept:
            continue
        options = []
        for element, i, target in out:
            if target not in live:
                continue
            rest = "" if target == accept else " " + name(target)
            if i is None:
                options.append(rest.strip() or '""')
            else:
                who = f'"\\n{element} "' if element else '"\\n" element " "'
                options.append(f"{who} {prefix}_w{i}{rest}")
        rules.append(f"{name(state)} ::= " + " | ".join(options))
    return rules, name(start), size


def _explore(start: tuple, moves) -> tuple[dict[tuple, list], int] | None:
    """Every state reachable from `start` with its moves, and the edge count; None past EXPLORE_LIMIT edges."""
    edges: dict[tuple, list] = {}
    todo = [start]
    size = 0
    while todo:
        state = todo.pop()
        if state in edges:
            continue
        edges[state] = moves(state)
        size += len(edges[state])
        if size > EXPLORE_LIMIT:
            return None
        todo.extend(move[-1] for move in edges[state] if move[-1] not in edges)
    return edges, size


def _live_states(edges: dict[tuple, list], accept: tuple) -> set[tuple]:
    """States from which the accepting state is reachable (only those become rules)."""
    live = {accept}
    changed = True
    while changed:
        changed = False
        for state, out in edges.items():
            if state not in live and any(move[-1] in live for move in out):
                live.add(state)
                changed = True
    return live


def _compositions(conditions: dict[str, Any], max_atoms: int, max_formula_units: int) -> tuple[tuple[Block, ...], ...]:
    """Site blocks for the prompt's composition conditions: one tuple per formula-unit count Z."""
    if "formula" in conditions:
        counts = {el: int(round(n)) for el, n in Composition(conditions["formula"]).get_el_amt_dict().items()}
        units = [z for z in range(1, max_formula_units + 1) if z * sum(counts.values()) <= max_atoms]
        return tuple(tuple(Block(el, n * z) for el, n in counts.items()) for z in units)
    if "elements" in conditions:
        return (tuple(Block(el) for el in str(conditions["elements"]).split(",")),)
    return ((Block(None),),)


@lru_cache(maxsize=None)
def _breaking_positions(dim: int, number: int) -> frozenset[int] | None:
    """Layer groups whose crystals need a line on particular positions to be that group and no higher.

    A monolayer built only from positions whose one free coordinate is z, e.g. (0, 0, z) in p4/m,
    is invariant under a supergroup (p4/mmm): with one element per orbit, the union of all such
    orbits is, if and only if each orbit is, so one test crystal holding all of them decides for
    every subset. Where it comes out in a higher group, a position "breaks" the supergroup when
    adding one generic orbit of it to the test crystal gives the group itself ((x, 0, 0) on a
    mirror of the supergroup does not; the general position does). The grammar then asks for
    at least one line on a breaking position (returned as indices); None: no such need."""
    if dim != 2:
        return None
    from xtallm.tokenization.formats import WyckoffFormat
    from xtallm.tokenization.record import detect_group

    table = get_group(dim, number)
    values = {"a": 4.7, "b": 5.9, "alpha": 97.0, "beta": 97.0, "gamma": 97.0}
    lattice = " ".join(f"{name} {values[name]:.2f}" for name in table.lattice_params)
    symbols = iter([e for e in ELEMENTS if len(e) == 2])

    def line(wp, k: int) -> str:
        generic = {0: 0.137 + 0.05 * k, 1: 0.291 + 0.03 * k, 2: 1.1 + 0.37 * k}  # fractions in-plane, Å out of plane
        return f"{next(symbols)} {wp.multiplicity}{wp.letter}" + "".join(f" {generic[j]:.3f}" for j in wp.free)

    def detected(lines: list[str]) -> int | None:
        try:
            structure = WyckoffFormat(strict=False).decode("\n".join([f"lg {number}", lattice, *lines]))
        except Exception:  # overlapping test orbits: cannot tell
            return None
        return detect_group(structure, 2, symprec=0.01)

    z_only = [line(wp, k) for k, wp in enumerate(table.wyckoffs) if set(wp.free) <= {2}]
    if not z_only or detected(z_only) in (number, None):
        return None
    breaking = frozenset(i for i, wp in enumerate(table.wyckoffs)
                         if set(wp.free) & {0, 1} and detected([*z_only, line(wp, 9)]) == number)
    return breaking or None  # none found: the test cannot tell, so ask for nothing


MAX_EDGES = 30_000  # grammar size bound: see group_grammar
EXPLORE_LIMIT = 4 * MAX_EDGES  # an automaton this large is not even built


@lru_cache(maxsize=1024)
def group_grammar(
    dim: int, number: int, composition: tuple[tuple[Block, ...], ...], header: bool = True, max_atoms: int | None = None
) -> tuple[list[str], str | None]:
    """Rules of one group's crystals (header, lattice, sites) and its start rule (None: none fits)."""
    table = get_group(dim, number)
    prefix = f"g{dim}_{number}"
    breaking = _breaking_positions(dim, number)
    # Formula-unit counts Z in increasing order while the grammar stays small. Where even the
    # smallest is too large (P222, Pmmm: many fixed positions), the atom cap goes first (fixed
    # positions used twice are the commoner fault), then the tracking of fixed positions. A
    # first feasible automaton is kept up to EXPLORE_LIMIT (P-1 with the cap: 59k edges, 0.8 s
    # for xgrammar to compile once).
    for track, cap in ((True, max_atoms), (True, None), (False, None)):
        built, edges = [], 0
        for k, blocks in enumerate(composition):
            rules_z = _site_rules(f"{prefix}_z{k}", table, blocks, track, breaking, cap)
            if edges + rules_z[2] > MAX_EDGES and any(start for _, start, _ in built):
                break
            edges += rules_z[2]
            built.append(rules_z)
        if edges <= MAX_EDGES or any(start for _, start, _ in built):
            break
    rules = [rule for site_rules, start, _ in built if start is not None for rule in site_rules]
    starts = [start for _, start, _ in built if start is not None]
    if not starts:
        return [], None
    lattice = ' " " '.join(f'"{name} " {"angle" if name in ANGLES else "length"}' for name in table.lattice_params)
    head = f'"{table.kind} {number}\\n" ' if header else ""
    rules.append(f"{prefix} ::= {head}{lattice} ({' | '.join(starts)})")
    return rules, prefix


def _groups(conditions: dict[str, Any], dims: list[int] | None) -> list[tuple[int, int]]:
    if "sg" in conditions:
        return [(3, int(conditions["sg"]))]
    if "lg" in conditions:
        return [(2, int(conditions["lg"]))]
    allowed = [conditions["dim"]] if "dim" in conditions else (dims or [3, 2])
    return [(d, n) for d in allowed for n in range(1, N_GROUPS[d] + 1)]


def two_phase(conditions: dict[str, Any]) -> bool:
    """Without sg=/lg=, decode the group line first, then the rest under that group's grammar.

    One grammar over all 310 groups that tracks used positions and element blocks is megabytes
    and takes seconds to minutes to compile per prompt; one group's takes milliseconds."""
    return "sg" not in conditions and "lg" not in conditions


@dataclass(frozen=True)
class GrammarOptions:
    max_atoms: int = 80  # conventional cell; MP-20's largest is 80
    max_formula_units: int = 8  # Z of the conventional cell; <= 8 for 99% of MP-20
    length_decimals: int = 3
    angle_decimals: int = 2
    coord_decimals: int = 3


def wyckoff_grammar(
    conditions: dict[str, Any], dims: list[int] | None = None, options: GrammarOptions = GrammarOptions(), header: bool = True
) -> str:
    """The EBNF grammar (xgrammar dialect, root rule `root`) of a prompt's crystals.

    Without sg=/lg= it is an alternation over all groups (large; see `two_phase`).
    `header=False`: the grammar of what follows the group line.
    Raises ValueError when no crystal of the allowed groups meets the conditions."""
    composition = _compositions(conditions, options.max_atoms, options.max_formula_units)
    rules, starts = [], []
    for dim, number in _groups(conditions, dims):
        group_rules, start = group_grammar(dim, number, composition, header, options.max_atoms)
        if start is not None:
            rules += group_rules
            starts.append(start)
    if not starts:
        wanted = " ".join(f"{k}={v}" for k, v in conditions.items())
        raise ValueError(f"no crystal with at most {options.max_atoms} atoms in the cell meets {wanted!r}")
    numbers = _numbers(options.length_decimals, options.angle_decimals, options.coord_decimals)
    return "\n".join([f"root ::= {' | '.join(starts)}", numbers, *rules]) + "\n"


def _reachable_counts(table: GroupTable, limit: int) -> set[int]:
    """Atom counts one element can have in a group: free positions any number of times, fixed once."""
    counts = {0}
    for wp in table.wyckoffs:
        steps = range(1, limit // wp.multiplicity + 1) if wp.free else [1]
        counts |= {c + k * wp.multiplicity for c in counts for k in steps if c + k * wp.multiplicity <= limit}
    return counts


def header_grammar(conditions: dict[str, Any], dims: list[int] | None = None, options: GrammarOptions = GrammarOptions()) -> str:
    """First phase of `two_phase`: the group line, over the groups that can hold the composition.

    A group qualifies when each element's count can be made of its Wyckoff multiplicities (a
    necessary test; the second phase has the exact one)."""
    composition = _compositions(conditions, options.max_atoms, options.max_formula_units)
    lines = []
    for dim, number in _groups(conditions, dims):
        table = get_group(dim, number)
        counts = _reachable_counts(table, options.max_atoms)
        if any(all(b.atoms is None or b.atoms in counts for b in blocks) for blocks in composition):
            lines.append(f'"{table.kind} {number}\\n"')
    if not lines:
        wanted = " ".join(f"{k}={v}" for k, v in conditions.items())
        raise ValueError(f"no group can hold {wanted!r} within {options.max_atoms} atoms")
    return "root ::= " + " | ".join(lines) + "\n"


def accepting(grammar: str) -> Callable[[str], bool]:
    """Whether a text is a sentence of `grammar`, as a function: the grammar is parsed and compiled once
    (for tests and checks, not for decoding; no tokenizer, characters only)."""
    import xgrammar

    compiled = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False).compile_grammar(
        xgrammar.Grammar.from_ebnf(grammar))
    matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)

    def check(text: str) -> bool:
        matcher.reset()
        return bool(matcher.accept_string(text) and matcher.is_terminated())

    return check


def accepts(grammar: str, text: str) -> bool:
    """Whether `text` is a sentence of `grammar` (for tests and checks, not for decoding)."""
    return accepting(grammar)(text)


def without_group(header: str, line: str) -> str:
    """`header_grammar` minus one group line (the second pass found no crystal of it that fits)."""
    option = '"' + line.replace("\n", "\\n") + '"'
    body = header.removeprefix("root ::= ").strip()
    options = [o for o in body.split(" | ") if o != option]
    if not options:
        raise ValueError("no group left that can hold the conditions")
    return "root ::= " + " | ".join(options) + "\n"
