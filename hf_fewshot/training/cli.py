"""Argument parsing shared by the recipes: built-in defaults, then a YAML file, then command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def parse_recipe_arguments(
    dataclass_types: Sequence[type],
    defaults: Mapping[str, Any],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
) -> tuple:
    """Instances of `dataclass_types` from, in increasing priority: the recipe's `defaults`, a YAML file given as
    the first argument, and `--name value` flags. With no arguments at all the recipe runs its defaults.

    Unknown keys (in the defaults or the YAML file) are an error naming them, not silently ignored. `prog` names the
    command in `--help` and error messages.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    values = dict(defaults)
    if argv and argv[0].endswith((".yaml", ".yml")):
        path = Path(argv.pop(0))
        if not path.is_file():
            raise FileNotFoundError(f"No config file at {path}.")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a mapping of argument names to values.")
        values.update(loaded)
    known = {field.name for cls in dataclass_types for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown argument(s) {unknown}; see --help for the accepted names.")
    parser = HfArgumentParser(dataclass_types, prog=prog)
    # A mistyped flag: one line and exit status 2, not argparse's page-long usage of every Trainer argument.
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")
    actions = {}
    for action in parser._actions:  # a bool field also has an untyped `--no_x` action with the same dest
        if action.dest not in actions or actions[action.dest].type is None:
            actions[action.dest] = action
    parser.set_defaults(**{name: _as_flag_value(actions[name], value) for name, value in values.items()})
    for action in parser._actions:  # a required field given by the defaults or the YAML file is no longer missing
        if action.dest in values:
            action.required = False
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def _as_flag_value(action: argparse.Action, value: Any) -> Any:
    """`value` (from YAML or a recipe's defaults) converted and checked as `--name value` on the command line
    would be: `sam_rho: true` is an error, not ρ = 1; `max_steps: 1.5` is refused before anything runs."""
    if value is None or isinstance(value, dict) or action.type is None:  # mappings: checked by their consumer
        return value
    if isinstance(value, (list, tuple)):
        return [_converted(action, item) for item in value]
    return [_converted(action, value)] if action.nargs in ("+", "*") else _converted(action, value)  # a list of one


def _converted(action: argparse.Action, value: Any) -> Any:
    try:
        converted = action.type(value if isinstance(value, str) else _plain_text(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{action.dest}: {value!r} is not a valid {_type_name(action)} ({error}).") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{action.dest} must be one of {list(action.choices)}, got {value!r}.")
    return converted


def _plain_text(value: Any) -> str:
    """How the value would be typed on a command line; a YAML boolean is `true`/`false` (accepted by bool flags
    only: float("True") fails, as `--sam_rho true` does)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _type_name(action: argparse.Action) -> str:
    return getattr(action.type, "__name__", "value").replace("string_to_bool", "boolean")
