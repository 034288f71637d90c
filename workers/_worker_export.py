"""A build's images, made on the worker the coordinator chose (the one holding most of
their layers): written to the build's outputs, pushed, and handed back to the client.

``export_build`` writes every file output into the session's scratch files
(workers/_build.py ``write_results``), pushes the image outputs from here (the cluster's
registry credentials live on its side), pushes the final records to the build's
``--cache-to`` (mode=min) and drains it, then sends each scratch file to the client
through the session channel, in the client's output order.  Its answer is the build's
result map: the ``--metadata-file`` keys and what was pushed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cache_backends._records import CacheRecord
from scheduler._build_request import BuildOptions
from scheduler._graph import BuildGraph

from ._build import Exported, write_results
from ._exporters import push_image
from ._image import build_metadata
from ._output_send import send_output
from ._runtime import WorkerRuntime
from ._worker_sessions import WorkerSession

__all__ = ["export_build"]


async def export_build(engine: WorkerRuntime, session: WorkerSession, graph: bytes,
                       records: Mapping[str, bytes]) -> dict[str, Any]:
    """Write, push and hand back the images of ``graph``'s results (``records``: their
    roots' records, stored form); the build's result map."""
    roots = {digest: CacheRecord.from_bytes(data) for digest, data in records.items()}
    exported = await write_results(engine, BuildGraph.from_msgpack(graph).results, roots,
                                   session.options)
    if session.records is not None:
        session.records.export_final(roots.values())
        if any(o.type == "image" and o.push for o in session.request.outputs):
            await engine.ensure_blobs(  # imported layers, for the push
                layer for record in roots.values() for layer in record.result.layers)
        await session.records.drain()
    pushed = await _push(engine, session.request, exported)
    for index in sorted(session.outputs):
        await send_output(session.ask, index, session.outputs[index])
    metadata = dict(build_metadata(exported))
    if session.request.tags:
        metadata["image.name"] = ",".join(session.request.tags)
    return {"metadata": metadata, "pushed": pushed}


async def _push(engine: WorkerRuntime, options: BuildOptions, exported: Exported
                ) -> list[str]:
    pushed = []
    for output in options.outputs:
        if output.type == "image" and output.push:
            for name in output.names:
                registry = engine.registry_for(options.insecure_registries)
                digest = await push_image(exported, engine.blob_source(), registry, name,
                                          scratch=engine.tmp)
                pushed.append(f"{name}@{digest}")
    return pushed
