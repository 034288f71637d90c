"""The Dockerfile frontend's entry point: bytes in, a BuildGraph and build-check warnings
out.  Only ``DockerfileError`` leaves here, whatever the input (and ``UsageError`` for a
bad BUILDKIT_DOCKERFILE_CHECK build arg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .._build_request import NamedContext
from .._errors import DockerfileError
from .._graph import BuildGraph, Ulimit
from .._platform import Platform, default_platform
from ._ast import CheckWarning
from ._convert._build import convert
from ._convert._context import BuildOptions
from ._convert._model import BaseImage, ImageResolver
from ._instructions import parse_dockerfile
from ._interrupt import Interrupt, interruptible
from ._lint import run_checks
from ._parser import parse

__all__ = ["BaseImage", "FrontendResult", "ImageResolver", "build_graph"]


@dataclass(frozen=True, slots=True)
class FrontendResult:
    """``warnings``: the build-check findings, sorted, after ``# check=``; ``notices``:
    plain build warnings that are no lint rule (the unconsumed --build-arg notice of the
    classic builder; BuildKit itself reports none), never skipped, never an error;
    ``check_failure``: with ``check_only``, the error ``# check=error=true`` makes of the
    warnings (without ``check_only`` it is raised)."""

    graph: BuildGraph
    warnings: tuple[CheckWarning, ...]
    notices: tuple[str, ...] = ()
    check_failure: DockerfileError | None = None


def build_graph(dockerfile: bytes, *, filename: str = "Dockerfile", target: str | None = None,
                platforms: Sequence[Platform] = (), build_args: Mapping[str, str] | None = None,
                ignore_patterns: Sequence[str] = (), build_platform: Platform | None = None,
                image_resolver: ImageResolver | None = None, check_only: bool = False,
                interrupt: Interrupt | None = None, ulimits: Sequence[Ulimit] = (),
                shm_size: int = 0, network: str = "default",
                extra_hosts: Sequence[tuple[str, str]] = (), cgroup_parent: str = "",
                no_cache_filter: Sequence[str] = (),
                named_contexts: Sequence[NamedContext] = ()) -> FrontendResult:
    """Convert ``dockerfile`` for each of ``platforms`` (default: this machine's) into one
    graph holding one ImageResult per platform.  The build checks look at the stages the
    target needs; ``# check=error=true`` turns findings into a ``DockerfileError``.
    ``check_only`` lints as BuildKit's lint request (``build --check``) does: every stage
    when no target is given, and the error=true failure returned, not raised.

    ``interrupt`` is called at every step of the work (each line parsed, instruction
    converted, word expanded...) and raises to stop it: a caller running this in a thread
    stops it so when its build is cancelled (see ``_interrupt``).  ``named_contexts``
    (``--build-context``) stand in for the stages and images of their names."""
    with interruptible(interrupt):
        return _build_graph(dockerfile, filename=filename, target=target, platforms=platforms,
                            build_args=build_args, ignore_patterns=ignore_patterns,
                            build_platform=build_platform, image_resolver=image_resolver,
                            check_only=check_only, ulimits=ulimits, shm_size=shm_size,
                            network=network, extra_hosts=tuple(extra_hosts),
                            cgroup_parent=cgroup_parent,
                            no_cache_filter=tuple(no_cache_filter),
                            named_contexts=named_contexts)


def _build_graph(dockerfile: bytes, *, filename: str, target: str | None,
                 platforms: Sequence[Platform], build_args: Mapping[str, str] | None,
                 ignore_patterns: Sequence[str], build_platform: Platform | None,
                 image_resolver: ImageResolver | None, check_only: bool,
                 ulimits: Sequence[Ulimit], shm_size: int, network: str,
                 extra_hosts: tuple[tuple[str, str], ...], cgroup_parent: str,
                 no_cache_filter: tuple[str, ...],
                 named_contexts: Sequence[NamedContext]) -> FrontendResult:
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
        resolver=image_resolver, target=target, ulimits=tuple(ulimits), shm_size=shm_size,
        network=network, extra_hosts=extra_hosts, cgroup_parent=cgroup_parent,
        no_cache_filter=no_cache_filter,
        named_contexts={c.name: c for c in named_contexts})
    graph, warnings, notices = convert(typed, options, wanted)
    report = run_checks(parsed, typed, target=target, all_stages=check_only,
                        extra=warnings, build_args=build_args)
    if report.failure is not None and not check_only:
        raise report.failure
    return FrontendResult(graph, report.warnings, notices, report.failure)
