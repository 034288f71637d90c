"""Variable expansion for the converter: the shell lexer, errors positioned at the node,
and the UndefinedVar build check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..._errors import DockyardError
from .. import shell
from .._ast import Node

NON_ENV_ARGS = frozenset({"BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"})


@dataclass(frozen=True, slots=True)
class Expansion:
    result: str
    words: tuple[str, ...]
    matched: frozenset[str]
    unmatched: frozenset[str]


def expand(word: str, env: Mapping[str, str], *, escape: str, node: Node,
           filename: str) -> Expansion:
    """One word expanded with quote removal; a lexer error becomes a DockerfileError at
    ``node``."""
    try:
        result = shell.Lexer(escape).expand(word, env)
    except DockyardError as err:
        raise node.error(err.message, filename, at=word, hint=err.hint) from err
    return Expansion(result.result, result.words, result.matched, result.unmatched)


def expand_heredoc(body: str, env: Mapping[str, str], *, node: Node, filename: str) -> str:
    """A COPY/ADD heredoc body with an unquoted delimiter: variables expanded with a
    backslash lexer that keeps quotes as text (BuildKit's ExpandRaw).  A body is many
    lines: it may grow by a word's limit beyond its own length."""
    lexer = shell.Lexer("\\", skip_process_quotes=True,
                        max_size=len(body) + shell.MAX_WORD_SIZE)
    try:
        return lexer.expand(body, env).result
    except DockyardError as err:
        raise node.error(err.message, filename, hint=err.hint) from err


def expand_display(text: str, env: Mapping[str, str], *, escape: str) -> str:
    """A command line with the variables in scope substituted, quotes kept and unknown
    variables left as written (BuildKit's vertex names); the text itself on any error."""
    try:
        lexer = shell.Lexer(escape, raw_quotes=True, skip_unset_env=True)
        return lexer.process_word(text, env)
    except Exception:  # a name is only a label: never fail a build over it
        return text
