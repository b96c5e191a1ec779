"""Names a package exports but imports on first use (PEP 562), so that importing the package stays light: the
Trainer (and through it PEFT) costs seconds, the MiniMeta builder needs its source packages."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `name` is taken from the module `homes[name]` (relative to `package`,
    e.g. `".trainer"`) the first time it is asked for."""

    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(importlib.import_module(homes[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__all__ = ["lazy_exports"]
