"""Exports loaded on first use (PEP 562), for the packages' ``__init__`` modules.

A package lists ``name -> private module`` and gets a module ``__getattr__`` and ``__dir__``:
importing the package costs nothing until a name is used, so a command that needs one small
piece does not pay for the whole package (the CLI's start-up is measured in benchmarks/).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``exports`` map each public name to
    the submodule (``"_graph"``) defining it; a loaded name is cached in ``namespace``."""

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_
