"""Settings declared once: typed dataclasses, read from YAML recipes, `key.sub=value` overrides
and command-line flags derived from the same fields.

A recipe (torchtune style) only states what differs from the dataclass defaults. Every value is
checked against its field's type before any work starts, so a typo'd key or a string where a
number belongs fails at once with one line naming the setting, not minutes later in a DataLoader.
A field's help text lives in its metadata (`option(default, "help")`): the CLI flag, its help and
its default all come from that one declaration.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. PyYAML (YAML 1.1) also reads yes/no/on/off as booleans, so
    `mixed_precision: no` would arrive as False and be refused as "not a string"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


class RecipeError(ValueError):
    """A recipe, override or flag value that does not fit its setting (unknown key, wrong type)."""


NUM_PROC_HELP = "worker processes (default: the machine's cores, at most 8)"


def default_num_proc() -> int:
    """Worker processes when the user names none: every command that fans out uses this one rule."""
    return min(os.cpu_count() or 1, 8)


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, flag: bool = True, **extra: Any):
    """A dataclass field with its help text (and optional `choices`, `metavar`) for the derived CLI flag.

    `flag=False` keeps a setting out of the command line (it stays settable from YAML/overrides)."""
    metadata = {"help": help, "flag": flag, **extra}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp` (a field annotation), or RecipeError naming `where`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option_type in options:
            if option_type is type(None):
                continue
            try:
                return _coerce(value, option_type, where)
            except RecipeError as exc:
                errors.append(exc)
        raise RecipeError(f"{where}: {value!r} is not {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value if value is not None else {}, where)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise RecipeError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: {value!r} is not true/false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise RecipeError(f"{where}: {value!r} is not an integer")
        try:
            number = float(value)
        except ValueError:
            raise RecipeError(f"{where}: {value!r} is not an integer") from None
        if number != int(number):
            raise RecipeError(f"{where}: {value!r} is not an integer")
        return int(number)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise RecipeError(f"{where}: {value!r} is not a number")
        try:  # YAML reads 1e-4 (no dot) as a string
            return float(value)
        except ValueError:
            raise RecipeError(f"{where}: {value!r} is not a number") from None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise RecipeError(f"{where}: {value!r} is not a string")
    return value


def build(cls: type, values: Any, where: str = "config"):
    """An instance of dataclass `cls` from a mapping, every value checked against its field's type."""
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise RecipeError(f"{where}.{key}: unknown setting; known: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    instance = cls(**kwargs)
    check = getattr(instance, "check", None)
    if callable(check):  # cross-field rules (ranges, combinations), with the recipe's own names
        try:
            check()
        except RecipeError:
            raise
        except ValueError as exc:
            raise RecipeError(f"{where}: {exc}") from None
    return instance


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a mapping; one clear line for a missing file or bad YAML."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path}: no such file")
    try:
        tree = _load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of sections, got {type(tree).__name__}")
    return tree


def is_hub_id(name: str) -> bool:
    """`owner/name` that is not a local path: no leading ./ ~ or /, and its first part is no folder here."""
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "~", "/"))
            and not Path(parts[0]).exists() and all(c.isalnum() or c in "-_." for c in name.replace("/", "")))


def recipe_data_hint(recipe: str | Path | None) -> str:
    """The recipe's `# data:` header lines: how to make the data it names (one place a user looks)."""
    if recipe is None or not Path(recipe).is_file():
        return ""
    return " ".join(line.split(":", 1)[1].strip() for line in Path(recipe).read_text().splitlines() if line.startswith("# data:"))


def check_data_paths(paths: list[str], recipe: str | Path | None) -> None:
    """Refuse, before any work, local data a recipe names that is not here, saying how to make it."""
    for path in paths:
        text = str(path)
        if "://" in text or not ("/" in text or "\\" in text) or Path(text).expanduser().exists():
            continue
        if is_hub_id(text):
            continue  # a hub dataset id (owner/name): loaded when training starts
        hint = recipe_data_hint(recipe) or ("make a dataset folder with `xtallm data prepare TABLE --out FOLDER` and pass "
                                            "data.train=[FOLDER]")
        where = f" (run from {Path.cwd()})" if not Path(text).is_absolute() else ""
        raise FileNotFoundError(f"data {text}: no such file or folder{where}; {hint}")


def load_recipe(cls: type, path: str | Path | None, overrides: list[str] | None = None):
    """Any recipe dataclass from YAML + `section.key=value` overrides (values parsed as YAML: 1e-4, true, [a, b])."""
    tree: dict[str, Any] = read_yaml(path) if path is not None else {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r}: expected section.key=value")
        try:
            value = _load_yaml(raw)
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return build(cls, tree, "config")


def save_recipe(instance: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(instance), sort_keys=False))


def shipped(relative: str) -> Path:
    """A recipe shipped with xtallm (`pipeline/default.yaml`), from the installed package."""
    path = Path(str(resources.files("xtallm.configs") / relative))
    if not path.is_file():
        raise FileNotFoundError(f"no shipped recipe {relative!r} in {path.parent}")
    return path


# ---------------------------------------------------------------------------- command-line flags


def _flag_type(tp: Any):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _flag_type(args[0]) if len(args) == 1 else str
    return tp if tp in (int, float, str) else str


def add_flags(parser: argparse.ArgumentParser, cls: type, dest_prefix: str = "", rename: dict[str, str] | None = None,
              skip: tuple[str, ...] = (), defaults: Any = None) -> list[str]:
    """One `--flag` per field of `cls` (help, type, choices from the field); returns the dests added.

    Flags default to "not given" (None), so only what the user typed overrides a recipe; the help
    shows the effective default (`defaults`: an instance whose values are shown, e.g. a recipe's)."""
    hints = typing.get_type_hints(cls)
    dests = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("flag", True) or dataclasses.is_dataclass(hints[f.name]):
            continue
        name = (rename or {}).get(f.name, f.name)
        dest = dest_prefix + f.name
        tp = hints[f.name]
        shown = getattr(defaults, f.name) if defaults is not None else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if tp is bool:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {'yes' if shown else 'no'})")
        elif typing.get_origin(tp) in (list, tuple) or typing.get_origin(tp) is dict:
            continue  # lists and mappings: YAML or overrides
        else:
            default_text = "" if shown is None or "(default" in help_text else f" (default: {shown})"
            choices = f.metadata.get("choices")
            parser.add_argument(f"--{name.replace('_', '-')}", dest=dest, type=_flag_type(tp), default=None, choices=choices,
                                metavar=f.metadata.get("metavar") or (None if choices else f.name.upper()),
                                help=(help_text + default_text).strip())
        dests.append(dest)
    return dests


def given_flags(args: argparse.Namespace, cls: type, dest_prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` the user set on the command line (flags left at None are not given)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, dest_prefix + f.name, None)
        if value is not None:
            out[f.name] = value
    return out


def with_flags(instance: Any, args: argparse.Namespace, dest_prefix: str = "") -> Any:
    """`instance` with the flags the user gave applied (and type-checked)."""
    given = given_flags(args, type(instance), dest_prefix)
    if not given:
        return instance
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance) if f.init}
    values.update(given)
    return build(type(instance), {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in values.items()},
                 "options")
