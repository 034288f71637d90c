"""The stage table: FROM lines expanded with the meta args, stage names, the dependencies
between stages (FROM, COPY --from, RUN --mount from=), the target, and what it needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..._errors import DockerfileError, DockyardError
from ..._platform import Platform, parse_platform
from .._ast import Node
from .._instructions import Command, CopyCommand, Dockerfile, RunCommand, Stage
from .._suggest import closest
from ._context import Conversion
from ._triggers import parse_triggers, stage_triggers

SCRATCH = "scratch"


@dataclass(eq=False, slots=True)
class StageNode:
    """One stage of the build (or an image named by ``COPY --from``/``--mount from=``,
    which BuildKit adds as a stage with no commands: ``stage`` None).

    ``base``: the stage this one is built ``FROM``; ``deps``: the other stages its
    commands read; ``commands``: the ONBUILD triggers of a stage base, then its own.
    """

    index: int
    node: Node
    base_name: str
    stage: Stage | None = None
    name: str | None = None
    stage_name: str = ""
    platform: Platform | None = None
    base: StageNode | None = None
    deps: list[StageNode] = field(default_factory=list)
    dep_nodes: list[Node] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    triggers: int = 0
    context_override: bool = False  # a --build-context named as the stage replaces it

    @property
    def is_scratch(self) -> bool:
        return self.base is None and self.base_name == SCRATCH


class StageTable:
    """All stages in order, with lookups by name (case-insensitive) and index."""

    def __init__(self) -> None:
        self.nodes: list[StageNode] = []
        self._by_name: dict[str, StageNode] = {}

    def add(self, stage_node: StageNode) -> None:
        self.nodes.append(stage_node)
        if stage_node.name:
            self._by_name[stage_node.name.lower()] = stage_node

    def by_name(self, name: str) -> StageNode | None:
        return self._by_name.get(name.lower())

    def by_index(self, text: str) -> StageNode | None:
        if not text.isdigit():
            return None
        index = int(text)
        return self.nodes[index] if index < len(self.nodes) else None

    def image(self, ref: str) -> StageNode | None:
        """The image stage a ``--from``/``from=`` naming ``ref`` added, if any."""
        for stage_node in self.nodes:
            if stage_node.stage is None and stage_node.base_name == ref:
                return stage_node
        return None

    def names(self) -> list[str]:
        return [n.stage_name for n in self.nodes if n.stage_name]


def build_table(conv: Conversion, dockerfile: Dockerfile) -> StageTable:
    table = StageTable()
    declared = set(conv.global_args) | conv.consumed_args
    for stage in dockerfile.stages:
        table.add(_stage_node(conv, table, stage, declared))
    for stage_node in list(table.nodes):
        _add_triggers(conv, stage_node)
        _add_dependencies(conv, table, stage_node)
    _check_cycles(conv, table)
    if len(table.nodes) == 1:
        table.nodes[0].stage_name = ""
    return table


def _stage_node(conv: Conversion, table: StageTable, stage: Stage,
                declared: set[str]) -> StageNode:
    base_name = _expand_from(conv, stage.base_name, stage.node, declared)
    if not base_name:
        raise stage.node.error(f"base name ({stage.base_name}) should not be blank",
                               conv.filename, at=stage.base_name)
    stage_node = StageNode(index=len(table.nodes), node=stage.node, base_name=base_name,
                           stage=stage, name=stage.name,
                           stage_name=stage.name or f"stage-{stage.index}",
                           commands=list(stage.commands))
    if stage.platform:
        stage_node.platform = _expand_platform(conv, stage.platform, stage.node, declared)
    if stage.name and conv.options.named_context(stage.name) is not None:
        stage_node.context_override = True  # BuildKit: the context is the stage, whole
        stage_node.commands = []
        return stage_node
    stage_node.base = table.by_name(base_name) or table.by_index(base_name)
    return stage_node


def _expand_from(conv: Conversion, word: str, node: Node, declared: set[str]) -> str:
    expansion = conv.expand(word, conv.global_args, node)
    for name in sorted(expansion.unmatched - declared):
        conv.warn("UndefinedArgInFrom", f"FROM argument '{name}' is not declared", node)
    return expansion.result


def _expand_platform(conv: Conversion, word: str, node: Node, declared: set[str]
                     ) -> Platform:
    value = _expand_from(conv, word, node, declared)
    if not value:
        raise node.error(f"empty platform value from expression {word}", conv.filename,
                         at=word)
    try:
        return parse_platform(value)
    except DockyardError as err:
        raise node.error(f"failed to parse platform {word}: {err.message}", conv.filename,
                         at=word) from err


def _add_triggers(conv: Conversion, stage_node: StageNode) -> None:
    """A stage built FROM another stage first runs that stage's ONBUILD triggers."""
    if stage_node.base is None or stage_node.base.stage is None:
        return
    expressions = stage_triggers(stage_node.base.stage.commands)
    triggers = parse_triggers(expressions, stage_node.node, conv.filename)
    stage_node.commands[:0] = triggers
    stage_node.triggers = len(triggers)


def _add_dependencies(conv: Conversion, table: StageTable, stage_node: StageNode) -> None:
    for command in stage_node.commands:
        for source in sources_of(conv, command):
            add_dependency(table, stage_node, source, command.node)


def sources_of(conv: Conversion, command: Command) -> list[str]:
    """The stage names / indexes / images a command reads (``--from``, ``from=``)."""
    if isinstance(command, CopyCommand) and command.from_:
        _check_from_literal(conv, command)
        return [command.from_]
    if isinstance(command, RunCommand):
        return [m.from_ for m in command.mounts if m.from_ and m.type != "tmpfs"]
    return []


def _check_from_literal(conv: Conversion, command: CopyCommand) -> None:
    assert command.from_ is not None
    if conv.expand(command.from_, {}, command.node).result != command.from_:
        raise command.node.error(
            "variable expansion is not supported for --from, define a new stage with FROM "
            "using ARG from global scope as a workaround", conv.filename, at="--from")


def add_dependency(table: StageTable, stage_node: StageNode, source: str, node: Node
                   ) -> StageNode:
    found = table.by_name(source) or table.by_index(source) or table.image(source)
    if found is None:
        found = StageNode(index=len(table.nodes), node=node, base_name=source)
        table.add(found)
    stage_node.deps.append(found)
    stage_node.dep_nodes.append(node)
    return found


def _check_cycles(conv: Conversion, table: StageTable) -> None:
    done: set[int] = set()
    for stage_node in table.nodes:
        _visit(conv, stage_node, [], done)


def _visit(conv: Conversion, stage_node: StageNode, path: list[StageNode],
           done: set[int]) -> None:
    if stage_node.index in done:
        return
    if stage_node in path:
        first = path[path.index(stage_node)]
        node = first.dep_nodes[0] if first.dep_nodes else first.node
        raise DockerfileError(
            f"circular dependency detected on stage: {first.stage_name}",
            filename=conv.filename, line=node.start_line, column=node.column,
            source_line=node.lines[0] if node.lines else None)
    for dep in _edges(stage_node):
        _visit(conv, dep, [*path, stage_node], done)
    done.add(stage_node.index)


def _edges(stage_node: StageNode) -> list[StageNode]:
    return ([stage_node.base] if stage_node.base else []) + stage_node.deps


def find_target(conv: Conversion, table: StageTable, target: str | None) -> StageNode:
    registered = [n for n in table.nodes if n.stage is not None]
    if not target:
        return registered[-1]
    found = table.by_name(target)
    if found is None or found.stage is None:
        names = [n.name for n in registered if n.name]
        best = closest(target, names)  # BuildKit's suggest.WrapError
        did_you_mean = f" (did you mean {best}?)" if best else ""
        raise DockerfileError(f'target stage "{target}" could not be found{did_you_mean}',
                              filename=conv.filename, line=1,
                              hint=_target_hint(names))
    return found


def _target_hint(names: Sequence[str]) -> str:
    if not names:
        return "no stage is named (FROM ... AS <name>); build without --target"
    return "--target names a stage: " + ", ".join(names)


def reachable(target: StageNode) -> list[StageNode]:
    """The stages the target needs, in stage order."""
    seen: dict[int, StageNode] = {}
    todo = [target]
    while todo:
        current = todo.pop()
        if current.index not in seen:
            seen[current.index] = current
            todo.extend(_edges(current))
    return [seen[i] for i in sorted(seen)]


def stage_names(nodes: Sequence[StageNode]) -> list[str]:
    return [n.stage_name for n in nodes]
