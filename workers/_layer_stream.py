"""The byte streams around a layer tar: compress + hash on the way out, verify + decompress
on the way in.

Out: ``LayerSink`` takes the uncompressed tar in chunks and, in one pass, hashes it (the
``diff_id``), compresses it, hashes and counts the compressed bytes (``digest``, ``size``) and
writes them to the caller's stream.  Compression and the output hash run on a second thread
(zlib, zstd and hashlib release the GIL), so reading files and compressing overlap the way
``tar | gzip`` overlaps two processes.

In: ``open_layer_reader`` detects the compression by magic bytes and returns a reader of
the uncompressed tar whose two hashes (compressed and uncompressed) are known once it has
been read to the end.
"""

from __future__ import annotations

import gzip
import hashlib
import queue
import threading
import zlib
from collections.abc import Callable
from typing import IO, BinaryIO, Final, Protocol, cast

import zstandard

from cache_backends._records import GZIP_LAYER, ZSTD_LAYER, LayerDescriptor
from scheduler._errors import LayerError

__all__ = ["LAYER_MEDIA_TYPES", "TAR_LAYER", "HashingReader", "LayerSink", "open_layer_reader"]

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
_MEDIA_TYPE: Final = {"gzip": GZIP_LAYER, "zstd": ZSTD_LAYER, "none": TAR_LAYER}
_QUEUE_DEPTH: Final = 8
_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
READ_SIZE: Final = 1 << 20


def _compressor(compression: str) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    """(compress, flush) for a compression name; LayerError for an unknown one."""
    if compression == "gzip":
        gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9)
        return gz.compress, gz.flush
    if compression == "zstd":
        zs = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        return zs.compress, zs.flush
    if compression == "none":
        return bytes, bytes
    raise LayerError(f"unknown layer compression {compression!r}",
                     hint="use one of: gzip, zstd, none")


class LayerSink:
    """Uncompressed tar bytes in; compressed bytes out to ``out``, both hashed.

    ``write`` hands chunks to a compressing thread through a bounded queue (so memory stays
    at a few chunks); ``finish`` drains it and returns the descriptor.  A failure on the
    thread (a full disk, a closed stream) is raised by the next ``write`` or by ``finish``.
    """

    def __init__(self, out: BinaryIO, compression: str) -> None:
        self._compress, self._flush = _compressor(compression)
        self._media_type = _MEDIA_TYPE[compression]
        self._out = out
        self._diff = hashlib.sha256()        # the uncompressed stream: the diff_id
        self._digest = hashlib.sha256()      # the bytes written to out: the digest
        self._size = 0                       # len of the bytes written to out
        self._error: BaseException | None = None   # set once by the thread, then it idles
        self._queue: queue.Queue[bytes | None] = queue.Queue(_QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._run, name="layer-compress", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        if self._error is not None:
            self._raise()
        self._diff.update(data)
        self._queue.put(data)

    def finish(self) -> LayerDescriptor:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            self._raise()
        return LayerDescriptor(digest="sha256:" + self._digest.hexdigest(), size=self._size,
                               diff_id="sha256:" + self._diff.hexdigest(),
                               media_type=self._media_type)

    def abort(self) -> None:
        """Stop the thread without producing a descriptor (the caller failed)."""
        self._error = self._error or LayerError("layer export aborted")
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            while (chunk := self._queue.get()) is not None:
                if self._error is None:
                    self._emit(self._compress(chunk))
            if self._error is None:
                self._emit(self._flush())
        except BaseException as err:  # handed to the producer, re-raised there
            self._error = err
            while self._queue.get() is not None:
                pass

    def _emit(self, data: bytes) -> None:
        if data:
            self._digest.update(data)
            self._size += len(data)
            self._out.write(data)

    def _raise(self) -> None:
        err = self._error
        if isinstance(err, LayerError):
            raise err
        raise LayerError(f"cannot write the layer blob: {err}",
                         hint="check the output stream and free disk space") from err


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
