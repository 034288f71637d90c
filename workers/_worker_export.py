"""A build's images, made on the worker the coordinator chose (the one holding most of
their layers): written to the build's outputs, pushed, and handed back to the client.

``export_build`` writes every file output straight to the client through the session
channel as it is produced (workers/_build.py ``write_results`` with a ``ChannelWriter``
per output, workers/_output_send.py), while the blobs it needs still come down; it pushes
the image outputs from here (the cluster's registry credentials live on its side), pushes
the final records to the build's ``--cache-to`` (mode=min) and drains it, then closes
each output in the client's output order (only then does the client put it in place).
Its answer is the build's result map: the ``--metadata-file`` keys (the image's only
for outputs writing one), what was pushed and the bytes sent to the client for each file
output (by output index; progress shows them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from dockyard.cache_backends._records import CacheRecord
from dockyard.scheduler._build_request import BuildOptions
from dockyard.scheduler._graph import BuildGraph, ImageResult
from dockyard.scheduler._reference import parse_reference

from ._attest import metadata_provenance
from ._build import Exported, ImageForm, exported_images, write_results
from ._exporters import push_image
from ._image import export_metadata
from ._output_send import ChannelWriter, close_output, send_file
from ._runtime import WorkerRuntime
from ._worker_sessions import WorkerSession, image_form

__all__ = ["export_build"]


async def export_build(engine: WorkerRuntime, session: WorkerSession, graph: bytes,
                       records: Mapping[str, bytes]) -> dict[str, Any]:
    """Write, push and hand back the images of ``graph``'s results (``records``: their
    roots' records, stored form); the build's result map."""
    roots = {digest: CacheRecord.from_bytes(data) for digest, data in records.items()}
    built = BuildGraph.from_msgpack(graph)
    results = built.results
    loop = asyncio.get_running_loop()
    writers = {path: ChannelWriter(session.send, index, loop)
               for index, path in session.outputs.items()
               if not session.request.outputs[index].to_stdout}
    pushes = any(o.type == "image" and o.push for o in session.request.outputs)
    images = [o for o in session.request.outputs if o.type == "image"]
    # the image the result map describes: the first image output's, else the first output's
    form = image_form(images[0]) if images else None
    # each file output goes to the client as it is written (its pump sends the chunks)
    pumping = {path: asyncio.ensure_future(writer.pump()) for path, writer in writers.items()}
    try:
        exported = await write_results(engine, results, roots, session.options,
                                       cast(Mapping[Path, BinaryIO], writers), pushed=pushes,
                                       form=form, graph=built, cache=session.records)
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
    pushed = await _push(engine, session.request, results, roots, session.options.epoch,
                         (form, exported))
    for index in sorted(session.outputs):  # received already: now put in place
        if session.outputs[index] in writers:
            await close_output(session.send, index)
        else:  # stdout: sent only now, from its scratch file
            await send_file(session.send, index, session.outputs[index])
    metadata = export_metadata(exported, [o.type for o in session.request.outputs],
                               session.request.tags)
    metadata |= metadata_provenance(exported)
    sent = {writer.index: writer.sent for writer in writers.values()}  # bytes per output
    return {"metadata": metadata, "pushed": pushed, "sent": sent}


async def _push(engine: WorkerRuntime, options: BuildOptions, results: Sequence[ImageResult],
                records: Mapping[str, CacheRecord], epoch: int | None,
                written: tuple[ImageForm | None, Exported]) -> list[str]:
    """Every image output pushed, its image made in its own form; ``NAME@DIGEST`` each
    (``REPOSITORY@DIGEST`` when pushed by digest).  ``written`` is the form
    ``write_results`` made, with its attestations: outputs of that form push it as it is;
    other forms are made again, without attestations."""
    outputs = [o for o in options.outputs if o.type == "image" and o.push]
    made: dict[ImageForm, Exported] = await exported_images(
        engine, results, records, epoch,
        [image_form(o) for o in outputs if image_form(o) != written[0]],
        options.annotations)
    if written[0] is not None:
        made[written[0]] = written[1]
    pushed = []
    for output in outputs:
        for name in output.names:
            registry = engine.registry_for(options.insecure_registries)
            digest = await push_image(made[image_form(output)], engine.blob_source(), registry,
                                      name, scratch=engine.tmp,
                                      by_digest=output.push_by_digest)
            shown = parse_reference(name).name if output.push_by_digest else name
            pushed.append(f"{shown}@{digest}")
    return pushed
