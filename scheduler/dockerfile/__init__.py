"""The Dockerfile frontend: parser -> instructions -> build graph.

Each stage imports only the one before it: ``parse`` (bytes -> nodes with positions),
``parse_dockerfile`` (nodes -> typed commands and stages), ``build_graph`` (the whole way to
a ``BuildGraph``, with the build checks).  ``shell`` is the public word-expansion module
(``process_word``/``process_words``); the ``.dockerignore`` matcher lives here too.
"""

import importlib
import typing

if typing.TYPE_CHECKING:
    from ._ast import CheckWarning, Directives, Heredoc, Node, ParseResult
    from ._dockerignore import PatternMatcher, parse_ignore_file
    from ._frontend import BaseImage, FrontendResult, ImageResolver, build_graph
    from ._instructions import Dockerfile, Stage, parse_dockerfile
    from ._lint import RULES, Rule
    from ._parser import parse
    from .shell import Expansion, Lexer, process_word, process_words

#: Public name -> the module defining it, imported on first use: the client imports the
#: ``.dockerignore`` matcher (``_dockerignore``) on every build and must not pay for the
#: whole frontend (about 40 ms of imports) to get it.
_WHERE = {
    "CheckWarning": "_ast", "Directives": "_ast", "Heredoc": "_ast", "Node": "_ast",
    "ParseResult": "_ast", "PatternMatcher": "_dockerignore",
    "parse_ignore_file": "_dockerignore", "BaseImage": "_frontend",
    "FrontendResult": "_frontend", "ImageResolver": "_frontend", "build_graph": "_frontend",
    "Dockerfile": "_instructions", "Stage": "_instructions",
    "parse_dockerfile": "_instructions", "RULES": "_lint", "Rule": "_lint",
    "parse": "_parser", "Expansion": "shell", "Lexer": "shell", "process_word": "shell",
    "process_words": "shell",
}


def __getattr__(name: str) -> typing.Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "RULES",
    "BaseImage",
    "CheckWarning",
    "Directives",
    "Dockerfile",
    "Expansion",
    "FrontendResult",
    "Heredoc",
    "ImageResolver",
    "Lexer",
    "Node",
    "ParseResult",
    "PatternMatcher",
    "Rule",
    "Stage",
    "build_graph",
    "parse",
    "parse_dockerfile",
    "parse_ignore_file",
    "process_word",
    "process_words",
]
