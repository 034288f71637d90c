"""A build's images, made on the worker the coordinator chose (the one holding most of
their layers): written to the build's outputs, pushed, and handed back to the client.

``export_build`` writes every file output straight to the client through the session
channel as it is produced (workers/_build.py ``write_results`` with a ``ChannelWriter``
per output, workers/_output_send.py), while the blobs it needs still come down; it pushes
the image outputs from here (the cluster's registry credentials live on its side), pushes
the final records to the build's ``--cache-to`` (mode=min) and drains it, then closes
each output in the client's output order (only then does the client put it in place).
Its answer is the build's result map: the ``--metadata-file`` keys and what was pushed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

from cache_backends._records import CacheRecord
from scheduler._build_request import BuildOptions
from scheduler._graph import BuildGraph

from ._build import Exported, write_results
from ._exporters import push_image
from ._image import build_metadata
from ._output_send import ChannelWriter, close_output, send_file
from ._runtime import WorkerRuntime
from ._worker_sessions import WorkerSession

__all__ = ["export_build"]


async def export_build(engine: WorkerRuntime, session: WorkerSession, graph: bytes,
                       records: Mapping[str, bytes]) -> dict[str, Any]:
    """Write, push and hand back the images of ``graph``'s results (``records``: their
    roots' records, stored form); the build's result map."""
    roots = {digest: CacheRecord.from_bytes(data) for digest, data in records.items()}
    loop = asyncio.get_running_loop()
    writers = {path: ChannelWriter(session.send, index, loop)
               for index, path in session.outputs.items()
               if not session.request.outputs[index].to_stdout}
    pushes = any(o.type == "image" and o.push for o in session.request.outputs)
    # each file output goes to the client as it is written (its pump sends the chunks)
    pumping = {path: asyncio.ensure_future(writer.pump()) for path, writer in writers.items()}
    try:
        exported = await write_results(engine, BuildGraph.from_msgpack(graph).results, roots,
                                       session.options, cast(Mapping[Path, BinaryIO], writers),
                                       pushed=pushes,
                                       cache=session.records)
        for path, writer in writers.items():
            await writer.finish(pumping[path])
    finally:
        for task in pumping.values():
            task.cancel()
        await asyncio.gather(*pumping.values(), return_exceptions=True)
    if session.records is not None:
        session.records.export_final(roots.values())
        if any(o.type == "image" and o.push for o in session.request.outputs):
            await engine.ensure_blobs(  # imported layers, for the push
                layer for record in roots.values() for layer in record.result.layers)
        await session.records.drain()
    pushed = await _push(engine, session.request, exported)
    for index in sorted(session.outputs):  # received already: now put in place
        if session.outputs[index] in writers:
            await close_output(session.send, index)
        else:  # stdout: sent only now, from its scratch file
            await send_file(session.send, index, session.outputs[index])
    metadata = dict(build_metadata(exported, bool(session.options.outputs) or pushes))
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
