"""AST -> typed commands: each Dockerfile instruction with its flags checked and parsed.

Reads only ``_ast``.  Words stay *unexpanded* here: variable expansion needs the build
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
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

from .._errors import DockerfileError
from ._ast import Heredoc, Node, ParseResult

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


class _Invalid(Exception):
    """Internal: a rejected input, turned into a positioned ``DockerfileError`` by
    ``_located`` before it leaves this module.  ``at`` is the text to point at."""

    def __init__(self, message: str, at: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.at = at


@contextmanager
def _located(node: Node, filename: str) -> Iterator[None]:
    try:
        yield
    except _Invalid as exc:
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
class Mount:
    """One ``RUN --mount=...`` (BuildKit's defaults applied by the parser).

    ``type``: bind|cache|tmpfs|secret|ssh.  ``target`` is required except for secret (default
    ``/run/secrets/<id>``, none when ``env`` is set) and ssh (default
    ``/run/buildkit/ssh_agent.<n>``, n counting the ssh mounts of the RUN from 0); BuildKit
    itself only rejects a target resolving to ``/`` (the converter's check).  ``from_``:
    stage name/index or image for bind/cache.  ``read_only``: bind/secret/ssh default True
    (``rw`` flips it), cache/tmpfs default False.  ``id``: cache id (default: the target),
    secret id (default: ``source``, else basename of target), ssh id (default
    ``"default"``).  ``sharing``: shared|private|locked (cache only).
    ``mode``/``uid``/``gid``: ints, None when unset.  ``size``: tmpfs size limit in bytes.
    ``env``: secret exposed as an environment variable.

    Before ``RunCommand.expand`` the values are as written (a value holding ``$`` is not
    validated yet); after it, fully checked.
    """

    type: str
    target: str | None = None
    source: str | None = None
    from_: str | None = None
    read_only: bool = False
    id: str | None = None
    sharing: str = "shared"
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    env: str | None = None


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
            mounts = _parse_mounts(self.mount_specs, expander)
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


# --------------------------------------------------------------------------- Go values

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _go_quote(text: str) -> str:
    """Go's ``%q`` for the texts that appear in messages."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _go_bool(text: str) -> bool | None:
    """strconv.ParseBool; None when invalid."""
    if text in _GO_TRUE:
        return True
    return False if text in _GO_FALSE else None


def _go_uint(text: str, base: int, bits: int = 32) -> int | None:
    """strconv.ParseUint(text, base, bits); None when invalid or out of range."""
    digits = "01234567" if base == 8 else "0123456789"
    if not text or len(text) > 40 or any(ch not in digits for ch in text):
        return None
    value = int(text, base)
    return value if value < 1 << bits else None


def _go_int32(text: str, flag: str) -> int:
    """strconv.ParseInt(text, 10, 32) with Go's error texts."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise _Invalid(f"strconv.ParseInt: parsing {_go_quote(text)}: invalid syntax", flag)
    value = int(text) if len(text) < 40 else 1 << 40
    if not -(1 << 31) <= value < 1 << 31:
        raise _Invalid(f"strconv.ParseInt: parsing {_go_quote(text)}: value out of range", flag)
    return value


_DURATION_UNITS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6,
                   "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")


def _go_duration(text: str, at: str) -> int:
    """time.ParseDuration, in nanoseconds, with Go's error texts."""
    rest, sign = text, 1
    if rest[:1] in ("+", "-"):
        sign, rest = (-1 if rest[0] == "-" else 1), rest[1:]
    if rest == "0":
        return 0
    invalid = _Invalid(f"time: invalid duration {_go_quote(text)}", at)
    if not rest:
        raise invalid
    total = Fraction(0)
    while rest:
        number = _NUMBER.match(rest)
        assert number is not None  # the pattern matches the empty string
        whole, frac = number.group(1), number.group(2) or ""
        if (not whole and not frac) or len(whole) > 30:
            raise invalid  # Go: no digits, or an overflowing integer part
        frac = frac[:30]  # Go ignores digits beyond its precision
        rest = rest[number.end():]
        unit = _UNIT.match(rest)
        assert unit is not None
        if not unit.group(0):
            raise _Invalid(f"time: missing unit in duration {_go_quote(text)}", at)
        if unit.group(0) not in _DURATION_UNITS:
            raise _Invalid(f"time: unknown unit {_go_quote(unit.group(0))} in duration "
                           f"{_go_quote(text)}", at)
        value = Fraction(int(whole or "0")) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
        total += value * _DURATION_UNITS[unit.group(0)]
        rest = rest[unit.end():]
    if total >= 1 << 63:
        raise invalid
    return sign * int(total)


_RAM = re.compile(r"([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?")


def _ram_in_bytes(text: str) -> int | None:
    """go-units RAMInBytes (binary multiples); None when invalid."""
    match = _RAM.fullmatch(text)
    if match is None or match.group(1).count(".") > 1:
        return None
    power = " kmgtp".index(match.group(2).lower()) if match.group(2) else 0
    size = float(match.group(1)[:30]) * 1024**power
    return int(size) if size < 2**63 else None


_SYMBOLIC_MODE = re.compile(r"[ugoa]*(?:[-+=](?:[rwxXst]*|[ugo]))+")


def _check_chmod(value: str, at: str) -> None:
    """BuildKit's --chmod rule: octal up to 07777, or a symbolic mode (``u=rwX,go=rX``)."""
    octal = _go_uint(value, 8)
    if octal is not None and octal <= 0o7777:
        return
    if octal is None and not value.isdigit() and all(
            _SYMBOLIC_MODE.fullmatch(clause) for clause in value.split(",")):
        return
    raise _Invalid(f"invalid chmod parameter: '{value}'. it should be octal string and "
                   "between 0 and 07777", at)


def _levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _suggest(message: str, value: str, options: Sequence[str]) -> str:
    """BuildKit's suggest.WrapError (case-sensitive): the closest option under distance 3."""
    best, best_distance = "", 3
    for option in options:
        if option == value:
            return message
        distance = _levenshtein(value, option)
        if distance < best_distance:
            best, best_distance = option, distance
    return f"{message} (did you mean {best}?)" if best else message


# --------------------------------------------------------------------------- flags

_BOOL, _STRING, _STRINGS = "bool", "string", "strings"


class _Flags:
    """The flags one instruction accepts, parsed as BuildKit's BFlags parses them."""

    def __init__(self, words: Sequence[str], spec: dict[str, str]) -> None:
        self.spec = spec
        self.used: dict[str, str] = {}
        self.values: dict[str, list[str]] = {}
        for raw in words:
            if raw == "--":
                break
            self._take(raw)

    def _take(self, raw: str) -> None:
        word = raw  # the parser has removed quotes and escapes, as BuildKit's does
        if not word.startswith("--"):
            raise _Invalid(f"arg should start with -- : {word}", raw)
        name, has_value, value = word[2:].partition("=")
        kind = self.spec.get(name)
        if kind is None:
            raise _Invalid(_suggest(f"unknown flag: {name}", name, list(self.spec)), raw)
        if name in self.used and kind != _STRINGS:
            raise _Invalid(f"duplicate flag specified: {name}", raw)
        self.used[name] = raw
        self.values.setdefault(name, []).append(self._value(kind, name, has_value, value, raw))

    @staticmethod
    def _value(kind: str, name: str, has_value: str, value: str, raw: str) -> str:
        if kind == _BOOL:
            if has_value and not value:
                raise _Invalid(f"missing a value on flag: {name}", raw)
            if value.lower() not in ("", "true", "false"):
                raise _Invalid(f"expecting boolean value for flag {name}, not: {value}", raw)
            return value.lower() or "true"
        if not has_value:
            raise _Invalid(f"missing a value on flag: {name}", raw)
        return value

    def string(self, name: str) -> str | None:
        values = self.values.get(name)
        return values[-1] if values else None

    def strings(self, name: str) -> tuple[str, ...]:
        return tuple(self.values.get(name, ()))

    def bool(self, name: str) -> bool:
        return self.string(name) == "true"


# --------------------------------------------------------------------------- RUN --mount

_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_SHARING = ("shared", "private", "locked")
_MOUNT_KEYS = ("type", "from", "source", "target", "readonly", "id", "sharing", "required",
               "size", "mode", "uid", "gid", "src", "dst", "destination", "ro", "rw",
               "readwrite", "env")


def _csv_fields(text: str) -> list[str]:
    """One CSV record as Go's encoding/csv reads it (``"`` quoting, ``""`` escapes)."""
    fields: list[str] = []
    index = 0
    while True:
        if text.startswith('"', index):
            field, index = _csv_quoted(text, index + 1)
        else:
            end = text.find(",", index)
            field = text[index:] if end < 0 else text[index:end]
            if '"' in field:
                raise _Invalid('failed to parse csv mounts: bare " in non-quoted field')
            index = len(text) if end < 0 else end
        fields.append(field)
        if index >= len(text):
            return fields
        index += 1  # the comma


def _csv_quoted(text: str, index: int) -> tuple[str, int]:
    out: list[str] = []
    while True:
        end = text.find('"', index)
        if end < 0:
            raise _Invalid('failed to parse csv mounts: extraneous or missing " in quoted-field')
        out.append(text[index:end])
        if text.startswith('"', end + 1):
            out.append('"')
            index = end + 2
            continue
        if end + 1 < len(text) and text[end + 1] != ",":
            raise _Invalid('failed to parse csv mounts: extraneous or missing " in quoted-field')
        return "".join(out), end + 1


@dataclass(slots=True)
class _MountDraft:
    """A mount being read; ``read_only`` None until a ro/rw option decides it."""

    type: str = "bind"
    values: dict[str, object] = dataclasses.field(default_factory=dict)
    read_only: bool | None = None
    sharing: str | None = None


def _parse_mounts(specs: Sequence[str], expander: Expander | None) -> tuple[Mount, ...]:
    mounts: list[Mount] = []
    for spec in specs:
        draft = _read_mount(spec, expander)
        ssh_index = sum(1 for m in mounts if m.type == "ssh")
        mounts.append(_finish_mount(draft, ssh_index, spec))
    return tuple(mounts)


def _read_mount(spec: str, expander: Expander | None) -> _MountDraft:
    draft = _MountDraft()
    for field in _csv_fields(spec):
        key, has_value, value = field.partition("=")
        key = key.lower()
        if not has_value:
            _mount_bare_key(draft, key, field, spec)
            continue
        if expander is not None:
            value = expander(value)
        elif "$" in value[:-1] and key == "from":
            raise _Invalid(f"'{key}' doesn't support variable expansion, define alias stage "
                           "instead", spec)
        elif "$" in value:
            _mount_deferred(draft, key, value)
            continue
        _mount_option(draft, key, value, field, spec)
    return draft


def _mount_bare_key(draft: _MountDraft, key: str, field: str, spec: str) -> None:
    if key in ("readonly", "ro", "readwrite", "rw"):
        draft.read_only = key in ("readonly", "ro")
    elif key == "required" and draft.type in ("secret", "ssh"):
        draft.values["required"] = True
    elif key == "required":
        raise _Invalid(f"unexpected key '{key}' for mount type '{draft.type}'", spec)
    else:
        raise _Invalid(f"invalid field '{field}' must be a key=value pair", spec)


_MOUNT_ALIASES = {"src": "source", "dst": "target", "destination": "target"}
_MOUNT_STRINGS = {"from": "from_", "source": "source", "target": "target", "id": "id",
                  "env": "env"}


def _mount_deferred(draft: _MountDraft, key: str, value: str) -> None:
    """An unexpanded value: kept as written when it is a plain string option."""
    name = _MOUNT_ALIASES.get(key, key)
    if name in _MOUNT_STRINGS:
        draft.values[_MOUNT_STRINGS[name]] = value


def _mount_option(draft: _MountDraft, key: str, value: str, field: str, spec: str) -> None:
    name = _MOUNT_ALIASES.get(key, key)
    if name in _MOUNT_STRINGS:
        draft.values[_MOUNT_STRINGS[name]] = value
    elif name == "type":
        if value.lower() not in _MOUNT_TYPES:
            raise _Invalid(_suggest(f"unsupported mount type {_go_quote(value)}", value,
                                    _MOUNT_TYPES), spec)
        draft.type = value.lower()
    elif name in ("readonly", "ro", "readwrite", "rw"):
        draft.read_only = _mount_bool(key, value, spec) == (name in ("readonly", "ro"))
    elif name == "required":
        _mount_required(draft, key, value, spec)
    elif name == "size":
        _mount_size(draft, key, value, spec)
    elif name == "sharing":
        if value.lower() not in _SHARING:
            raise _Invalid(_suggest(f"unsupported sharing value {_go_quote(value)}", value,
                                    _SHARING), spec)
        draft.sharing = value.lower()
    elif name in ("mode", "uid", "gid"):
        number = _go_uint(value, 8 if name == "mode" else 10)
        if number is None:
            raise _Invalid(f"invalid value {value} for {name}", spec)
        draft.values[name] = number
    else:
        raise _Invalid(_suggest(f"unexpected key '{key}' in '{field}'", key, _MOUNT_KEYS), spec)


def _mount_bool(key: str, value: str, spec: str) -> bool:
    parsed = _go_bool(value)
    if parsed is None:
        raise _Invalid(f"invalid value for {key}: {value}", spec)
    return parsed


def _mount_required(draft: _MountDraft, key: str, value: str, spec: str) -> None:
    if draft.type not in ("secret", "ssh"):
        raise _Invalid(f"unexpected key '{key}' for mount type '{draft.type}'", spec)
    draft.values["required"] = _mount_bool(key, value, spec)


def _mount_size(draft: _MountDraft, key: str, value: str, spec: str) -> None:
    if draft.type != "tmpfs":
        raise _Invalid(f"unexpected key '{key}' for mount type '{draft.type}'", spec)
    size = _ram_in_bytes(value)
    if size is None:
        raise _Invalid(f"invalid value for {key}: {value}", spec)
    draft.values["size"] = size


def _finish_mount(draft: _MountDraft, ssh_index: int, spec: str) -> Mount:
    _check_mount(draft, spec)
    values = draft.values
    read_only = draft.read_only
    if read_only is None:
        read_only = draft.type not in ("cache", "tmpfs")
    mount = Mount(type=draft.type, read_only=read_only, sharing=draft.sharing or "shared",
                  **values)  # type: ignore[arg-type]
    return _mount_defaults(mount, ssh_index)


def _check_mount(draft: _MountDraft, spec: str) -> None:
    values = draft.values
    if draft.type not in ("secret", "ssh", "cache"):
        for name in ("mode", "uid", "gid"):
            if name in values:
                raise _Invalid(f"{name} not allowed for {_go_quote(draft.type)} type mounts", spec)
    if draft.type == "secret":
        _check_secret(draft, spec)
    if draft.sharing is not None and draft.type != "cache":
        raise _Invalid(f"invalid cache sharing set for {draft.type} mount", spec)


def _check_secret(draft: _MountDraft, spec: str) -> None:
    values = draft.values
    if values.get("from_"):
        raise _Invalid("secret mount should not have a from", spec)
    if draft.sharing is not None:
        raise _Invalid("secret mount should not define sharing", spec)
    if not values.get("source") and not values.get("target") and not values.get("id"):
        raise _Invalid("invalid secret mount. one of source, target required", spec)
    if values.get("source") and values.get("id"):
        raise _Invalid("both source and id can't be set", spec)


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) or "/"


def _mount_defaults(mount: Mount, ssh_index: int) -> Mount:
    if mount.type == "cache" and not mount.id:
        return dataclasses.replace(mount, id=mount.target)
    if mount.type == "secret":
        ident = mount.id or mount.source or _basename(mount.target or "")
        target = mount.target
        if not target and mount.env is None:
            target = "/run/secrets/" + _basename(ident)
        return dataclasses.replace(mount, id=ident, target=target)
    if mount.type == "ssh":
        return dataclasses.replace(mount, id=mount.id or "default",
                                   target=mount.target or f"/run/buildkit/ssh_agent.{ssh_index}")
    return mount


# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True, slots=True)
class _Request:
    """One node being parsed: its words and its flags (quotes removed)."""

    node: Node
    args: tuple[str, ...]

    @property
    def keyword(self) -> str:
        return self.node.instruction.upper()

    def flags(self, spec: dict[str, str]) -> _Flags:
        return _Flags(self.node.flags, spec)


def _request(node: Node) -> _Request:
    args = node.args
    if len(args) == 1 and args[0] == "" and not node.json:
        args = ()
    return _Request(node, args)


def _at_least_one(req: _Request) -> None:
    if not req.args:
        raise _Invalid(f"{req.keyword} requires at least one argument")


def _exactly_one(req: _Request) -> str:
    if len(req.args) != 1:
        raise _Invalid(f"{req.keyword} requires exactly one argument")
    return req.args[0]


def _cmd_line(req: _Request, args: Sequence[str]) -> tuple[str, ...]:
    """BuildKit's handleJSONArgs: the JSON list, or the words joined into one line."""
    if not args:
        return ()
    return tuple(args) if req.node.json else (" ".join(args),)


def _pairs(req: _Request) -> tuple[KeyValue, ...]:
    _at_least_one(req)
    if len(req.args) % 2:
        raise _Invalid(f"Bad input to {req.keyword}, too many arguments")
    pairs = tuple(KeyValue(k, v) for k, v in zip(req.args[::2], req.args[1::2], strict=True))
    if any(not pair.key for pair in pairs):
        raise _Invalid(f"{req.keyword} names can not be blank")
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
        raise _Invalid("VOLUME specified can not be an empty string")
    return VolumeCommand(req.node, volumes)


def _parse_arg(req: _Request) -> Command:
    _at_least_one(req)
    req.flags({})
    specs: list[ArgSpec] = []
    for word in req.args:
        key, has_value, value = word.partition("=")
        if has_value and not key:
            raise _Invalid("ARG names can not be blank", word)
        specs.append(ArgSpec(key, value if has_value else None))
    return ArgCommand(req.node, tuple(specs))


def _parse_shell(req: _Request) -> Command:
    req.flags({})
    line = _cmd_line(req, req.args)
    if not line:
        raise _Invalid("SHELL requires at least one argument")
    if not req.node.json:
        raise _Invalid("SHELL requires the arguments to be in JSON form")
    return ShellCommand(req.node, line)


def _parse_cmd(req: _Request) -> Command:
    req.flags({})
    return CmdCommand(req.node, _cmd_line(req, req.args), not req.node.json, req.node.heredocs)


def _parse_entrypoint(req: _Request) -> Command:
    req.flags({})
    return EntrypointCommand(req.node, _cmd_line(req, req.args), not req.node.json,
                             req.node.heredocs)


_RUN_FLAGS = {"mount": _STRINGS, "network": _STRING, "security": _STRING, "device": _STRINGS}


def _parse_run(req: _Request) -> Command:
    flags = req.flags(_RUN_FLAGS)
    specs = flags.strings("mount")
    mounts = _parse_mounts(specs, None)
    network = flags.string("network") or "default"
    if flags.string("network") is not None and network not in ("default", "none", "host"):
        raise _Invalid(f"invalid network mode {_go_quote(network)}", flags.used["network"])
    security = flags.string("security")
    if security is not None and security not in ("sandbox", "insecure"):
        raise _Invalid(f"security {_go_quote(security)} is not valid", flags.used["security"])
    return RunCommand(req.node, _cmd_line(req, req.args), not req.node.json, req.node.heredocs,
                      mounts=mounts, network=network, security=security or "sandbox",
                      mount_specs=specs, devices=flags.strings("device"))


_HEALTH_FLAGS = {"interval": _STRING, "timeout": _STRING, "start-period": _STRING,
                 "start-interval": _STRING, "retries": _STRING}


def _parse_healthcheck(req: _Request) -> Command:
    _at_least_one(req)
    kind, rest = req.args[0].upper(), req.args[1:]
    if kind == "NONE":
        if rest:
            raise _Invalid("HEALTHCHECK NONE takes no arguments")
        return HealthcheckCommand(req.node, HealthConfig(("NONE",)))  # flags ignored
    flags = req.flags(_HEALTH_FLAGS)
    if kind != "CMD":
        raise _Invalid(f"Unknown type {_go_quote(kind)} in HEALTHCHECK (try CMD)", req.args[0])
    line = _cmd_line(req, rest)
    if not line:
        raise _Invalid("Missing command after HEALTHCHECK CMD")
    test = ("CMD" if req.node.json else "CMD-SHELL",) + line
    return HealthcheckCommand(req.node, _health_config(flags, test))


def _health_config(flags: _Flags, test: tuple[str, ...]) -> HealthConfig:
    interval, timeout, start_period, start_interval = (
        _health_duration(flags, name)
        for name in ("interval", "timeout", "start-period", "start-interval"))
    retries = 0
    if flags.string("retries"):
        retries = _go_int32(flags.string("retries") or "", flags.used["retries"])
        if retries < 0:
            raise _Invalid(f"--retries cannot be negative ({retries})", flags.used["retries"])
    return HealthConfig(test, interval=interval, timeout=timeout, start_period=start_period,
                        start_interval=start_interval, retries=retries)


def _health_duration(flags: _Flags, name: str) -> int:
    text = flags.string(name)
    if not text:
        return 0
    value = _go_duration(text, flags.used[name])
    if value != 0 and value < 10**6:
        raise _Invalid(f"Interval {_go_quote(name)} cannot be less than 1ms", flags.used[name])
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
        raise _Invalid(f"{req.keyword} cannot accept a heredoc as a destination", dest)
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
        raise _Invalid(f"{req.keyword} requires at least two arguments, but only one was "
                       "provided. Destination could not be determined")


_COPY_FLAGS = {"chown": _STRING, "from": _STRING, "chmod": _STRING, "link": _BOOL,
               "exclude": _STRINGS, "parents": _BOOL}
_ADD_FLAGS = {"exclude": _STRINGS, "chown": _STRING, "chmod": _STRING, "link": _BOOL,
              "keep-git-dir": _BOOL, "checksum": _STRING, "unpack": _BOOL}


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


def _check_flag_chmod(flags: _Flags) -> None:
    chmod = flags.string("chmod")
    if chmod is not None and "$" not in chmod:  # else checked by expand()
        _check_chmod(chmod, flags.used["chmod"])


_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")


def _parse_from(req: _Request) -> Command:
    name = _stage_name(req.args)
    flags = req.flags({"platform": _STRING})
    original = req.args[2] if name is not None else None
    return FromCommand(req.node, req.args[0], name, original, flags.string("platform"))


def _stage_name(args: tuple[str, ...]) -> str | None:
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.fullmatch(name):
            raise _Invalid(f"invalid name for build stage: {_go_quote(args[2])}, name can't "
                           "start with a number or contain symbols", args[2])
        return name
    if len(args) != 1:
        raise _Invalid("FROM requires either one or three arguments")
    return None


_ONBUILD_PREFIX = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)


def _parse_onbuild(req: _Request) -> Command:
    _at_least_one(req)
    req.flags({})
    sub = req.node.sub
    trigger = (sub.instruction if sub else (req.args[0].split() or [""])[0]).upper()
    if trigger == "ONBUILD":
        raise _Invalid("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", req.args[0])
    if trigger in ("MAINTAINER", "FROM"):
        raise _Invalid(f"{trigger} isn't allowed as an ONBUILD trigger", req.args[0])
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
        message = _suggest(f"unknown instruction: {node.keyword.upper()}",
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
