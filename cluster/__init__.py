"""How builds enter and leave dockyard: the command line and the client side of a build
(the build context, read with its ignore file); the endpoint and coordinator follow.

The exports load on first use (PEP 562): the console script imports ``dockyard.cluster._cli``, and
importing this package must not pull in the context walker and the Dockerfile frontend
behind it for a command that never reads a context.
"""

from __future__ import annotations

import typing

from dockyard.scheduler._lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from ._cli import main
    from ._context import ContextEntry, ignore_file_for, load_ignore_patterns, walk_context

__all__ = ["ContextEntry", "ignore_file_for", "load_ignore_patterns", "main", "walk_context"]

_EXPORTS = {"main": "_cli", "ContextEntry": "_context", "ignore_file_for": "_context",
            "load_ignore_patterns": "_context", "walk_context": "_context"}

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
