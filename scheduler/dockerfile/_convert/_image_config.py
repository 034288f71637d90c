"""The finished stage's config draft as the graph's frozen ImageConfig."""

from __future__ import annotations

from ..._graph import ImageConfig
from ._state import ConfigDraft


def freeze(draft: ConfigDraft) -> ImageConfig:
    return ImageConfig(
        env=tuple(f"{key}={value}" for key, value in draft.env.items()),
        cmd=draft.cmd, entrypoint=draft.entrypoint, user=draft.user,
        working_dir=draft.working_dir, labels=tuple(sorted(draft.labels.items())),
        exposed_ports=tuple(sorted(draft.exposed_ports)),
        volumes=tuple(sorted(draft.volumes)), stop_signal=draft.stop_signal,
        healthcheck=draft.healthcheck,
        on_build=tuple(draft.on_build), shell=draft.shell, author=draft.author,
        history=tuple(draft.history))
