"""The Dockerfile frontend: parser -> instructions -> build graph.

Each stage imports only the one before it: ``parse`` (bytes -> nodes with positions),
``parse_dockerfile`` (nodes -> typed commands and stages), ``build_graph`` (the whole way to
a ``BuildGraph``, with the build checks).  ``shell`` is the public word-expansion module
(``process_word``/``process_words``); the ``.dockerignore`` matcher lives here too.
"""

from ._ast import CheckWarning, Directives, Heredoc, Node, ParseResult
from ._dockerignore import PatternMatcher, parse_ignore_file
from ._frontend import BaseImage, FrontendResult, ImageResolver, build_graph
from ._instructions import Dockerfile, Stage, parse_dockerfile
from ._lint import RULES, Rule
from ._parser import parse
from .shell import Expansion, Lexer, process_word, process_words

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
