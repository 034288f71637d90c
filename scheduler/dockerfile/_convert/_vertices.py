"""Adds vertices to the graph being built (dedup by digest happens in ``BuildGraph``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..._graph import BuildGraph, Op, SourceOp, Vertex
from ..._platform import Platform


class VertexSink:
    """The graph of one build, shared by the conversions of every platform, so a vertex
    two platforms need (the context, a BUILDPLATFORM stage) is held once."""

    def __init__(self, graph: BuildGraph | None = None) -> None:
        self.graph = graph if graph is not None else BuildGraph()
        # Set while a ``--no-cache-filter`` stage is converted: its steps skip the cache
        # (not its sources: a base image or the context another stage shares, as BuildKit
        # marks a stage's RUN, COPY... and not its FROM).
        self.ignore_cache = False

    def add(self, op: Op, inputs: Sequence[str], name: str, platform: Platform | None,
            *, location: str) -> str:
        """Add a vertex; ``location`` is the Dockerfile position of the instruction that
        makes it (``Dockerfile:7:1``), "" for an internal vertex.  When the vertex is
        already there (another platform or stage made it), the first location stays."""
        return self.graph.add(Vertex(op=op, inputs=tuple(inputs), name=name,
                                     platform=platform, location=location,
                                     ignore_cache=self.ignore_cache
                                     and not isinstance(op, SourceOp)))
