"""The parser's output: a Dockerfile as a list of nodes with positions, no semantics.

The parser (``_parser``) produces these; the instruction layer (``_instructions``) reads
them.  Nothing here knows what an instruction means.

Positions are 1-based.  ``Node.start_line``/``end_line`` span the physical lines of one
logical instruction (continuations included, heredoc bodies included).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._errors import DockerfileError

__all__ = ["CheckWarning", "Directives", "Heredoc", "Node", "ParseResult"]


@dataclass(frozen=True, slots=True)
class Heredoc:
    """One ``<<EOF`` document attached to a RUN/COPY/ADD line.

    ``name`` is the delimiter word without quotes; ``expand`` is False when the delimiter
    was quoted (``<<'EOF'`` or ``<<"EOF"``); ``chomp`` is True for ``<<-`` (leading tabs
    are already stripped from ``content``); ``file_descriptor`` is the ``3`` of ``3<<EOF``.
    ``content`` is the body, each line ending in ``\\n``, the delimiter line excluded.
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    file_descriptor: int | None = None


@dataclass(frozen=True, slots=True)
class Node:
    """One instruction.

    ``instruction``: lower-case name (``"run"``); ``keyword``: as written (``"Run"``).
    ``flags``: the leading ``--name[=value]`` words, in order, as BuildKit extracts them:
    quotes removed and ``\\`` escapes applied (``--chown="a b"`` -> ``--chown=a b``), the
    escape directive not applied; a lone ``--`` ends the flags.
    ``args``: the arguments, split as BuildKit's parser splits them for this instruction:

    - RUN, CMD, ENTRYPOINT, SHELL: JSON form -> the list (``json=True``); shell form ->
      one string, the rest of the line after the flags (continuations joined).
    - COPY, ADD, VOLUME: JSON form -> the list; otherwise whitespace-separated words.
    - FROM, EXPOSE: whitespace-separated words.
    - MAINTAINER, STOPSIGNAL, USER, WORKDIR: one string, the rest of the line.
    - ENV, LABEL: ``(name1, value1, name2, value2, ...)``; values keep their quotes and
      escapes for the expansion step; ``legacy_kv`` is True for ``ENV name value``.
    - ARG: the words, each ``name`` or ``name=value`` (quotes kept).
    - HEALTHCHECK: ``("NONE",)`` or ``("CMD", <the RUN-style args>)``; ``json`` tells the form
      of the command.
    - ONBUILD: ``args`` holds the trigger text; ``sub`` the parsed trigger node.

    ``original`` is the logical line as written (continuations joined with their escapes
    removed, heredoc bodies excluded).  ``lines`` are the physical source lines from
    ``start_line`` to ``end_line``, for carets and lint positions.  ``column`` is the
    column of the keyword in ``start_line``.
    """

    instruction: str
    keyword: str
    args: tuple[str, ...]
    start_line: int
    end_line: int
    flags: tuple[str, ...] = ()
    json: bool = False
    legacy_kv: bool = False
    heredocs: tuple[Heredoc, ...] = ()
    sub: Node | None = None
    original: str = ""
    lines: tuple[str, ...] = ()
    column: int = 1
    comments: tuple[str, ...] = ()
    empty_continuation_lines: tuple[int, ...] = ()

    def locate(self, text: str) -> tuple[int, int]:
        """The (line, column) of the first occurrence of ``text`` in this node's source;
        the keyword's position when it does not occur."""
        for offset, physical in enumerate(self.lines):
            index = physical.find(text) if text else -1
            if index >= 0:
                return self.start_line + offset, index + 1
        return self.start_line, self.column

    def error(self, message: str, filename: str, *, at: str = "", hint: str | None = None
              ) -> DockerfileError:
        """A ``DockerfileError`` positioned at ``at`` (a piece of this node's text)."""
        line, column = self.locate(at)
        source = self.lines[line - self.start_line] if self.lines else None
        return DockerfileError(message, filename=filename, line=line, column=column,
                               source_line=source, hint=hint)


@dataclass(frozen=True, slots=True)
class Directives:
    """Parser directives from the top of the file (``# syntax=``, ``# escape=``, ``# check=``).

    ``escape`` is ``"\\\\"`` or ``"`"``; ``check`` is the raw value of ``# check=``
    (e.g. ``"skip=JSONArgsRecommended;error=true"``); ``lines`` maps a directive name to
    the line it was on.
    """

    escape: str = "\\"
    syntax: str | None = None
    check: str | None = None
    lines: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParseResult:
    """A parsed Dockerfile: its directives, its nodes in order, and its source lines."""

    filename: str
    directives: Directives
    nodes: tuple[Node, ...]
    source_lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CheckWarning:
    """One build-check (lint) finding, as BuildKit reports them.

    ``rule`` is BuildKit's rule name (``"JSONArgsRecommended"``); ``description`` the rule's
    one-line description; ``message`` this finding; ``url`` the rule's documentation page
    (``https://docs.docker.com/go/dockerfile/rule/<kebab-name>/``).  Any stage of the
    frontend may produce these; ``_lint`` gathers them and applies ``# check=``.
    """

    rule: str
    message: str
    filename: str
    line: int
    column: int = 1
    description: str = ""
    url: str = ""
