"""The image config between the graph's frozen ``ImageConfig`` and the converter's
mutable draft: ``freeze`` a finished stage's draft, ``thaw`` a base image's config."""

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


def thaw(config: ImageConfig) -> ConfigDraft:
    """A draft starting from ``config`` (a base image's)."""
    return ConfigDraft(
        env=dict(item.partition("=")[::2] for item in config.env),
        cmd=config.cmd, entrypoint=config.entrypoint, user=config.user,
        working_dir=config.working_dir, labels=dict(config.labels),
        exposed_ports=dict.fromkeys(config.exposed_ports),
        volumes=dict.fromkeys(config.volumes), stop_signal=config.stop_signal,
        healthcheck=config.healthcheck, on_build=list(config.on_build), shell=config.shell,
        author=config.author, history=list(config.history))
