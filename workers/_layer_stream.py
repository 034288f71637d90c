"""The byte streams around a layer tar: compress + hash on the way out, verify + decompress
on the way in.

Out: ``LayerSink`` takes the uncompressed tar in chunks and, in one pass, hashes it (the
``diff_id``), compresses it, hashes and counts the compressed bytes (``digest``, ``size``) and
writes them to the caller's stream.  gzip is compressed in fixed 1 MiB blocks on a small
thread pool (zlib releases the GIL), pigz-style: each block primed with the previous 32 KiB
and sync-flushed, so the output is one valid gzip member and the same bytes whatever the
number of threads; zstd uses its own worker threads.

In: ``open_layer_reader`` detects the compression by magic bytes and returns a reader of
the uncompressed tar whose two hashes (compressed and uncompressed) are known once it has
been read to the end.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, BinaryIO, Final, Protocol, cast

import zstandard

from dockyard.cache_backends._records import GZIP_LAYER, ZSTD_LAYER, LayerDescriptor
from dockyard.scheduler._build_request import COMPRESSION_LEVELS
from dockyard.scheduler._errors import LayerError

from ._disk import DISK_FULL_HINT, is_disk_full

__all__ = [
    "GZIP_LEVEL", "LAYER_MEDIA_TYPES", "LEVELS", "TAR_LAYER", "ZSTD_LEVEL", "HashingReader",
    "LayerSink",
    "layer_compression", "open_layer_reader",
]

TAR_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"

#: Media types accepted for a layer blob (OCI, its non-distributable forms, Docker's).
LAYER_MEDIA_TYPES: Final = frozenset({
    TAR_LAYER, GZIP_LAYER, ZSTD_LAYER,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})

#: gzip level 6: Go's gzip.DefaultCompression, BuildKit's default (util/compression/gzip.go).
GZIP_LEVEL: Final = 6
#: zstd level 3: klauspost's SpeedDefault, BuildKit's default for zstd.
ZSTD_LEVEL: Final = 3
#: The levels each compression takes (``compression-level``'s bounds)
LEVELS: Final = COMPRESSION_LEVELS
_MEDIA_TYPE: Final = {"gzip": GZIP_LAYER, "zstd": ZSTD_LAYER, "none": TAR_LAYER}
_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
READ_SIZE: Final = 1 << 20
#: gzip blocks: fixed offsets in the uncompressed stream, so the output never depends on how
#: the data was chunked or on how many threads compressed it.
_GZIP_BLOCK: Final = 1 << 20
_GZIP_WINDOW: Final = 1 << 15
#: gzip header: deflate, no flags, mtime 0, no extra flags, OS 3 (unix) -- as zlib writes it.
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
_WORKERS: Final = max(1, min(4, os.cpu_count() or 1))


def layer_compression(media_type: str) -> str:
    """The compression a layer's media type names: ``gzip``, ``zstd`` or ``none``."""
    if media_type.endswith(("+gzip", ".gzip")):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    return "none"


class _Emit(Protocol):
    def __call__(self, data: bytes, /) -> None: ...


class _Encoder(Protocol):
    def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


def _compress_block(block: bytes, window: bytes, level: int) -> bytes:
    """One raw-deflate block, primed with the previous block's tail, ended on a byte
    boundary (sync flush) so blocks concatenate into one deflate stream (as pigz does)."""
    if window:
        deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9,
                                   zlib.Z_DEFAULT_STRATEGY, window)
    else:
        deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    return deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)


class _ParallelGzip:
    """gzip (level 6 unless told), its 1 MiB blocks compressed on a thread pool and
    emitted in order."""

    def __init__(self, emit: _Emit, level: int | None = None) -> None:
        self._emit = emit
        self._level = GZIP_LEVEL if level is None else level
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="layer-gzip")
        self._pending = bytearray()      # uncompressed bytes not yet a whole block
        self._window = b""               # the last 32 KiB of the previous block
        self._inflight: deque[Future[bytes]] = deque()   # in stream order
        self._crc = 0                    # crc32 of all uncompressed bytes so far
        self._length = 0                 # their count
        emit(_GZIP_HEADER)

    def write(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._length += len(data)
        self._pending += data
        while len(self._pending) >= _GZIP_BLOCK:
            block = bytes(self._pending[:_GZIP_BLOCK])
            del self._pending[:_GZIP_BLOCK]
            self._submit(block)

    def finish(self) -> None:
        if self._pending:
            self._submit(bytes(self._pending))
        while self._inflight:
            self._emit(self._inflight.popleft().result())
        self._emit(b"\x03\x00")      # an empty final block ends the deflate stream
        self._emit(struct.pack("<II", self._crc, self._length & 0xFFFFFFFF))

    def close(self) -> None:
        for future in self._inflight:
            future.cancel()
        self._pool.shutdown(wait=True)

    def _submit(self, block: bytes) -> None:
        self._inflight.append(self._pool.submit(_compress_block, block, self._window,
                                                 self._level))
        self._window = block[-_GZIP_WINDOW:]
        while len(self._inflight) > 2 * _WORKERS:
            self._emit(self._inflight.popleft().result())


class _Zstd:
    """zstd (level 3 unless told) in zstd's multi-threaded mode (its output does not depend
    on the number of workers once there is at least one)."""

    def __init__(self, emit: _Emit, level: int | None = None) -> None:
        self._emit = emit
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL if level is None else level,
                                              threads=_WORKERS).compressobj()

    def write(self, data: bytes) -> None:
        self._emit(self._zstd.compress(data))

    def finish(self) -> None:
        self._emit(self._zstd.flush())

    def close(self) -> None:
        pass


class _Plain:
    def __init__(self, emit: _Emit, level: int | None = None) -> None:
        del level
        self.write = emit

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


_ENCODERS: Final[dict[str, type[_ParallelGzip] | type[_Zstd] | type[_Plain]]] = {
    "gzip": _ParallelGzip, "zstd": _Zstd, "none": _Plain}


class LayerSink:
    """Uncompressed tar bytes in; compressed bytes out to ``out``; both streams hashed.

    ``finish`` returns the descriptor, ``close`` (always, after) releases the threads.  An
    error writing ``out`` becomes a LayerError.  ``level``: the compressor's level (None:
    ``GZIP_LEVEL`` or ``ZSTD_LEVEL``; ``LEVELS`` bounds it).
    """

    def __init__(self, out: BinaryIO, compression: str, level: int | None = None) -> None:
        if compression not in _ENCODERS:
            raise LayerError(f"unknown layer compression {compression!r}",
                             hint="use one of: gzip, zstd, none")
        self._media_type = _MEDIA_TYPE[compression]
        self._out = out
        self._diff = hashlib.sha256()        # the uncompressed stream: the diff_id
        self._digest = hashlib.sha256()      # the bytes written to out: the digest
        self._size = 0                       # len of the bytes written to out
        low, high = LEVELS.get(compression, (0, 0))
        if level is not None and not low <= level <= high:
            raise LayerError(f"{compression} compression level {level} is out of range",
                             hint=f"use a level from {low} to {high}")
        self._encoder: _Encoder = _ENCODERS[compression](self._emit, level)

    def write(self, data: bytes) -> None:
        self._diff.update(data)
        self._encoder.write(data)

    def finish(self) -> LayerDescriptor:
        self._encoder.finish()
        return LayerDescriptor(digest="sha256:" + self._digest.hexdigest(), size=self._size,
                               diff_id="sha256:" + self._diff.hexdigest(),
                               media_type=self._media_type)

    def close(self) -> None:
        self._encoder.close()

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._digest.update(data)
        self._size += len(data)
        try:
            self._out.write(data)
        except (OSError, ValueError) as err:
            raise LayerError(f"cannot write the layer blob: {err}", hint=_write_hint(err)) from err


def _write_hint(err: OSError | ValueError) -> str:
    if isinstance(err, OSError) and is_disk_full(err):
        return DISK_FULL_HINT
    if isinstance(err, ValueError) or err.errno == errno.EPIPE:  # a closed file or pipe
        return "the output stream was closed before the layer was written; keep its " \
               "reader open until the build ends"
    return "check the disk the layer is written to (DOCKYARD_ROOT, or the output's)"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class HashingReader:
    """A read-only stream over ``source`` that hashes (sha256) and counts what it reads."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class _Peeked:
    """``source`` with ``head`` (bytes already read from it for sniffing) put back in front."""

    def __init__(self, head: bytes, source: Readable) -> None:
        self._head = head
        self._source = source

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._source.read(size)
        if size < 0:
            data, self._head = self._head + self._source.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data


def open_layer_reader(blob: BinaryIO) -> tuple[HashingReader, HashingReader]:
    """(compressed, uncompressed): read the tar from the second; once it is drained, the
    first's digest is the blob's digest and the second's is the diff_id."""
    raw = HashingReader(blob)
    head = raw.read(4)
    peeked = _Peeked(head, raw)
    plain: Readable
    if head.startswith(_GZIP_MAGIC):
        plain = gzip.GzipFile(fileobj=cast(IO[bytes], peeked), mode="rb")
    elif head == _ZSTD_MAGIC:
        plain = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], peeked), read_size=READ_SIZE, read_across_frames=True,
            closefd=False)
    else:
        plain = peeked
    return raw, HashingReader(plain)
