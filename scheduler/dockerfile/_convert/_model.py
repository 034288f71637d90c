"""What the converter reads from outside: the base-image resolver and its answer.

A resolver answers "what is the config of image ``ref`` for ``platform``"; without one a
base image contributes only the default PATH (docs/graph.md), and the solver merges the
real config at build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..._graph import ImageConfig
from ..._platform import Platform


@dataclass(frozen=True, slots=True)
class BaseImage:
    """A base image as a registry reports it: its config, and its ``digest``
    (``sha256:...``) when known, which pins the reference.  ``config.env`` is the image's
    own (empty by default: the stage adds the default PATH when the base has none); the
    stage starts from the whole config, healthcheck and history included, as BuildKit's
    does."""

    digest: str | None = None
    config: ImageConfig = ImageConfig(env=())


class ImageResolver(Protocol):
    """Looks up a base image's config; None when it has nothing to say."""

    def __call__(self, ref: str, platform: Platform) -> BaseImage | None: ...
