"""The whole conversion: every requested platform, two passes (the first learns which
context paths the build reads, the second builds the graph with them), the results."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from ..._graph import BuildGraph, ImageResult
from ..._platform import Platform
from .._ast import CheckWarning
from .._instructions import Dockerfile
from ._args import apply_meta_args, predefined_args, unconsumed_notice
from ._context import BuildOptions, Conversion, check_sandbox_hostname
from ._dispatch import convert_stage
from ._image_config import freeze
from ._stages import StageNode, build_table, find_target, reachable
from ._state import StageState
from ._vertices import VertexSink


def convert(dockerfile: Dockerfile, options: BuildOptions, platforms: Sequence[Platform]
            ) -> tuple[BuildGraph, tuple[CheckWarning, ...], tuple[str, ...]]:
    scout = [_convert_one(dockerfile, options, p, VertexSink(), None) for p in platforms]
    follow = follow_paths(set().union(*(conv.context_paths for conv, _ in scout)))
    sink = VertexSink()
    warnings: list[CheckWarning] = []
    notices: list[str] = []
    for platform in platforms:
        conv, result = _convert_one(dockerfile, options, platform, sink, follow)
        sink.graph.add_result(result)
        warnings += [w for w in conv.warnings if w not in warnings]
        notice = unconsumed_notice(conv)
        notices += [notice] if notice and notice not in notices else []
    return sink.graph, tuple(warnings), tuple(notices)


def follow_paths(paths: set[str]) -> tuple[str, ...] | None:
    """BuildKit's normalizeContextPaths: relative, sorted; None when ``/`` is read."""
    if not paths or "/" in paths:
        return None
    return tuple(sorted(posixpath.relpath(p, "/") for p in paths))


def _convert_one(dockerfile: Dockerfile, options: BuildOptions, platform: Platform,
                 sink: VertexSink, follow: tuple[str, ...] | None
                 ) -> tuple[Conversion, ImageResult]:
    check_sandbox_hostname(options.build_args)
    target_name = options.target or dockerfile.stages[-1].name or "default"  # BuildKit's
    conv = Conversion(options, platform, predefined_args(
        options.build_platform, platform, target_name, options.build_args), sink=sink,
        follow_paths=follow)
    apply_meta_args(conv, dockerfile.meta_args)
    table = build_table(conv, dockerfile)
    target = find_target(conv, table, options.target)
    done: dict[int, StageState] = {}
    for stage_node in _order(reachable(target)):
        sink.ignore_cache = _ignores_cache(options, stage_node)
        try:
            done[stage_node.index] = convert_stage(conv, table, stage_node, done)
        finally:
            sink.ignore_cache = False
    final = done[target.index]
    return conv, ImageResult(platform=platform, root=final.root, config=freeze(final.config),
                             target=target.name or f"stage-{target.index}")


def _ignores_cache(options: BuildOptions, stage_node: StageNode) -> bool:
    """Whether ``--no-cache-filter`` names the stage."""
    name = (stage_node.name or "").lower()
    return stage_node.stage is not None and bool(name) and name in options.no_cache_filter


def _order(stage_nodes: list[StageNode]) -> list[StageNode]:
    """Images named by ``--from`` first (they depend on nothing), then stages in order."""
    return sorted(stage_nodes, key=lambda n: (n.stage is not None, n.index))
