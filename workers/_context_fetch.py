"""Fetching a context's file contents from its client, through a ``ContextReader``.

A worker with only a manifest asks the client for the contents its ``ContextStore``
lacks: ``context.read`` asks on the build's session channel, each naming ranges
``(path, offset, length)`` of files the manifest lists.  ``plan_reads`` batches them:
many small files per ask up to ``READ_BYTES`` in all, a large file in ``RANGE_BYTES``
ranges (one file's ranges come in order, so it streams into the store).  Each content
is checked against its digest once complete: a file that changed on the client since it
was listed is a ``SolveError`` naming it, and nothing of it is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dockyard.scheduler._errors import SolveError

from ._context_manifest import ManifestEntry, name_to_wire
from ._context_store import ContextStore, PendingContent

__all__ = ["RANGE_BYTES", "READ_BYTES", "READ_ITEMS", "ContextReader", "ReadItem", "ask_reader",
           "fetch_contents", "plan_reads"]

#: At most this many bytes in one ``context.read`` (docs/cluster.md).
READ_BYTES = 16 << 20
#: At most this many ranges in one read (the client refuses more: a 100,000-file context
#: of small files fits in one read's bytes, not in one read's ranges).
READ_ITEMS = 65_536
#: A large file is read in ranges of this many bytes.
RANGE_BYTES = 8 << 20

ReadItem = tuple[str, int, int]  # path, offset, length


class ContextReader(Protocol):
    """Reads ranges of a context's files on the client: the bytes at each item, in order
    (fewer bytes than asked only at the end of a file that shrank)."""

    async def read(self, name: str, items: Sequence[ReadItem]) -> list[bytes]: ...


Ask = Callable[[str, dict[str, Any]], Awaitable[Any]]


class _AskReader:
    """A ``ContextReader`` over the session channel's ``ask``."""

    def __init__(self, ask: Ask) -> None:
        self._ask = ask

    async def read(self, name: str, items: Sequence[ReadItem]) -> list[bytes]:
        wire = [[name_to_wire(path), offset, length] for path, offset, length in items]
        answer = await self._ask("context.read", {"name": name, "items": wire})
        if not isinstance(answer, list):
            raise SolveError(f"the client answered a read of the build context {name!r} "
                             f"with a {type(answer).__name__}, not a list of bytes")
        return answer


def ask_reader(ask: Ask) -> ContextReader:
    """The ``ContextReader`` asking ``context.read`` through ``ask(what, params)``."""
    return _AskReader(ask)


@dataclass(frozen=True, slots=True)
class _Piece:
    """A range of one file; ``last`` when it ends the file."""

    entry: ManifestEntry
    offset: int
    length: int
    last: bool


def plan_reads(files: Iterable[ManifestEntry]) -> list[list[_Piece]]:
    """The asks that read ``files`` whole: each at most ``READ_BYTES`` in at most
    ``READ_ITEMS`` pieces (and one piece at least), a file's pieces in order, an empty
    file as a piece of no bytes."""
    calls: list[list[_Piece]] = [[]]
    size = 0
    for piece in _pieces(files):
        if calls[-1] and (size + piece.length > READ_BYTES or len(calls[-1]) >= READ_ITEMS):
            calls.append([])
            size = 0
        calls[-1].append(piece)
        size += piece.length
    return [call for call in calls if call]


def _pieces(files: Iterable[ManifestEntry]) -> Iterable[_Piece]:
    for entry in files:
        offset = 0
        while True:
            length = min(RANGE_BYTES, entry.size - offset)
            last = offset + length >= entry.size
            yield _Piece(entry, offset, length, last)
            offset += length
            if last:
                break


async def fetch_contents(store: ContextStore, name: str, files: Iterable[ManifestEntry],
                         reader: ContextReader) -> int:
    """Read ``files`` (one entry per digest) through ``reader`` into ``store``; the bytes
    read.  Asks one batch at a time; writing happens in a thread."""
    writer = _Writer(store)
    total = 0
    try:
        for call in plan_reads(files):
            if any(piece.length for piece in call):
                items = [(p.entry.path, p.offset, p.length) for p in call if p.length]
                data = _checked(name, call, await reader.read(name, items))
            else:
                data = []
            total += sum(len(chunk) for chunk in data)
            await _to_thread(writer.write, call, data)
    finally:
        writer.discard()
    return total


def _checked(name: str, call: Sequence[_Piece], data: Any) -> list[bytes]:
    """The reply's chunks, one per non-empty piece, each of the length asked."""
    asked = [piece for piece in call if piece.length]
    if not isinstance(data, list) or len(data) != len(asked):
        count = len(data) if isinstance(data, list) else type(data).__name__
        raise SolveError(f"the client answered a read of {len(asked)} ranges of the build "
                         f"context {name!r} with {count} parts")
    chunks = [bytes(chunk) if isinstance(chunk, bytes | bytearray | memoryview) else None
              for chunk in data]
    for piece, chunk in zip(asked, chunks, strict=True):
        if chunk is None or len(chunk) != piece.length:
            raise _changed(piece.entry.path, name)
    return [chunk for chunk in chunks if chunk is not None]


def _changed(path: str, name: str) -> SolveError:
    return SolveError(f"the build context's {path!r} changed on the client during the "
                      f"build (context {name!r}: it is no longer what was listed)",
                      hint="build again once the files stop changing")


class _Writer:
    """Pieces into the store, in order: a file is published after its last piece."""

    def __init__(self, store: ContextStore) -> None:
        self.store = store
        # the file whose pieces are arriving (at most one spans two asks)
        self.open: PendingContent | None = None

    def write(self, call: Sequence[_Piece], data: Sequence[bytes]) -> None:
        chunks = iter(data)
        for piece in call:
            if self.open is None:
                self.open = self.store.pending(piece.entry.sha256 or "", piece.entry.path)
            if piece.length:
                self.open.write(next(chunks))
            if piece.last:
                pending, self.open = self.open, None
                pending.publish()

    def discard(self) -> None:
        if self.open is not None:
            self.open.discard()
            self.open = None


async def _to_thread(function: Callable[..., Any], *args: Any) -> Any:
    """``asyncio.to_thread``, asyncio imported on first use: the client imports this
    module for its wire types alone and, when the service already runs, never asyncio."""
    import asyncio  # noqa: PLC0415

    return await asyncio.to_thread(function, *args)
