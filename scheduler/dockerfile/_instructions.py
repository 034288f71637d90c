"""AST -> typed commands: each Dockerfile instruction with its flags checked and parsed.

Reads only ``_ast``.  Words stay *unexpanded* here: variable expansion needs the build
state (ARG/ENV values in scope), which only the converter has, so each command that
BuildKit expands offers ``expand(expander)`` returning an expanded copy.  An expander is
a callable ``str -> str`` (a single-word expansion with quote removal, see ``shell``).

Every command keeps its ``node`` for positions; every error is a ``DockerfileError`` made
with ``node.error(...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._ast import Heredoc, Node

Expander = Callable[[str], str]


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
    ``/run/secrets/<id>``) and ssh (default ``/run/buildkit/ssh_agent.<n>``).  ``from_``:
    stage name/index or image for bind/cache.  ``read_only``: bind default True (``rw``
    flips it), cache default False.  ``id``: cache id (default: the target), secret id
    (default: basename of target), ssh id (default ``"default"``).  ``sharing``:
    shared|private|locked (cache only).  ``mode``/``uid``/``gid``: ints, None when unset.
    ``size``: tmpfs size limit in bytes.  ``env``: secret exposed as an environment variable.
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


@dataclass(frozen=True, slots=True)
class EnvCommand(Command):
    env: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class LabelCommand(Command):
    labels: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class MaintainerCommand(Command):
    maintainer: str


@dataclass(frozen=True, slots=True)
class ArgCommand(Command):
    args: tuple[ArgSpec, ...]


@dataclass(frozen=True, slots=True)
class WorkdirCommand(Command):
    path: str


@dataclass(frozen=True, slots=True)
class UserCommand(Command):
    user: str


@dataclass(frozen=True, slots=True)
class ExposeCommand(Command):
    ports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VolumeCommand(Command):
    volumes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StopSignalCommand(Command):
    signal: str


@dataclass(frozen=True, slots=True)
class ShellCommand(Command):
    shell: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShellDependentCommand(Command):
    """RUN/CMD/ENTRYPOINT: ``cmd_line`` is the JSON list, or ``(line,)`` for the shell form
    (``prepend_shell=True``: the converter wraps it in the stage's SHELL).  ``files`` are
    the heredocs of the line."""

    cmd_line: tuple[str, ...]
    prepend_shell: bool
    files: tuple[Heredoc, ...] = ()


@dataclass(frozen=True, slots=True)
class RunCommand(ShellDependentCommand):
    """``mounts`` are parsed from the raw flags; ``network``: default|none|host;
    ``security``: sandbox|insecure."""

    mounts: tuple[Mount, ...] = ()
    network: str = "default"
    security: str = "sandbox"


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
    """COPY.  ``sources``/``dest`` as written; ``source_contents`` holds heredoc sources
    (their names appear in ``sources``).  ``from_``: stage name, stage index or image
    reference.  ``chown``/``chmod`` raw strings (chmod octal like ``755`` or symbolic like
    ``u=rwX,go=rX``)."""

    sources: tuple[str, ...]
    dest: str
    source_contents: tuple[Heredoc, ...] = ()
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AddCommand(Command):
    """ADD: COPY's fields (no ``from_``/``parents``) plus URL/git options.  ``unpack`` None
    means the default (extract local archives, not remote ones)."""

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


@dataclass(frozen=True, slots=True)
class OnbuildCommand(Command):
    """``expression`` is the trigger as written (e.g. ``"RUN make"``), stored in the image
    config's OnBuild list."""

    expression: str


@dataclass(frozen=True, slots=True)
class Stage:
    """One FROM and the commands under it.  ``name`` is lower-cased (BuildKit matches stage
    names case-insensitively), ``original_name`` as written; ``index`` counts stages from 0.
    ``base_name`` and ``platform`` are unexpanded."""

    node: Node
    index: int
    base_name: str
    name: str | None = None
    original_name: str | None = None
    platform: str | None = None
    commands: tuple[Command, ...] = ()


@dataclass(frozen=True, slots=True)
class Dockerfile:
    """The typed Dockerfile: ARGs before the first FROM and the stages in order."""

    filename: str
    meta_args: tuple[ArgCommand, ...]
    stages: tuple[Stage, ...]
