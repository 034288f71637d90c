"""AST -> typed commands: each Dockerfile instruction with its flags checked and parsed.

Reads only the parser's ``_ast``; its helpers ``_flags`` (BFlags-style flag parsing, the
Go value parsers) and ``_runmount`` (RUN's ``--mount``/``--network``/``--security``) are
part of this layer.  Words stay *unexpanded* here: variable expansion needs the build
state (ARG/ENV values in scope), which only the converter has, so each command that
BuildKit expands offers ``expand(expander)`` returning an expanded copy.  An expander is
a callable ``str -> str`` (a single-word expansion with quote removal, see ``shell``).
Commands BuildKit never expands (RUN/CMD/ENTRYPOINT lines, SHELL, HEALTHCHECK, ONBUILD,
MAINTAINER) return themselves from ``expand``.

Every command keeps its ``node`` for positions; every error is a ``DockerfileError`` made
with ``node.error(...)``.  Semantics and error texts follow BuildKit's
``frontend/dockerfile/instructions`` (parse.go, bflag.go, commands_run*.go).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from .._errors import DockerfileError
from ._ast import Heredoc, Node, ParseResult
from ._flags import (
    BOOL,
    STRING,
    STRINGS,
    Flags,
    Invalid,
    go_duration,
    go_int32,
    go_quote,
    go_uint,
    suggest,
)
from ._interrupt import checkpoint
from ._runmount import RUN_FLAGS, Mount, parse_mounts, run_network, run_security

__all__ = [
    "AddCommand", "ArgCommand", "ArgSpec", "CmdCommand", "Command", "CopyCommand",
    "Dockerfile", "EntrypointCommand", "EnvCommand", "ExposeCommand", "Expander",
    "FromCommand", "HealthConfig", "HealthcheckCommand", "KeyValue", "LabelCommand",
    "MaintainerCommand", "Mount", "OnbuildCommand", "RunCommand", "ShellCommand",
    "ShellDependentCommand", "Stage", "StopSignalCommand", "UserCommand", "VolumeCommand",
    "WorkdirCommand", "parse_command", "parse_dockerfile",
]

Expander = Callable[[str], str]
WordsExpander = Callable[[str], Sequence[str]]
_C = TypeVar("_C", bound="Command")


@contextmanager
def _located(node: Node, filename: str) -> Iterator[None]:
    try:
        yield
    except Invalid as exc:
        raise node.error(exc.message, filename, at=exc.at) from None


_T = TypeVar("_T")


def _at_node(node: Node, filename: str, expander: Callable[[str], _T]) -> Callable[[str], _T]:
    """``expander`` whose errors (positionless, from ``shell``) point at the word in ``node``."""
    def expand(word: str) -> _T:
        try:
            return expander(word)
        except DockerfileError as exc:
            raise node.error(exc.message, filename, at=word, hint=exc.hint) from None
    return expand


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True, slots=True)
class KeyValue:
    """ENV/LABEL pair (value always present)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """One ARG declaration: ``name`` or ``name=default`` (``default`` None when absent)."""

    key: str
    default: str | None = None



@dataclass(frozen=True, slots=True)
class HealthConfig:
    """HEALTHCHECK settings; durations in nanoseconds (0 = unset, inherit the default).

    ``test`` is as in the image config: ``("NONE",)``, ``("CMD", arg...)`` for the JSON form
    or ``("CMD-SHELL", line)`` for the shell form.
    """

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command: the node it came from."""

    node: Node

    @property
    def name(self) -> str:
        return self.node.instruction

    def expand(self: _C, expander: Expander, filename: str = "Dockerfile") -> _C:
        """An expanded copy; the base (commands BuildKit never expands) returns ``self``."""
        return self


@dataclass(frozen=True, slots=True)
class EnvCommand(Command):
    env: tuple[KeyValue, ...]

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> EnvCommand:
        expander = _at_node(self.node, filename, expander)
        return dataclasses.replace(self, env=_expand_pairs(self.env, expander))


@dataclass(frozen=True, slots=True)
class LabelCommand(Command):
    labels: tuple[KeyValue, ...]

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> LabelCommand:
        expander = _at_node(self.node, filename, expander)
        return dataclasses.replace(self, labels=_expand_pairs(self.labels, expander))


@dataclass(frozen=True, slots=True)
class MaintainerCommand(Command):
    maintainer: str


@dataclass(frozen=True, slots=True)
class ArgCommand(Command):
    """ARG.  ``expand`` expands the defaults only, never the names (BuildKit skips the
    default altogether when a ``--build-arg`` gives the value: the converter's choice)."""

    args: tuple[ArgSpec, ...]

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> ArgCommand:
        expander = _at_node(self.node, filename, expander)
        args = tuple(ArgSpec(a.key, None if a.default is None else expander(a.default))
                     for a in self.args)
        return dataclasses.replace(self, args=args)


@dataclass(frozen=True, slots=True)
class WorkdirCommand(Command):
    path: str

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> WorkdirCommand:
        expander = _at_node(self.node, filename, expander)
        return dataclasses.replace(self, path=expander(self.path))


@dataclass(frozen=True, slots=True)
class UserCommand(Command):
    user: str

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> UserCommand:
        expander = _at_node(self.node, filename, expander)
        return dataclasses.replace(self, user=expander(self.user))


@dataclass(frozen=True, slots=True)
class ExposeCommand(Command):
    """EXPOSE; ``ports`` sorted as strings (BuildKit sorts the raw words).  BuildKit
    expands each word with word *splitting* (``ProcessWords``): use ``expand_words``;
    ``expand`` is the single-word fallback."""

    ports: tuple[str, ...]

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> ExposeCommand:
        expander = _at_node(self.node, filename, expander)
        return dataclasses.replace(self, ports=tuple(expander(p) for p in self.ports))

    def expand_words(self, expander: WordsExpander, filename: str = "Dockerfile"
                     ) -> ExposeCommand:
        ports = tuple(word for port in self.ports
                      for word in _at_node(self.node, filename, expander)(port))
        return dataclasses.replace(self, ports=ports)


@dataclass(frozen=True, slots=True)
class VolumeCommand(Command):
    volumes: tuple[str, ...]

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> VolumeCommand:
        expander = _at_node(self.node, filename, expander)
        return dataclasses.replace(self, volumes=tuple(expander(v) for v in self.volumes))


@dataclass(frozen=True, slots=True)
class StopSignalCommand(Command):
    signal: str

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> StopSignalCommand:
        expander = _at_node(self.node, filename, expander)
        return dataclasses.replace(self, signal=expander(self.signal))


@dataclass(frozen=True, slots=True)
class ShellCommand(Command):
    shell: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShellDependentCommand(Command):
    """RUN/CMD/ENTRYPOINT: ``cmd_line`` is the JSON list, or ``(line,)`` for the shell form
    (``prepend_shell=True``: the converter wraps it in the stage's SHELL); ``()`` when
    empty.  ``files`` are the heredocs of the line."""

    cmd_line: tuple[str, ...]
    prepend_shell: bool
    files: tuple[Heredoc, ...] = ()


@dataclass(frozen=True, slots=True)
class RunCommand(ShellDependentCommand):
    """``mounts`` are parsed from the raw flags; ``network``: default|none|host;
    ``security``: sandbox|insecure.  ``mount_specs`` are the ``--mount`` values as written
    (quotes removed), re-read by ``expand``; ``devices`` the ``--device`` values."""

    mounts: tuple[Mount, ...] = ()
    network: str = "default"
    security: str = "sandbox"
    mount_specs: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> RunCommand:
        expander = _at_node(self.node, filename, expander)
        with _located(self.node, filename):
            mounts = parse_mounts(self.mount_specs, expander)
        return dataclasses.replace(self, mounts=mounts)


@dataclass(frozen=True, slots=True)
class CmdCommand(ShellDependentCommand):
    pass


@dataclass(frozen=True, slots=True)
class EntrypointCommand(ShellDependentCommand):
    pass


@dataclass(frozen=True, slots=True)
class HealthcheckCommand(Command):
    health: HealthConfig


@dataclass(frozen=True, slots=True)
class CopyCommand(Command):
    """COPY.  ``sources`` are the source paths as written, heredoc words (``<<EOF``)
    excluded; ``source_contents`` holds the heredoc sources (``Heredoc.name`` is the file
    name), as BuildKit splits SourcePaths/SourceContents.  ``from_``: stage name, stage
    index or image reference.  ``chown``/``chmod`` raw strings (chmod octal like ``755`` or
    symbolic like ``u=rwX,go=rX``).

    ``expand`` covers sources, dest, chown and chmod.  BuildKit expands ``--from`` only
    against the global (meta) ARGs when it links stages, so that is ``expand_from``."""

    sources: tuple[str, ...]
    dest: str
    source_contents: tuple[Heredoc, ...] = ()
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
    exclude: tuple[str, ...] = ()

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> CopyCommand:
        expander = _at_node(self.node, filename, expander)
        with _located(self.node, filename):
            chmod = _expand_chmod(self.chmod, expander)
        return dataclasses.replace(
            self, sources=tuple(expander(s) for s in self.sources), dest=expander(self.dest),
            chown=_expand_opt(self.chown, expander), chmod=chmod)

    def expand_from(self, expander: Expander, filename: str = "Dockerfile") -> CopyCommand:
        expander = _at_node(self.node, filename, expander)
        return dataclasses.replace(self, from_=_expand_opt(self.from_, expander))


@dataclass(frozen=True, slots=True)
class AddCommand(Command):
    """ADD: COPY's fields (no ``from_``/``parents``) plus URL/git options.  ``unpack`` None
    means the default (extract local archives, not remote ones).  ``expand`` covers
    sources, dest, chown, chmod and checksum (not ``exclude``)."""

    sources: tuple[str, ...]
    dest: str
    source_contents: tuple[Heredoc, ...] = ()
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    exclude: tuple[str, ...] = ()
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None

    def expand(self, expander: Expander, filename: str = "Dockerfile") -> AddCommand:
        expander = _at_node(self.node, filename, expander)
        with _located(self.node, filename):
            chmod = _expand_chmod(self.chmod, expander)
        return dataclasses.replace(
            self, sources=tuple(expander(s) for s in self.sources), dest=expander(self.dest),
            chown=_expand_opt(self.chown, expander), chmod=chmod,
            checksum=_expand_opt(self.checksum, expander))


@dataclass(frozen=True, slots=True)
class OnbuildCommand(Command):
    """``expression`` is the trigger as written (e.g. ``"RUN make"``), stored in the image
    config's OnBuild list; heredoc bodies are appended as BuildKit does."""

    expression: str


@dataclass(frozen=True, slots=True)
class FromCommand(Command):
    """FROM as a command (``parse_command``); ``parse_dockerfile`` turns it into a Stage."""

    base_name: str
    stage_name: str | None = None
    original_name: str | None = None
    platform: str | None = None


@dataclass(frozen=True, slots=True)
class Stage:
    """One FROM and the commands under it.  ``name`` is lower-cased (BuildKit matches stage
    names case-insensitively), ``original_name`` as written; ``index`` counts stages from 0.
    ``base_name`` and ``platform`` are unexpanded: ``expand_base`` expands them with the
    global (meta) ARGs, as BuildKit does."""

    node: Node
    index: int
    base_name: str
    name: str | None = None
    original_name: str | None = None
    platform: str | None = None
    commands: tuple[Command, ...] = ()

    def expand_base(self, expander: Expander, filename: str = "Dockerfile") -> Stage:
        expander = _at_node(self.node, filename, expander)
        return dataclasses.replace(self, base_name=expander(self.base_name),
                                   platform=_expand_opt(self.platform, expander))


@dataclass(frozen=True, slots=True)
class Dockerfile:
    """The typed Dockerfile: ARGs before the first FROM and the stages in order."""

    filename: str
    meta_args: tuple[ArgCommand, ...]
    stages: tuple[Stage, ...]


def _expand_pairs(pairs: tuple[KeyValue, ...], expander: Expander) -> tuple[KeyValue, ...]:
    return tuple(KeyValue(expander(p.key), expander(p.value)) for p in pairs)


def _expand_opt(value: str | None, expander: Expander) -> str | None:
    return None if value is None else expander(value)


def _expand_chmod(value: str | None, expander: Expander) -> str | None:
    if value is None:
        return None
    expanded = expander(value)
    _check_chmod(expanded, value)
    return expanded


_SYMBOLIC_MODE = re.compile(r"[ugoa]*(?:[-+=](?:[rwxXst]*|[ugo]))+")


def _check_chmod(value: str, at: str) -> None:
    """BuildKit's --chmod rule: octal up to 07777, or a symbolic mode (``u=rwX,go=rX``)."""
    octal = go_uint(value, 8)
    if octal is not None and octal <= 0o7777:
        return
    if octal is None and not value.isdigit() and all(
            _SYMBOLIC_MODE.fullmatch(clause) for clause in value.split(",")):
        return
    raise Invalid(f"invalid chmod parameter: '{value}'. it should be octal string and "
                   "between 0 and 07777", at)

# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True, slots=True)
class _Request:
    """One node being parsed: its words and its flags (quotes removed)."""

    node: Node
    args: tuple[str, ...]

    @property
    def keyword(self) -> str:
        return self.node.instruction.upper()

    def flags(self, spec: dict[str, str]) -> Flags:
        return Flags(self.node.flags, spec)


def _request(node: Node) -> _Request:
    args = node.args
    if len(args) == 1 and args[0] == "" and not node.json:
        args = ()
    return _Request(node, args)


def _at_least_one(req: _Request) -> None:
    if not req.args:
        raise Invalid(f"{req.keyword} requires at least one argument")


def _exactly_one(req: _Request) -> str:
    if len(req.args) != 1:
        raise Invalid(f"{req.keyword} requires exactly one argument")
    return req.args[0]


def _cmd_line(req: _Request, args: Sequence[str]) -> tuple[str, ...]:
    """BuildKit's handleJSONArgs: the JSON list, or the words joined into one line."""
    if not args:
        return ()
    return tuple(args) if req.node.json else (" ".join(args),)


def _pairs(req: _Request) -> tuple[KeyValue, ...]:
    _at_least_one(req)
    if len(req.args) % 2:
        raise Invalid(f"Bad input to {req.keyword}, too many arguments")
    pairs = tuple(KeyValue(k, v) for k, v in zip(req.args[::2], req.args[1::2], strict=True))
    if any(not pair.key for pair in pairs):
        raise Invalid(f"{req.keyword} names can not be blank")
    return pairs


def _parse_env(req: _Request) -> Command:
    req.flags({})
    return EnvCommand(req.node, _pairs(req))


def _parse_label(req: _Request) -> Command:
    req.flags({})
    return LabelCommand(req.node, _pairs(req))


def _parse_maintainer(req: _Request) -> Command:
    maintainer = _exactly_one(req)
    req.flags({})
    return MaintainerCommand(req.node, maintainer)


def _parse_workdir(req: _Request) -> Command:
    path = _exactly_one(req)
    req.flags({})
    return WorkdirCommand(req.node, path)


def _parse_user(req: _Request) -> Command:
    user = _exactly_one(req)
    req.flags({})
    return UserCommand(req.node, user)


def _parse_stopsignal(req: _Request) -> Command:
    # BuildKit never parses STOPSIGNAL's flags: they are ignored.
    return StopSignalCommand(req.node, _exactly_one(req))


def _parse_expose(req: _Request) -> Command:
    _at_least_one(req)
    req.flags({})
    return ExposeCommand(req.node, tuple(sorted(req.args)))


def _parse_volume(req: _Request) -> Command:
    _at_least_one(req)
    req.flags({})
    volumes = tuple(v.strip() for v in req.args)
    if any(not v for v in volumes):
        raise Invalid("VOLUME specified can not be an empty string")
    return VolumeCommand(req.node, volumes)


def _parse_arg(req: _Request) -> Command:
    _at_least_one(req)
    req.flags({})
    specs: list[ArgSpec] = []
    for word in req.args:
        key, has_value, value = word.partition("=")
        if has_value and not key:
            raise Invalid("ARG names can not be blank", word)
        specs.append(ArgSpec(key, value if has_value else None))
    return ArgCommand(req.node, tuple(specs))


def _parse_shell(req: _Request) -> Command:
    req.flags({})
    line = _cmd_line(req, req.args)
    if not line:
        raise Invalid("SHELL requires at least one argument")
    if not req.node.json:
        raise Invalid("SHELL requires the arguments to be in JSON form")
    return ShellCommand(req.node, line)


def _parse_cmd(req: _Request) -> Command:
    req.flags({})
    return CmdCommand(req.node, _cmd_line(req, req.args), not req.node.json, req.node.heredocs)


def _parse_entrypoint(req: _Request) -> Command:
    req.flags({})
    return EntrypointCommand(req.node, _cmd_line(req, req.args), not req.node.json,
                             req.node.heredocs)


def _parse_run(req: _Request) -> Command:
    flags = req.flags(RUN_FLAGS)
    specs = flags.strings("mount")
    mounts = parse_mounts(specs, None)
    return RunCommand(req.node, _cmd_line(req, req.args), not req.node.json, req.node.heredocs,
                      mounts=mounts, network=run_network(flags), security=run_security(flags),
                      mount_specs=specs, devices=flags.strings("device"))


_HEALTH_FLAGS = {"interval": STRING, "timeout": STRING, "start-period": STRING,
                 "start-interval": STRING, "retries": STRING}


def _parse_healthcheck(req: _Request) -> Command:
    _at_least_one(req)
    kind, rest = req.args[0].upper(), req.args[1:]
    if kind == "NONE":
        if rest:
            raise Invalid("HEALTHCHECK NONE takes no arguments")
        return HealthcheckCommand(req.node, HealthConfig(("NONE",)))  # flags ignored
    flags = req.flags(_HEALTH_FLAGS)
    if kind != "CMD":
        raise Invalid(f"Unknown type {go_quote(kind)} in HEALTHCHECK (try CMD)", req.args[0])
    line = _cmd_line(req, rest)
    if not line:
        raise Invalid("Missing command after HEALTHCHECK CMD")
    test = ("CMD" if req.node.json else "CMD-SHELL",) + line
    return HealthcheckCommand(req.node, _health_config(flags, test))


def _health_config(flags: Flags, test: tuple[str, ...]) -> HealthConfig:
    interval, timeout, start_period, start_interval = (
        _health_duration(flags, name)
        for name in ("interval", "timeout", "start-period", "start-interval"))
    retries = 0
    if flags.string("retries"):
        retries = go_int32(flags.string("retries") or "", flags.used["retries"])
        if retries < 0:
            raise Invalid(f"--retries cannot be negative ({retries})", flags.used["retries"])
    return HealthConfig(test, interval=interval, timeout=timeout, start_period=start_period,
                        start_interval=start_interval, retries=retries)


def _health_duration(flags: Flags, name: str) -> int:
    text = flags.string(name)
    if not text:
        return 0
    value = go_duration(text, flags.used[name])
    if value != 0 and value < 10**6:
        raise Invalid(f"Interval {go_quote(name)} cannot be less than 1ms", flags.used[name])
    return value


_HEREDOC_WORD = re.compile(r"([0-9]*)<<(-?)([^<]*)")


def _heredoc_name(word: str) -> str | None:
    match = _HEREDOC_WORD.fullmatch(word)
    if match is None:
        return None
    name = match.group(3).replace('"', "").replace("'", "")
    return name or None


def _sources(req: _Request) -> tuple[tuple[str, ...], str, tuple[Heredoc, ...]]:
    *sources, dest = req.args
    if _heredoc_name(dest) is not None:
        raise Invalid(f"{req.keyword} cannot accept a heredoc as a destination", dest)
    documents = {doc.name: doc for doc in req.node.heredocs}
    paths: list[str] = []
    contents: list[Heredoc] = []
    for source in sources:
        name = _heredoc_name(source)
        if name is not None and name in documents:
            contents.append(documents[name])
        else:
            paths.append(source)
    return tuple(paths), dest, tuple(contents)


def _two_args(req: _Request) -> None:
    if len(req.args) < 2:
        raise Invalid(f"{req.keyword} requires at least two arguments, but only one was "
                       "provided. Destination could not be determined")


_COPY_FLAGS = {"chown": STRING, "from": STRING, "chmod": STRING, "link": BOOL,
               "exclude": STRINGS, "parents": BOOL}
_ADD_FLAGS = {"exclude": STRINGS, "chown": STRING, "chmod": STRING, "link": BOOL,
              "keep-git-dir": BOOL, "checksum": STRING, "unpack": BOOL}


def _parse_copy(req: _Request) -> Command:
    _two_args(req)
    flags = req.flags(_COPY_FLAGS)
    sources, dest, contents = _sources(req)
    _check_flag_chmod(flags)
    return CopyCommand(req.node, sources, dest, contents, from_=flags.string("from"),
                       chown=flags.string("chown"), chmod=flags.string("chmod"),
                       link=flags.bool("link"), parents=flags.bool("parents"),
                       exclude=flags.strings("exclude"))


def _parse_add(req: _Request) -> Command:
    _two_args(req)
    flags = req.flags(_ADD_FLAGS)
    sources, dest, contents = _sources(req)
    _check_flag_chmod(flags)
    unpack = flags.bool("unpack") if "unpack" in flags.used else None
    return AddCommand(req.node, sources, dest, contents, chown=flags.string("chown"),
                      chmod=flags.string("chmod"), link=flags.bool("link"),
                      exclude=flags.strings("exclude"), checksum=flags.string("checksum"),
                      keep_git_dir=flags.bool("keep-git-dir"), unpack=unpack)


def _check_flag_chmod(flags: Flags) -> None:
    chmod = flags.string("chmod")
    if chmod is not None and "$" not in chmod:  # else checked by expand()
        _check_chmod(chmod, flags.used["chmod"])


_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")


def _parse_from(req: _Request) -> Command:
    name = _stage_name(req.args)
    flags = req.flags({"platform": STRING})
    original = req.args[2] if name is not None else None
    return FromCommand(req.node, req.args[0], name, original, flags.string("platform"))


def _stage_name(args: tuple[str, ...]) -> str | None:
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.fullmatch(name):
            raise Invalid(f"invalid name for build stage: {go_quote(args[2])}, name can't "
                           "start with a number or contain symbols", args[2])
        return name
    if len(args) != 1:
        raise Invalid("FROM requires either one or three arguments")
    return None


_ONBUILD_PREFIX = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)


def _parse_onbuild(req: _Request) -> Command:
    _at_least_one(req)
    req.flags({})
    sub = req.node.sub
    trigger = (sub.instruction if sub else (req.args[0].split() or [""])[0]).upper()
    if trigger == "ONBUILD":
        raise Invalid("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", req.args[0])
    if trigger in ("MAINTAINER", "FROM"):
        raise Invalid(f"{trigger} isn't allowed as an ONBUILD trigger", req.args[0])
    expression = _ONBUILD_PREFIX.sub("", req.node.original or req.args[0], count=1)
    for doc in req.node.heredocs or (sub.heredocs if sub else ()):
        expression += "\n" + doc.content + doc.name
    return OnbuildCommand(req.node, expression)


_PARSERS: dict[str, Callable[[_Request], Command]] = {
    "add": _parse_add, "arg": _parse_arg, "cmd": _parse_cmd, "copy": _parse_copy,
    "entrypoint": _parse_entrypoint, "env": _parse_env, "expose": _parse_expose,
    "from": _parse_from, "healthcheck": _parse_healthcheck, "label": _parse_label,
    "maintainer": _parse_maintainer, "onbuild": _parse_onbuild, "run": _parse_run,
    "shell": _parse_shell, "stopsignal": _parse_stopsignal, "user": _parse_user,
    "volume": _parse_volume, "workdir": _parse_workdir,
}


def parse_command(node: Node, filename: str) -> Command:
    """The typed command of one node (FROM gives a ``FromCommand``)."""
    parser = _PARSERS.get(node.instruction.lower())
    if parser is None:
        message = suggest(f"unknown instruction: {node.keyword.upper()}",
                           node.keyword.upper(), [name.upper() for name in _PARSERS])
        raise node.error(message, filename)
    with _located(node, filename):
        command = parser(_request(node))
    return command


def parse_dockerfile(result: ParseResult) -> Dockerfile:
    """Meta ARGs (before the first FROM) and the stages, each with its commands."""
    meta: list[ArgCommand] = []
    heads: list[FromCommand] = []
    bodies: list[list[Command]] = []
    for node in result.nodes:
        checkpoint()
        command = parse_command(node, result.filename)
        if isinstance(command, FromCommand):
            heads.append(command)
            bodies.append([])
        elif bodies:
            bodies[-1].append(command)
        elif isinstance(command, ArgCommand):
            meta.append(command)
        else:
            raise node.error("no build stage in current context", result.filename)
    stages = tuple(Stage(head.node, index, head.base_name, head.stage_name, head.original_name,
                         head.platform, tuple(body))
                   for index, (head, body) in enumerate(zip(heads, bodies, strict=True)))
    return Dockerfile(result.filename, tuple(meta), stages)
