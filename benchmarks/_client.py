"""``python -m benchmarks._client STATS.json ARGV...``: ``dockyard ARGV`` with its bytes counted.

The real client (``dockyard.cluster._cli.main``), with two wrappers that only count: every message
the client's websocket sends (``BlockingWebSocket.send``: the request with its context
manifest, the replies to the workers' asks) and the ``ContextServer`` the build made (its
``served``: context bytes handed to the cluster).  At exit it writes ``STATS.json``:
``{"sent", "served", "manifest", "request", "status"}`` (bytes; ``manifest``: the
context manifest's msgpack size; ``request``: the whole ``solve`` request's).  Nothing on
the build's path is replaced: both wrappers call the original.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgpack

import dockyard.cluster._build_cmd as build_cmd
from dockyard.cluster._cli import main as cli_main
from dockyard.cluster._wire import BlockingWebSocket

__all__ = ["main"]


class _Counts:
    def __init__(self) -> None:
        self.sent = 0  # websocket payload bytes the client sent
        self.server: Any = None  # the build's ContextServer, once made
        self.manifest = 0  # msgpack bytes of the context manifest(s)
        self.request = 0  # msgpack bytes of the solve request


def _wrap(counts: _Counts) -> None:
    original_send = BlockingWebSocket.send
    original_request = build_cmd.build_request

    def send(self: BlockingWebSocket, payload: bytes, *args: Any) -> None:
        counts.sent += len(payload)
        original_send(self, payload, *args)

    def build_request(*args: Any, **kwargs: Any) -> Any:
        options, request, server = original_request(*args, **kwargs)
        counts.server = server
        counts.manifest = len(msgpack.packb(request["session"]["contexts"]))
        counts.request = len(msgpack.packb(request))
        return options, request, server

    BlockingWebSocket.send = send  # type: ignore[method-assign]
    build_cmd.build_request = build_request


def main(argv: list[str]) -> int:
    out, *rest = argv
    counts = _Counts()
    _wrap(counts)
    status = cli_main(rest)
    served = counts.server.served if counts.server is not None else 0
    Path(out).write_text(json.dumps({"sent": counts.sent, "served": served,
                                     "manifest": counts.manifest,
                                     "request": counts.request, "status": status}))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
