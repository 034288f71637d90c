"""FROM: start a stage's state from scratch, an image, or an earlier stage."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..._build_request import NamedContext
from ..._errors import DockyardError
from ..._graph import DEFAULT_PATH, SourceOp
from ..._reference import parse_reference
from .._instructions import AddCommand, Command, CopyCommand, RunCommand, WorkdirCommand
from ._context import Conversion
from ._image_config import thaw
from ._names import prefix_command
from ._stages import StageNode
from ._state import StageState
from ._triggers import parse_triggers

_COUNTED = (AddCommand, CopyCommand, RunCommand, WorkdirCommand)


def start_stage(conv: Conversion, stage_node: StageNode, done: dict[int, StageState]
                ) -> tuple[StageState, list[Command]]:
    """The state a stage starts from, and the ONBUILD triggers of its base image (counted
    in the stage's ``[n/total]`` before the FROM is named, as BuildKit does)."""
    if stage_node.base is not None:
        return _from_stage(stage_node, done[stage_node.base.index]), []
    platform = stage_node.platform or conv.target_platform
    state = StageState(stage_name=stage_node.stage_name, platform=platform)
    if stage_node.stage is not None:
        state.cmd_total = count_commands(stage_node.commands) + (not stage_node.is_scratch)
    context = _named_context(conv, stage_node)
    if context is not None and context.source.startswith(LOCAL_SCHEME):
        _from_local_context(conv, stage_node, state, context)
        return state, []
    if context is not None and context.source.startswith(LAYOUT_SCHEME):
        _from_layout(conv, state, context)
        _ensure_path(state)
        return state, []
    if context is None and stage_node.is_scratch:
        state.config.working_dir = "/"  # BuildKit's empty image config has WorkingDir "/"
        _ensure_path(state)
        return state, []
    base = context.source.removeprefix(IMAGE_SCHEME) if context is not None else None
    triggers = _from_image(conv, stage_node, state, base)
    _ensure_path(state)
    return state, triggers


def count_commands(commands: Sequence[Command]) -> int:
    """How many commands get a ``[n/total]`` number: ADD, COPY, RUN and WORKDIR."""
    return sum(isinstance(c, _COUNTED) for c in commands)


def _from_stage(stage_node: StageNode, base: StageState) -> StageState:
    config = base.config.copy()
    config.on_build = []
    return StageState(stage_name=stage_node.stage_name, platform=base.platform,
                      root=base.root, config=config, args=dict(base.args),
                      vars=dict(base.vars),
                      cmd_total=count_commands(stage_node.commands), workdir_set=base.workdir_set)


LOCAL_SCHEME = "local://"
IMAGE_SCHEME = "docker-image://"
LAYOUT_SCHEME = "oci-layout://"


def _named_context(conv: Conversion, stage_node: StageNode) -> NamedContext | None:
    """The ``--build-context`` this stage comes from: one named as the stage replaces the
    whole stage (its commands were dropped with it, see ``_stages``), one named as its
    base image replaces that image (BuildKit's precedence)."""
    if stage_node.context_override:
        return conv.options.named_context(stage_node.name or "")
    if stage_node.is_scratch:
        return None  # scratch is no image: nothing stands in for it
    return conv.options.named_context(stage_node.base_name)


def _from_local_context(conv: Conversion, stage_node: StageNode, state: StageState,
                        context: NamedContext) -> None:
    """A stage whose root is a directory context, with the empty image's config.  A
    Dockerfile stage (an image's base) takes its files as one whole layer, never the
    incremental chain a context source keeps: the image shows exactly the directory,
    not files since removed from it; one that only ``COPY --from``/``--mount from=``
    read (``stage`` None) keeps the chain."""
    attrs = [("rootfs", "true")] if stage_node.stage is not None else []
    if context.exclude:
        attrs.append(("exclude", json.dumps(list(context.exclude))))
    name = f"[context {context.name}] load from client"
    state.root = conv.sink.add(SourceOp(identifier=context.source, attrs=tuple(sorted(attrs))),
                               (), name, None, location="")
    state.config.working_dir = "/"
    _ensure_path(state)


def _from_layout(conv: Conversion, state: StageState, context: NamedContext) -> None:
    """A stage from the image of an OCI layout the client sends: its config as the
    resolver answers for the source (the client read it), its layers made by the worker
    from the layout's blobs."""
    image = conv.options.resolver(context.source, state.platform) if conv.options.resolver \
        else None
    if image is not None:
        state.config = thaw(image.config)
        state.config.on_build = []
    attrs = (("exclude", json.dumps(list(context.exclude))),) if context.exclude else ()
    name = f"[context {context.name}] load from oci layout"
    state.root = conv.sink.add(SourceOp(identifier=context.source, attrs=attrs), (), name,
                               state.platform, location="")


def _from_image(conv: Conversion, stage_node: StageNode, state: StageState,
                base: str | None = None) -> list[Command]:
    """``base``: the image a ``docker-image://`` named context puts in place of the
    stage's own base name."""
    shown = base or stage_node.base_name
    try:
        ref = str(parse_reference(shown))
    except DockyardError as err:
        raise stage_node.node.error(
            f'failed to parse stage name "{shown}": {err.message}',
            conv.filename,
            at=stage_node.base_name) from err
    image = conv.options.resolver(ref, state.platform) if conv.options.resolver else None
    triggers: list[Command] = []
    if image is not None:
        if image.digest and "@" not in ref:
            ref = f"{ref}@{image.digest}"
        state.config = thaw(image.config)
        state.config.on_build = []  # the triggers run in this stage; none are inherited
        triggers = parse_triggers(image.config.on_build, stage_node.node, conv.filename)
        state.cmd_total += count_commands(triggers)
    name = prefix_command(state, "FROM " + ref, multi_platform=conv.options.multi_platform,
                          platform=state.platform)
    state.root = conv.sink.add(SourceOp(identifier="docker-image://" + ref), (), name,
                               state.platform, location=conv.location(stage_node.node))
    return triggers


def _ensure_path(state: StageState) -> None:
    """The default PATH when the base has none; what commands see starts as the config env."""
    if "PATH" not in state.config.env and state.platform.os != "windows":
        state.config.env["PATH"] = DEFAULT_PATH.removeprefix("PATH=")
    state.vars = dict(state.config.env)
