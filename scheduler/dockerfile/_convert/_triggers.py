"""ONBUILD triggers: parsed when a stage is built FROM the stage or image holding them.

A trigger travels as text -- the image config's OnBuild list -- holding the instruction
after ONBUILD as written, each heredoc body appended with its delimiter (BuildKit's
parseOnBuild), so ``ONBUILD RUN <<EOF`` keeps its body and re-parses whole.

As in BuildKit's initOnBuildTriggers, each parsed trigger takes the position of the FROM
that runs it: an error or a build-check finding about a trigger, whether raised while
parsing it here or later by the converter, points at that FROM line and shows it, never
"line 2" of the trigger text.  Parse errors add a hint quoting the trigger, which may come
from an image the Dockerfile does not show.
"""

from __future__ import annotations

from dataclasses import replace

from ..._errors import DockerfileError
from .._ast import Node
from .._goquote import go_quote
from .._instructions import Command, OnbuildCommand, parse_command
from .._parser import parse


def stage_triggers(commands: tuple[Command, ...] | list[Command]) -> list[str]:
    return [c.expression for c in commands if isinstance(c, OnbuildCommand)]


def parse_triggers(expressions: list[str] | tuple[str, ...], at: Node, filename: str
                   ) -> list[Command]:
    """Each trigger as a command positioned at ``at``, the FROM that runs them."""
    return [_parse_one(text, at, filename) for text in expressions]


def _parse_one(text: str, at: Node, filename: str) -> Command:
    try:
        nodes = parse(text, filename).nodes
        if len(nodes) != 1:
            raise DockerfileError("onbuild trigger should be a single expression")
        return parse_command(_placed_at(nodes[0], at), filename)
    except DockerfileError as err:
        raise at.error(err.message, filename, hint=_hint(text, err.hint)) from err


def _placed_at(node: Node, at: Node) -> Node:
    """``node`` (a trigger, positioned in its own text) moved onto the FROM node ``at``."""
    return replace(node, start_line=at.start_line, end_line=at.end_line, lines=at.lines,
                   column=at.column, empty_continuation_lines=())


def _hint(text: str, hint: str | None) -> str:
    first = text.split("\n", 1)[0]
    where = f"the error is in the base's ONBUILD trigger {go_quote(first)}"
    return f"{where}; {hint}" if hint else where
