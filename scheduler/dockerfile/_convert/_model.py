"""What the converter reads from outside: the base-image resolver and its answer.

A resolver answers "what is the config of image ``ref`` for ``platform``"; without one a
base image contributes only the default PATH (docs/graph.md), and the solver merges the
real config at build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..._platform import Platform

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class BaseImage:
    """A base image's config as a registry reports it.  ``digest`` (``sha256:...``), when
    known, pins the reference; ``env`` holds ``KEY=value`` strings."""

    digest: str | None = None
    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    user: str = ""
    working_dir: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str = ""
    shell: tuple[str, ...] = ()
    on_build: tuple[str, ...] = ()
    author: str = ""


class ImageResolver(Protocol):
    """Looks up a base image's config; None when it has nothing to say."""

    def __call__(self, ref: str, platform: Platform) -> BaseImage | None: ...
