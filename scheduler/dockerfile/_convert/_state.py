"""The mutable state of one stage while its commands are converted.

A ``StageState`` is created per stage and platform and thrown away after conversion; the
graph only ever sees the frozen ops built from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..._graph import Healthcheck, HistoryEntry
from ..._platform import Platform

HISTORY_COMMENT = "buildkit.dockerfile.v0"


@dataclass(slots=True)
class ConfigDraft:
    """The image config being built.  ``env`` keeps insertion order (ENV replaces in place,
    as BuildKit's addEnv does).  The collections are mutable; the healthcheck and the
    history entries are already the graph's frozen types (``freeze`` makes the rest)."""

    env: dict[str, str] = field(default_factory=dict)
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    user: str = ""
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: dict[str, None] = field(default_factory=dict)
    volumes: dict[str, None] = field(default_factory=dict)
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    on_build: list[str] = field(default_factory=list)
    shell: tuple[str, ...] = ()
    author: str = ""
    history: list[HistoryEntry] = field(default_factory=list)

    def copy(self) -> ConfigDraft:
        return ConfigDraft(
            env=dict(self.env), cmd=self.cmd, entrypoint=self.entrypoint, user=self.user,
            working_dir=self.working_dir, labels=dict(self.labels),
            exposed_ports=dict(self.exposed_ports), volumes=dict(self.volumes),
            stop_signal=self.stop_signal, healthcheck=self.healthcheck,
            on_build=list(self.on_build), shell=self.shell, author=self.author,
            history=list(self.history))

    def commit(self, created_by: str, *, layer: bool) -> None:
        self.history.append(HistoryEntry(created_by, empty_layer=not layer,
                                          comment=HISTORY_COMMENT))


@dataclass(slots=True)
class StageState:
    """One stage being converted.

    ``root``: digest of the current filesystem state (None = empty, ``FROM scratch``).
    ``args``: the ARGs declared in this stage (and its base stage), in order, with their
    value (None = declared without a value).  ``config``: the image config so far.
    ``vars``: the variables commands see and RUN gets (BuildKit's LLB state env): the base's,
    then every ENV and every ARG that has a value, the last writer winning; ``config.env``
    holds the ENV part only, as the image keeps it.
    ``cmd_index``/``cmd_total``: the ``[2/4]`` counters of vertex names.
    """


    stage_name: str
    platform: Platform
    root: str | None = None
    config: ConfigDraft = field(default_factory=ConfigDraft)
    args: dict[str, str | None] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)
    cmd_index: int = 0
    cmd_total: int = 0
    workdir_set: bool = False
    cmd_set: bool = False
    on_build_prefix: bool = False

    def env(self) -> Mapping[str, str]:
        """The variables a command sees: a read-only view of ``vars``, not a copy (copying
        made a Dockerfile of many ENVs quadratic).  Read it before the command changes the
        stage; keep nothing of it."""
        return MappingProxyType(self.vars)

    def set_env(self, key: str, value: str) -> None:
        """ENV: into the image config and into what later commands see."""
        self.config.env[key] = value
        self.vars[key] = value

    @property
    def cwd(self) -> str:
        return self.config.working_dir or "/"
