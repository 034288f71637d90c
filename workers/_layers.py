"""Layers: the differ (an overlayfs upper dir -> an OCI layer blob) and the unpackers (a layer
blob -> a snapshot directory in overlay form, or onto a plain directory).

- ``write_layer`` streams: files are read in 1 MiB chunks and the tar is hashed (diff_id),
  compressed and hashed again (digest) on the fly; nothing holds the whole layer.
- ``unpack_layer`` fills an empty directory and verifies the blob's digest; on any failure
  the directory is emptied again, so a half-unpacked layer never looks like a good one.
- ``apply_layer_flat`` materialises a layer onto a plain tree (whiteouts delete); on failure
  the tree is left as it is and the caller discards it.

See ``_tar_write`` and ``_tar_read`` for the tar rules, ``_layer_stream`` for the bytes.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path
from typing import IO, BinaryIO, cast

import zstandard

from dockyard.cache_backends._records import LayerDescriptor
from dockyard.scheduler._errors import LayerError
from dockyard.workers._layer_stream import (
    LAYER_MEDIA_TYPES,
    READ_SIZE,
    HashingReader,
    LayerSink,
    open_layer_reader,
)
from dockyard.workers._tar_read import Extractor, clear_directory
from dockyard.workers._tar_write import TarEntryWriter, is_empty_diff, write_upper

__all__ = ["apply_layer_flat", "is_empty_diff", "unpack_layer", "write_layer"]

_CORRUPT = (tarfile.TarError, zlib.error, EOFError, zstandard.ZstdError, OSError)


def write_layer(upper: Path, out: BinaryIO, *, compression: str = "gzip",
                epoch: int | None = None) -> LayerDescriptor:
    """The OCI layer of an overlayfs upper dir, written to ``out``: gzip (level 6, as
    BuildKit), zstd or "none"; mtimes clamped to ``epoch`` (SOURCE_DATE_EPOCH) when given."""
    if not upper.is_dir():
        raise LayerError(f"the upper dir {upper} does not exist or is not a directory")
    sink = LayerSink(out, compression)
    try:
        write_upper(upper, TarEntryWriter(sink, epoch))
        return sink.finish()
    finally:
        sink.close()


def unpack_layer(blob: BinaryIO, dest: Path, *, media_type: str,
                 expected_digest: str | None) -> str:
    """Unpack a layer blob into the empty directory ``dest`` in overlay form; returns the
    diff_id.  LayerError (and ``dest`` emptied) when the blob is corrupt, escapes ``dest`` or
    does not match ``expected_digest``."""
    _check_target(dest, empty=True)
    try:
        return _extract(blob, dest, media_type, expected_digest, overlay=True)
    except BaseException:
        _empty(dest)
        raise


def apply_layer_flat(blob: BinaryIO, dest: Path, *, media_type: str,
                     expected_digest: str | None = None) -> str:
    """Apply a layer onto the plain tree ``dest`` as an image is materialised (whiteouts
    delete, opaque directories are cleared first); returns the diff_id."""
    _check_target(dest, empty=False)
    return _extract(blob, dest, media_type, expected_digest, overlay=False)


def _extract(blob: BinaryIO, dest: Path, media_type: str, expected_digest: str | None,
             *, overlay: bool) -> str:
    _check_media_type(media_type, expected_digest)
    raw, plain = open_layer_reader(blob)
    extractor = Extractor(os.fspath(dest), overlay=overlay)
    try:
        _read_tar(plain, extractor)
        raw.drain()
    except LayerError:
        raise
    except _CORRUPT as err:
        _raise_mismatch(raw, expected_digest, media_type)
        raise LayerError(f"corrupt layer ({media_type}): {err}",
                         hint="the blob is damaged; delete it from the cache and pull again"
                         ) from err
    _raise_mismatch(raw, expected_digest, media_type)
    extractor.finish()
    return plain.digest


def _read_tar(plain: HashingReader, extractor: Extractor) -> None:
    with tarfile.open(fileobj=cast(IO[bytes], plain), mode="r|", bufsize=READ_SIZE) as tar:
        for member in tar:
            data = tar.extractfile(member) if member.isreg() else None
            extractor.apply(member, data)
    plain.drain()


def _raise_mismatch(raw: HashingReader, expected: str | None, media_type: str) -> None:
    """LayerError when ``raw``, read to its end, is not the blob ``expected`` names."""
    if expected is None:
        return
    try:
        raw.drain()
    except OSError as err:
        raise LayerError(f"cannot read the layer blob {expected}: {err}") from err
    if raw.digest != expected:
        raise LayerError(f"layer blob digest mismatch ({media_type}): expected {expected}, "
                         f"got {raw.digest}",
                         hint="the blob is damaged; delete it from the cache and pull again")


def _check_media_type(media_type: str, expected_digest: str | None) -> None:
    if media_type not in LAYER_MEDIA_TYPES:
        raise LayerError(f"{media_type!r} is not a layer media type",
                         hint="only image layers (tar, tar+gzip, tar+zstd) can be unpacked")
    if expected_digest is not None and not expected_digest.startswith("sha256:"):
        raise LayerError(f"unsupported digest {expected_digest!r}: only sha256 is supported")


def _check_target(dest: Path, *, empty: bool) -> None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
        has_entries = any(dest.iterdir())
    except OSError as err:
        raise LayerError(f"cannot use {dest} as a layer directory: {err.strerror}") from err
    if empty and has_entries:
        raise LayerError(f"cannot unpack a layer into {dest}: the directory is not empty",
                         hint="unpack into a fresh directory")


def _empty(dest: Path) -> None:
    try:
        clear_directory(os.fspath(dest))
    except OSError as err:
        raise LayerError(f"cannot clean up {dest} after a failed unpack: {err.strerror}",
                         hint=f"remove {dest} by hand") from err
