"""RUN: the argv (SHELL, heredocs), the mounts, and the ExecOp."""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Mapping

from ..._graph import ExecMount, ExecOp, FileOp, Mkfile
from .._ast import Heredoc
from .._instructions import Mount, RunCommand
from ._context import Conversion
from ._names import prefix_command, uppercase_command
from ._state import StageState

DEFAULT_SHELL = ("/bin/sh", "-c")
WINDOWS_SHELL = ("cmd", "/S", "/C")
_SINGLE_HEREDOC = re.compile(r"\d*<<-?\s*([\"']?)([^\s\"'<]+)\1")
_PIPES = "/dev/pipes/"


def with_shell(state: StageState, args: tuple[str, ...]) -> tuple[str, ...]:
    """Shell form: the stage's SHELL, else its platform's default, as BuildKit's
    defaultShell (``cmd /S /C`` on Windows)."""
    default = WINDOWS_SHELL if state.platform.os == "windows" else DEFAULT_SHELL
    shell = state.config.shell or default
    return (*shell, " ".join(args))


class _Inputs:
    """The ExecOp's inputs: the root first (when not scratch), then each mount's."""

    def __init__(self, root: str | None) -> None:
        self.digests: list[str] = [root] if root else []

    def index(self, digest: str | None) -> int | None:
        if digest is None:
            return None
        if digest not in self.digests:
            self.digests.append(digest)
        return self.digests.index(digest)


def dispatch_run(conv: Conversion, state: StageState, command: RunCommand,
                 sources: dict[str, str | None]) -> None:
    """``sources`` maps each ``from=`` of the mounts to that state's root."""
    inputs = _Inputs(state.root)
    root_mount = ExecMount(dest="/", input=0 if state.root else None, output=True)
    args, label, extra = _argv(conv, state, command, inputs)
    mounts = [root_mount, *extra]
    for mount in command.mounts:
        mounts += _mounts(conv, state, command, mount, inputs, sources)
    env = state.env()
    _refuse_nul(conv, command, args, env)
    op = ExecOp(args=args, env=tuple(sorted(f"{k}={v}" for k, v in _run_env(env, command))),
                cwd=state.cwd, user=state.config.user, mounts=tuple(mounts),
                network=_network(conv, command), security=command.security,
                hostname=conv.sandbox_hostname, proxy_env=conv.proxy_env(state),
                ulimits=conv.options.ulimits, shm_size=conv.options.shm_size,
                extra_hosts=conv.options.extra_hosts, cgroup_parent=conv.options.cgroup_parent)
    conv.charge(sum(map(len, op.env)), command.node, env, env)
    shown = conv.display(label, _masked(env, command), command.node)
    name = prefix_command(state, uppercase_command(shown),
                          multi_platform=conv.options.multi_platform,
                          platform=state.platform, target=conv.target_of(state))
    state.root = conv.sink.add(op, inputs.digests, name, state.platform,
                               location=conv.location(command.node))
    state.config.commit("RUN " + _history_args(state, args) + " # buildkit", layer=True)


def _network(conv: Conversion, command: RunCommand) -> str:
    """The RUN's ``--network``; without one (or ``default``), the build's ``--network``, as
    BuildKit's force-network-mode sets the state every RUN inherits."""
    return command.network if command.network != "default" else conv.options.network


def _masked(env: Mapping[str, str], command: RunCommand) -> dict[str, str]:
    """The environment the RUN's name is expanded with: a secret's variable shows as
    ``****`` (BuildKit's withSecretEnvMask), whatever the stage set it to."""
    secrets = {m.env: "****" for m in command.mounts if m.type == "secret" and m.env}
    return {**env, **secrets}


def _refuse_nul(conv: Conversion, command: RunCommand, args: tuple[str, ...],
                env: Mapping[str, str]) -> None:
    """A NUL byte cannot cross execve (it ends a C string): BuildKit passes it on and the
    RUN fails in the runtime (``exec: invalid argument``); we refuse it at the line."""
    if any("\0" in arg for arg in args):
        raise command.node.error("RUN holds a NUL byte, which a command line cannot carry",
                                 conv.filename, at="\0",
                                 hint="remove the NUL byte (\\0) from the instruction")
    named = sorted(key for key, value in env.items() if "\0" in key + value)
    if named:
        raise command.node.error(
            f"RUN's environment variable {named[0]} holds a NUL byte, which a process "
            "environment cannot carry", conv.filename,
            hint="remove the NUL byte (\\0) from the ENV or ARG that sets it")


def _run_env(env: Mapping[str, str], command: RunCommand) -> list[tuple[str, str]]:
    """The RUN's environment: as BuildKit's llb exec, ``SSH_AUTH_SOCK`` is the first ssh
    mount's target, as written (a relative one stays relative: the socket itself is
    placed under the working directory), unless the stage already sets it."""
    ssh = [mount for mount in command.mounts if mount.type == "ssh"]
    if ssh and "SSH_AUTH_SOCK" not in env:
        target = ssh[0].target or _default_target(command, ssh[0])
        return [*env.items(), ("SSH_AUTH_SOCK", target)]
    return list(env.items())


def _argv(conv: Conversion, state: StageState, command: RunCommand, inputs: _Inputs
          ) -> tuple[tuple[str, ...], str, list[ExecMount]]:
    args, label = command.cmd_line, command.node.original
    extra: list[ExecMount] = []
    if command.files:
        args, label, extra = _heredoc_argv(conv, state, command, inputs)
    if command.prepend_shell:
        args = with_shell(state, args)
    return args, label, extra


def _heredoc_argv(conv: Conversion, state: StageState, command: RunCommand,
                  inputs: _Inputs) -> tuple[tuple[str, ...], str, list[ExecMount]]:
    line, first = " ".join(command.cmd_line), command.files[0]
    if not _SINGLE_HEREDOC.fullmatch(line.strip()):
        text = line + "".join(f"\n{doc.content}{doc.name}" for doc in command.files)
        return (text,), command.node.original, []
    label = f"{command.node.original} ({_summary(first.content)})"
    if first.content.startswith("#!") and state.platform.os != "windows":
        return (_PIPES + first.name,), label, [_script_mount(conv, state, first, inputs)]
    return (first.content,), label, []


def _script_mount(conv: Conversion, state: StageState, doc: Heredoc, inputs: _Inputs
                  ) -> ExecMount:
    op = FileOp(actions=(Mkfile(path="/" + doc.name, data=doc.content, mode=0o755),),
                base=None)
    digest = conv.sink.add(op, (), "[internal] preparing inline document", state.platform,
                           location="")
    return ExecMount(dest=_PIPES, input=inputs.index(digest), selector="/", readonly=True)


def _summary(content: str) -> str:
    lines = content.strip().replace("\r\n", "\n").split("\n")
    return lines[0] + ("..." if len(lines) > 1 else "")


def _history_args(state: StageState, args: tuple[str, ...]) -> str:
    """BuildKit's runCommandString: ``|2 A=1 B=2 /bin/sh -c make`` with the stage's ARGs."""
    env = state.env()
    pairs = [f"{key}={env.get(key, value or '')}" for key, value in state.args.items()]
    prefix = [f"|{len(pairs)}", *pairs] if pairs else []
    return " ".join([*prefix, *args])


def _mounts(conv: Conversion, state: StageState, command: RunCommand, mount: Mount,
            inputs: _Inputs, sources: dict[str, str | None]) -> list[ExecMount]:
    """A mount's ExecMounts: one, or two for a secret with both ``env`` and a target (the
    variable and the file, as BuildKit gives both; the variable's mount is the one an
    ``env``-only secret makes, so those keep their digest)."""
    if mount.type == "secret" and mount.env and mount.target:
        as_env = dataclasses.replace(mount, target=None)
        as_file = dataclasses.replace(mount, env=None)
        return [_mount(conv, state, command, m, inputs, sources) for m in (as_env, as_file)]
    return [_mount(conv, state, command, mount, inputs, sources)]


def _mount(conv: Conversion, state: StageState, command: RunCommand, mount: Mount,
           inputs: _Inputs, sources: dict[str, str | None]) -> ExecMount:
    dest = _target(conv, state, command, mount)
    if mount.type == "secret":
        return ExecMount(dest=dest, type="secret", secret_id=mount.id or "",
                         env_name=mount.env or "", required=mount.required,
                         mode=0o400 if mount.mode is None else mount.mode,
                         uid=mount.uid or 0, gid=mount.gid or 0)
    if mount.type == "ssh":
        return ExecMount(dest=dest, type="ssh", ssh_id=mount.id or "default",
                         required=mount.required,
                         mode=0o600 if mount.mode is None else mount.mode,
                         uid=mount.uid or 0, gid=mount.gid or 0)
    if mount.type == "tmpfs":
        return ExecMount(dest=dest, type="tmpfs", size=mount.size)
    return _state_mount(conv, state, mount, dest, inputs, sources)


def _state_mount(conv: Conversion, state: StageState, mount: Mount, dest: str,
                 inputs: _Inputs, sources: dict[str, str | None]) -> ExecMount:
    if mount.from_:
        source = sources.get(mount.from_)
    elif mount.type == "cache":
        source = None
    else:
        source = conv.context_source()
        conv.context_paths.add(_absolute(mount.source or ""))
    selector = _absolute(mount.source or "")
    index, selector = inputs.index(source), ("" if selector == "/" else selector)
    if mount.type == "cache":
        return ExecMount(dest=dest, input=index, selector=selector,
                         readonly=mount.read_only, type="cache",
                         cache_id=mount.id or dest, sharing=mount.sharing,
                         mode=mount.mode, uid=mount.uid, gid=mount.gid)
    return ExecMount(dest=dest, input=index, selector=selector, readonly=mount.read_only)


def _absolute(path: str) -> str:
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def _target(conv: Conversion, state: StageState, command: RunCommand, mount: Mount) -> str:
    target = mount.target or _default_target(command, mount)
    dest = _absolute(posixpath.join(state.cwd, target))
    if dest == "/":
        raise command.node.error(f'invalid mount target "{target}"', conv.filename,
                                 at="--mount")
    return dest


def _default_target(command: RunCommand, mount: Mount) -> str:
    if mount.type == "secret":
        return "/run/secrets/" + (mount.id or "")
    if mount.type == "ssh":
        index = [m for m in command.mounts if m.type == "ssh"].index(mount)
        return f"/run/buildkit/ssh_agent.{index}"
    return ""
