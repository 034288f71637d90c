"""WORKDIR: join relative paths, create the directory (a Mkdir action), warn when the
first WORKDIR of a build is relative (WorkdirRelativePath)."""

from __future__ import annotations

import posixpath

from ..._graph import FileOp, Mkdir
from .._goquote import go_quote
from .._instructions import WorkdirCommand
from ._context import Conversion
from ._names import prefix_command, uppercase_command
from ._state import StageState


def dispatch_workdir(conv: Conversion, state: StageState, command: WorkdirCommand) -> None:
    if not state.workdir_set and not command.path.startswith("/"):
        conv.warn("WorkdirRelativePath", f"Relative workdir {go_quote(command.path)} can "
                  "have unexpected results if the base image changes", command.node)
    state.workdir_set = True
    workdir = posixpath.normpath(posixpath.join(state.cwd, command.path))
    workdir = "/" + workdir.lstrip("/")
    state.config.working_dir = workdir
    if workdir == "/":
        state.config.commit("WORKDIR /", layer=False)
        return
    node = command.node
    name = prefix_command(state, uppercase_command(conv.display(node.original, state.env(), node)),
                          multi_platform=conv.options.multi_platform,
                          platform=state.platform)
    op = FileOp(actions=(Mkdir(path=workdir, make_parents=True,
                               chown=state.config.user),),
                base=0 if state.root else None)
    state.root = conv.sink.add(op, [state.root] if state.root else [], name, state.platform,
                               location=conv.location(command.node))
    state.config.commit("WORKDIR " + workdir, layer=True)
