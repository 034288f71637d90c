"""Outputs handed back to the client: the worker writes an output into its own scratch
file and sends it through the build's session channel; the client writes it where it
asked, as its own user (docs/cluster.md, BuildKit's local exporter does the same).

An output is the client's ``--output`` number ``index``.  File outputs (``oci``,
``docker``, ``tar``) go as their bytes; ``local`` goes as a tar of the root filesystem(s)
(the client unpacks it into its directory, never taking the tar's owners).  The bytes
travel as ``output.write`` asks of at most ``CHUNK_BYTES``, in order, then one
``output.close``: each ask is answered before the next is sent, so a slow client slows
the worker instead of filling memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from scheduler._errors import ExportError

__all__ = ["CHUNK_BYTES", "Ask", "send_output"]

CHUNK_BYTES = 4 * 1024 * 1024  # docs/cluster.md: an output.write carries at most this

#: The session channel's ``ask(what, params)``.
Ask = Callable[[str, dict[str, Any]], Awaitable[Any]]


async def send_output(ask: Ask, index: int, path: Path) -> int:
    """Send the file ``path`` as the client's output ``index``; the bytes sent."""
    offset = 0
    try:
        stream = await asyncio.to_thread(open, path, "rb")
    except OSError as err:
        raise ExportError(f"cannot read the output written at {path}: {err.strerror}",
                          hint="see the worker's log; build again") from None
    try:
        while data := await asyncio.to_thread(stream.read, CHUNK_BYTES):
            await ask("output.write", {"index": index, "offset": offset, "data": data})
            offset += len(data)
    finally:
        await asyncio.to_thread(stream.close)
    await ask("output.close", {"index": index})
    return offset
