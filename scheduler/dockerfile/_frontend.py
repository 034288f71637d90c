"""The Dockerfile frontend's entry point: bytes in, a BuildGraph and build-check warnings
out.  Only ``DockerfileError`` leaves here, whatever the input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .._errors import DockerfileError
from .._graph import BuildGraph
from .._platform import Platform, default_platform
from ._ast import CheckWarning
from ._convert._build import convert
from ._convert._context import BuildOptions
from ._convert._model import BaseImage, ImageResolver
from ._instructions import parse_dockerfile
from ._parser import parse

__all__ = ["BaseImage", "FrontendResult", "ImageResolver", "build_graph"]


@dataclass(frozen=True, slots=True)
class FrontendResult:
    graph: BuildGraph
    warnings: tuple[CheckWarning, ...]


def build_graph(dockerfile: bytes, *, filename: str = "Dockerfile", target: str | None = None,
                platforms: Sequence[Platform] = (), build_args: Mapping[str, str] | None = None,
                ignore_patterns: Sequence[str] = (), build_platform: Platform | None = None,
                image_resolver: ImageResolver | None = None) -> FrontendResult:
    """Convert ``dockerfile`` for each of ``platforms`` (default: this machine's) into one
    graph holding one ImageResult per platform."""
    if not dockerfile.strip():
        raise DockerfileError("the Dockerfile cannot be empty", filename=filename)
    parsed = parse(dockerfile, filename)
    typed = parse_dockerfile(parsed)
    if not typed.stages:
        raise DockerfileError("dockerfile contains no stages to build", filename=filename)
    wanted = list(dict.fromkeys(platforms)) or [default_platform()]
    options = BuildOptions(
        filename=filename, escape=parsed.directives.escape,
        build_platform=build_platform or default_platform(), multi_platform=len(wanted) > 1,
        build_args=dict(build_args or {}), ignore_patterns=tuple(ignore_patterns),
        resolver=image_resolver, target=target)
    graph, warnings = convert(typed, options, wanted)
    return FrontendResult(graph, warnings)
