"""How builds enter and leave dockyard: the command line and the client side of a build
(the build context, read with its ignore file); the endpoint and coordinator follow."""

from ._cli import main
from ._context import ContextEntry, ignore_file_for, load_ignore_patterns, walk_context

__all__ = ["ContextEntry", "ignore_file_for", "load_ignore_patterns", "main", "walk_context"]
