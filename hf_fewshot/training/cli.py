"""Argument parsing shared by the recipes: built-in defaults, then a YAML file, then command-line flags."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def parse_recipe_arguments(
    dataclass_types: Sequence[type], defaults: Mapping[str, Any], argv: Sequence[str] | None = None
) -> tuple:
    """Instances of `dataclass_types` from, in increasing priority: the recipe's `defaults`, a YAML file given as
    the first argument, and `--name value` flags. With no arguments at all the recipe runs its defaults.

    Unknown keys (in the defaults or the YAML file) are an error naming them, not silently ignored.
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
    parser = HfArgumentParser(dataclass_types)
    parser.set_defaults(**values)
    for action in parser._actions:  # a required field given by the defaults or the YAML file is no longer missing
        if action.dest in values:
            action.required = False
    return tuple(parser.parse_args_into_dataclasses(args=argv))
