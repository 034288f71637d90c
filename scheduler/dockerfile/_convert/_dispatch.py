"""One stage's commands, each expanded in the stage's scope and handed to the function
for its instruction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..._errors import DockerfileError, DockyardError
from .._instructions import (
    AddCommand,
    ArgCommand,
    CmdCommand,
    Command,
    CopyCommand,
    EntrypointCommand,
    EnvCommand,
    ExposeCommand,
    HealthcheckCommand,
    LabelCommand,
    MaintainerCommand,
    OnbuildCommand,
    RunCommand,
    ShellCommand,
    StopSignalCommand,
    UserCommand,
    VolumeCommand,
    WorkdirCommand,
)
from .._interrupt import checkpoint
from . import _config
from ._args import dispatch_arg
from ._context import Conversion
from ._copy import dispatch_copy
from ._from import start_stage
from ._run import dispatch_run
from ._stages import StageNode, StageTable
from ._state import StageState
from ._workdir import dispatch_workdir

Handler = Callable[[Conversion, StageState, Any], None]

_CONFIG: dict[type[Command], Handler] = {
    EnvCommand: _config.dispatch_env,
    LabelCommand: _config.dispatch_label,
    MaintainerCommand: _config.dispatch_maintainer,
    UserCommand: _config.dispatch_user,
    ExposeCommand: _config.dispatch_expose,
    VolumeCommand: _config.dispatch_volume,
    StopSignalCommand: _config.dispatch_stopsignal,
    HealthcheckCommand: _config.dispatch_healthcheck,
    ShellCommand: _config.dispatch_shell,
    CmdCommand: _config.dispatch_cmd,
    EntrypointCommand: _config.dispatch_entrypoint,
    OnbuildCommand: _config.dispatch_onbuild,
    ArgCommand: dispatch_arg,
    WorkdirCommand: dispatch_workdir,
}


def convert_stage(conv: Conversion, table: StageTable, stage_node: StageNode,
                  done: dict[int, StageState]) -> StageState:
    state, triggers = start_stage(conv, stage_node, done)
    commands = [*triggers, *stage_node.commands]
    for position, command in enumerate(commands):
        checkpoint()
        state.on_build_prefix = position < len(triggers) + stage_node.triggers
        _guarded(conv, table, state, command, done)
    return state


def _guarded(conv: Conversion, table: StageTable, state: StageState, command: Command,
             done: dict[int, StageState]) -> None:
    """Dispatch; anything but a DockerfileError becomes one at the command."""
    try:
        _dispatch(conv, table, state, command, done)
    except DockerfileError:
        raise
    except DockyardError as err:
        raise command.node.error(err.message, conv.filename) from err
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise command.node.error(f"cannot convert {command.node.keyword}: {err}",
                                 conv.filename) from err


def _dispatch(conv: Conversion, table: StageTable, state: StageState, command: Command,
              done: dict[int, StageState]) -> None:
    command = _expanded(conv, state, command)
    if isinstance(command, RunCommand):
        dispatch_run(conv, state, command, _mount_sources(conv, table, state, command, done))
    elif isinstance(command, CopyCommand) and command.from_:
        root = _source_root(conv, table, state, command, command.from_, done)
        dispatch_copy(conv, state, command, root, from_stage=True)
    elif isinstance(command, CopyCommand | AddCommand):
        dispatch_copy(conv, state, command)
    else:
        _CONFIG[type(command)](conv, state, command)


def _expanded(conv: Conversion, state: StageState, command: Command) -> Command:
    if isinstance(command, ArgCommand):
        return command
    if isinstance(command, ExposeCommand):
        env = state.env()
        return command.expand_words(lambda w: list(conv.expand(w, env, command.node).words))
    return command.expand(lambda w: conv.expand_in_stage(w, state, command.node),
                          conv.filename)


def _mount_sources(conv: Conversion, table: StageTable, state: StageState,
                   command: RunCommand, done: dict[int, StageState]
                   ) -> dict[str, str | None]:
    return {m.from_: _source_root(conv, table, state, command, m.from_, done)
            for m in command.mounts if m.from_ and m.type != "tmpfs"}


def _source_root(conv: Conversion, table: StageTable, state: StageState, command: Command,
                 name: str, done: dict[int, StageState]) -> str | None:
    found = table.by_name(name) or (table.by_index(name) if isinstance(
        command, CopyCommand) else None) or table.image(name)
    if found is None or found.index not in done:
        raise command.node.error(
            f'cannot copy from stage "{name}", it needs to be defined before current '
            f'stage "{state.stage_name}"', conv.filename, at=name)
    return done[found.index].root
