"""ONBUILD triggers: parsed when a stage is built FROM the stage or image holding them."""

from __future__ import annotations

from ..._errors import DockerfileError
from .._ast import Node
from .._instructions import Command, OnbuildCommand, parse_command
from .._parser import parse


def stage_triggers(commands: tuple[Command, ...] | list[Command]) -> list[str]:
    return [c.expression for c in commands if isinstance(c, OnbuildCommand)]


def parse_triggers(expressions: list[str] | tuple[str, ...], at: Node, filename: str
                   ) -> list[Command]:
    """Each trigger as a command; errors point at the FROM that runs them."""
    return [_parse_one(text, at, filename) for text in expressions]


def _parse_one(text: str, at: Node, filename: str) -> Command:
    try:
        nodes = parse(text, filename).nodes
        if len(nodes) != 1:
            raise DockerfileError("onbuild trigger should be a single expression")
        return parse_command(nodes[0], filename)
    except DockerfileError as err:
        raise at.error(err.message, filename) from err
