"""The lazy ``__getattr__`` every runtail package uses for its heavier names.

A package lists where each lazy name lives and sets
``__getattr__ = lazy_getattr(__name__, {...})``: the name's module is imported
on first use and the value kept in the package, so ``import recorder`` (or
``tailer``, ``replay``) pays only for what is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` loading each name of ``where`` from the module it maps to."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
