"""Property conditions: the prompt header a model is conditioned on.

A header is one line of `key=value` pairs, e.g. `dim=3 sg=225 elements=Mg,Hg band_gap=0.00`.
The same specs validate what a user asks for on the command line, what the data carries,
and what a model wrote, so a typo or an impossible value is rejected before sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import ConditionError

# pymatgen is imported where a value is checked, so the specs and keys load without the crystal stack


def _elements(value: Any) -> str:
    from pymatgen.core import Element

    items = value if isinstance(value, (list, tuple, set)) else str(value).replace(" ", "").split(",")
    symbols = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            symbols.append(Element(item).symbol)
        except ValueError:
            raise ConditionError(f"elements: unknown element {item!r}") from None
    if not symbols:
        raise ConditionError("elements: empty list")
    if len(set(symbols)) != len(symbols):
        raise ConditionError(f"elements: repeated element in {value!r}")
    return ",".join(sorted(symbols, key=lambda s: Element(s).Z))


def _formula(value: Any) -> str:
    from pymatgen.core import Composition, Element

    text = str(value).strip()
    try:
        comp = Composition(text)
    except Exception:
        raise ConditionError(f"formula: cannot parse {value!r} as a chemical formula") from None
    for el in comp.elements:
        if not isinstance(el, Element):
            raise ConditionError(f"formula: unknown element {str(el).rstrip('0+-')!r} in {value!r}")
    if comp.num_atoms <= 0:
        raise ConditionError(f"formula: {value!r} has no atoms")
    return plain_formula(comp)


def _electronegativity(el) -> float:
    """Pauling X, with noble gases (no value, NaN in pymatgen) last so the order is total."""
    x = el.X
    return 100.0 if math.isnan(x) else x


def plain_formula(comp) -> str:
    """Reduced formula without brackets (Dy2C(NO)2 -> Dy2CN2O2): one spelling per composition."""
    from pymatgen.util.string import formula_double_format

    reduced, _ = comp.get_reduced_composition_and_factor()
    parts = []
    for el, amount in sorted(reduced.items(), key=lambda kv: (_electronegativity(kv[0]), kv[0].symbol)):
        count = formula_double_format(amount)
        parts.append(f"{el.symbol}{'' if count == '1' else count}")
    return "".join(parts)


@dataclass(frozen=True)
class ConditionSpec:
    key: str
    kind: str  # "int", "float", "str"
    low: float | None = None
    high: float | None = None
    decimals: int = 2
    normalize: Callable[[Any], str] | None = None
    help: str = ""
    columns: tuple[str, ...] = ()  # table columns a property is read from (first found wins); () = derived from the crystal

    def parse(self, value: Any) -> Any:
        """Validated, canonical value; raises ConditionError naming the key and the problem."""
        if self.kind == "str":
            return self.normalize(value) if self.normalize else str(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConditionError(f"{self.key}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ConditionError(f"{self.key}: {value!r} is not a finite number")
        if self.kind == "int":
            if number != int(number):
                raise ConditionError(f"{self.key}: {value!r} is not an integer")
            number = int(number)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise ConditionError(f"{self.key}={value} is out of range [{self.low:g}, {self.high:g}]")
        return number

    def format(self, value: Any) -> str:
        if self.kind == "float":
            return f"{float(value):.{self.decimals}f}"
        return str(value)


SPECS: dict[str, ConditionSpec] = {
    s.key: s
    for s in [
        ConditionSpec("dim", "int", 2, 3, help="2 = monolayer, 3 = bulk"),
        ConditionSpec("sg", "int", 1, 230, help="space group number (bulk)"),
        ConditionSpec("lg", "int", 1, 80, help="layer group number (monolayer)"),
        ConditionSpec("formula", "str", normalize=_formula, help="reduced formula, e.g. MoS2"),
        ConditionSpec("elements", "str", normalize=_elements, help="comma-separated elements, e.g. Mo,S"),
        ConditionSpec("n_atoms", "int", 1, 1000, help="atoms in the conventional cell"),
        ConditionSpec("band_gap", "float", 0, 30, help="eV", columns=("band_gap", "band_gap_eV")),
        ConditionSpec("formation_energy", "float", -15, 10, help="eV/atom", columns=("formation_energy_per_atom", "formation_energy")),
        ConditionSpec("e_above_hull", "float", 0, 10, decimals=3, help="eV/atom", columns=("e_above_hull", "energy_above_hull")),
        ConditionSpec("density", "float", 0.01, 30, help="g/cm^3"),
        ConditionSpec("mag_density", "float", 0, 10, decimals=3, help="Bohr magneton per Å^3", columns=("mag_density",)),
        ConditionSpec("hhi", "float", 0, 10000, decimals=0, help="Herfindahl-Hirschman index of production"),
    ]
}
ORDER = list(SPECS)
# properties read from a table's columns (DFT results): no structure alone decides them
PROPERTY_COLUMNS = {s.key: s.columns for s in SPECS.values() if s.columns}


def validate_conditions(conditions: Mapping[str, Any] | None) -> dict[str, Any]:
    """Canonical dict in header order; rejects unknown keys, bad values and contradictions."""
    if not conditions:
        return {}
    out: dict[str, Any] = {}
    for key, value in conditions.items():
        if key not in SPECS:
            raise ConditionError(f"unknown condition {key!r}; known: {', '.join(ORDER)}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[key] = SPECS[key].parse(value)
    if "sg" in out and "lg" in out:
        raise ConditionError("sg and lg together: a crystal is either bulk (sg) or a layer (lg)")
    if out.get("dim") == 2 and "sg" in out:
        raise ConditionError("dim=2 with sg: monolayers take a layer group (lg)")
    if out.get("dim") == 3 and "lg" in out:
        raise ConditionError("dim=3 with lg: bulk crystals take a space group (sg)")
    if "formula" in out and "elements" in out:
        from pymatgen.core import Composition

        formula_elements = _elements([e.symbol for e in Composition(out["formula"]).elements])
        if formula_elements != out["elements"]:
            raise ConditionError(f"formula {out['formula']} contradicts elements {out['elements']}")
    return {k: out[k] for k in ORDER if k in out}


def format_header(conditions: Mapping[str, Any] | None) -> str:
    """`key=value ...` line (no newline); empty string for no conditions."""
    valid = validate_conditions(conditions)
    return " ".join(f"{k}={SPECS[k].format(v)}" for k, v in valid.items())


def parse_header(line: str) -> dict[str, Any]:
    """Inverse of format_header; raises ConditionError on malformed pairs."""
    pairs: dict[str, Any] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise ConditionError(f"malformed condition {token!r}: expected key=value")
        if key in pairs:
            raise ConditionError(f"condition {key!r} given twice")
        pairs[key] = value
    return validate_conditions(pairs)


def parse_condition_args(items: list[str] | None) -> dict[str, Any]:
    """`["sg=225", "elements=Mg,Hg"]` from a command line -> validated dict."""
    return parse_header(" ".join(items or []))


def structure_conditions(structure, dim: int, group: int | None) -> dict[str, Any]:
    """Conditions that follow from the crystal itself (everything but the DFT properties)."""
    from pymatgen.analysis.hhi import HHIModel

    comp = structure.composition
    out: dict[str, Any] = {"dim": dim}
    if group is not None:
        out["sg" if dim == 3 else "lg"] = group
    out["formula"] = plain_formula(comp)
    out["elements"] = _elements([e.symbol for e in comp.elements])
    out["n_atoms"] = len(structure)
    if dim == 3:  # a layer's density depends on the vacuum: not a property of the layer
        out["density"] = round(float(structure.density), 4)
    hhi = HHIModel().get_hhi_production(comp)
    if hhi is not None:
        out["hhi"] = round(float(hhi), 1)
    return out
