"""Exporters: where a built image goes (buildx's ``--output type=...``).

- ``export_oci``    an OCI image layout as a tar (``oci-layout``, ``index.json`` naming the
                    image with ``org.opencontainers.image.ref.name``, ``blobs/sha256/...``).
- ``export_docker`` the same layout plus Docker's ``manifest.json``, which ``docker load``
                    reads (one platform only, as BuildKit's docker exporter).
- ``export_tar``    the flattened root filesystem as one tar; with several platforms one
                    top-level directory per platform (``linux_amd64/``...).
- ``export_local``  the flattened root filesystem into a directory; with several platforms
                    one sub-directory per platform.
- ``push_image``    blobs, manifests and the index to a registry through a ``Pusher``.

Tar outputs go to a path (written to a temporary name beside it and renamed into place,
so a failed export leaves no half file) or to a binary stream (``dest=-``: stdout).
Layer blobs come from a ``BlobSource`` (the local cache, or ``MemoryBlobs`` in tests),
are streamed (never a whole layer in memory) and checked against their digests on the way,
except those the source checked already as it stored them (``CheckedBlobs``: the local
cache's own blobs), which go into a tar file by ``copy_file_range``, unhashed.
The archives are deterministic: fixed entry order, owner 0, mtime ``epoch`` or 0.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Protocol, runtime_checkable

from dockyard.cache_backends._records import LayerDescriptor
from dockyard.scheduler._errors import CacheError, ExportError, ImageReferenceError
from dockyard.scheduler._platform import Platform
from dockyard.scheduler._reference import Reference, parse_reference
from dockyard.workers._filecopy import kernel_copy
from dockyard.workers._image import ImageArtifacts, IndexArtifacts, canonical_json
from dockyard.workers._layer_stream import HashingReader
from dockyard.workers._layers import apply_layer_flat
from dockyard.workers._manifests import Descriptor, index_json
from dockyard.workers._tar_write import TarEntryWriter, write_upper

__all__ = [
    "BlobPaths",
    "BlobSource",
    "MemoryBlobs",
    "Pusher",
    "export_docker",
    "export_local",
    "export_oci",
    "export_tar",
    "platform_dir",
    "push_image",
]

Exported = ImageArtifacts | IndexArtifacts
Destination = Path | BinaryIO

OCI_LAYOUT: Final = b'{"imageLayoutVersion":"1.0.0"}'
REF_NAME: Final = "org.opencontainers.image.ref.name"
CONTAINERD_NAME: Final = "io.containerd.image.name"
_CHUNK: Final = 1 << 20


class BlobSource(Protocol):
    """Where layer blobs come from: ``open_blob`` returns a readable stream the caller
    closes; a missing blob raises a ``DockyardError`` (``CacheError``) naming it."""

    def open_blob(self, digest: str) -> BinaryIO: ...


@runtime_checkable
class CheckedBlobs(Protocol):
    """A ``BlobSource`` that can hand out a blob whose bytes it checked already (the local
    cache, for blobs it stored itself): ``open_checked`` gives its file, to be copied as is,
    or None (then ``open_blob``)."""

    def open_checked(self, digest: str) -> BinaryIO | None: ...


class MemoryBlobs:
    """A ``BlobSource`` over a dict of digest -> bytes (tests, small tools)."""

    def __init__(self, blobs: Mapping[str, bytes]) -> None:
        self._blobs = dict(blobs)

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return io.BytesIO(self._blobs[digest])
        except KeyError:
            raise CacheError(f"blob {digest} is not in the memory blob source") from None

    def __repr__(self) -> str:
        return f"<MemoryBlobs blobs={len(self._blobs)}>"


def platform_dir(platform: Platform) -> str:
    """The directory name of a platform in multi-platform outputs: ``linux_arm_v7``."""
    return str(platform).replace("/", "_")


# --- destinations ------------------------------------------------------------------------


def _describe(dest: Destination) -> str:
    return str(dest) if isinstance(dest, Path) else "the output stream"


@contextlib.contextmanager
def _open_dest(dest: Destination) -> Iterator[BinaryIO]:
    """``dest`` itself for a stream; for a path, a temporary file renamed over it on
    success and removed on failure."""
    if not isinstance(dest, Path):
        yield dest
        dest.flush()
        return
    temp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        with open(temp, "wb") as stream:
            yield stream
        os.replace(temp, dest)
    except OSError as err:
        raise ExportError(f"cannot write {dest}: {err.strerror or err}",
                          hint="check that the directory exists and is writable") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


# --- a deterministic tar of files and blobs ----------------------------------------------


class _ArchiveWriter:
    """A ustar/PAX archive of entries with fixed metadata (root, mode 0644/0755, mtime
    ``epoch`` or 0), byte for byte what ``tarfile``'s ``w|`` mode writes for them.  Layer
    blobs the source has checked already (``CheckedBlobs``) are copied as they are, by
    ``copy_file_range`` into a regular file; others are streamed and hashed.  After a
    failure the archive is abandoned: no end-of-archive marker makes it look whole."""

    def __init__(self, stream: BinaryIO, epoch: int | None) -> None:
        self._stream = stream
        self._mtime = epoch or 0
        self._written: set[str] = set()
        # bytes written so far (the end marker pads the archive to whole records)
        self._offset = 0
        # the stream's file descriptor when it is a regular file (copies go through the
        # kernel), else None (a pipe, stdout, a BytesIO: read and write)
        self._fd = _regular_fd(stream)

    def __enter__(self) -> _ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE * 2))
            self._write(tarfile.NUL * (-self._offset % tarfile.RECORDSIZE))

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._offset += len(data)

    def _entry(self, info: tarfile.TarInfo) -> None:
        self._write(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))

    def _pad(self, size: int) -> None:
        self._write(tarfile.NUL * (-size % tarfile.BLOCKSIZE))

    def directory(self, name: str) -> None:
        self._entry(self._info(name, tarfile.DIRTYPE, 0o755, 0))

    def data(self, name: str, data: bytes) -> None:
        self._entry(self._info(name, tarfile.REGTYPE, 0o644, len(data)))
        self._write(data)
        self._pad(len(data))

    def blob(self, digest: str, data: bytes) -> None:
        if digest not in self._written:
            self._written.add(digest)
            self.data(_blob_path(digest), data)

    def layer(self, layer: LayerDescriptor, source: BlobSource) -> None:
        """A layer blob from ``source``: copied as is when the source checked it already,
        else streamed and checked against its digest and size."""
        if layer.digest in self._written:
            return
        self._written.add(layer.digest)
        self._entry(self._info(_blob_path(layer.digest), tarfile.REGTYPE, 0o644, layer.size))
        checked = source.open_checked(layer.digest) if isinstance(source, CheckedBlobs) \
            else None
        if checked is not None:
            with checked:
                self._copy(layer, checked)
        else:
            with source.open_blob(layer.digest) as blob:
                self._stream_checked(layer, blob)
        self._pad(layer.size)

    def _copy(self, layer: LayerDescriptor, file: BinaryIO) -> None:
        """``layer.size`` bytes of the checked blob ``file``: by the kernel into a regular
        file, else read and written."""
        if os.fstat(file.fileno()).st_size != layer.size:  # checked bytes, another size
            raise ExportError(f"layer blob {layer.digest} does not match its digest or size "
                              f"(the cached blob has {os.fstat(file.fileno()).st_size} "
                              f"bytes, not {layer.size})",
                              hint="the cached blob is damaged; rebuild with --no-cache")
        if self._fd is not None:
            self._stream.flush()
            copied = _kernel_copy(file.fileno(), self._fd, layer.size)
            self._offset += copied
        else:
            copied = 0
            while copied < layer.size and (chunk := file.read(min(_CHUNK, layer.size - copied))):
                self._write(chunk)
                copied += len(chunk)
        if copied != layer.size:
            raise ExportError(f"layer {layer.digest} is shorter than its {layer.size} "
                              f"bytes (read {copied})", hint="the cached blob is damaged; "
                              "rebuild with --no-cache")

    def _stream_checked(self, layer: LayerDescriptor, blob: BinaryIO) -> None:
        reader = HashingReader(blob)
        while reader.size < layer.size and (chunk := reader.read(
                min(_CHUNK, layer.size - reader.size))):
            self._write(chunk)
        if reader.size != layer.size:
            raise ExportError(f"layer {layer.digest} is shorter than its {layer.size} "
                              f"bytes (read {reader.size})", hint="the cached blob is "
                              "damaged; rebuild with --no-cache")
        _check_blob(layer, reader, blob)

    def _info(self, name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime = kind, mode, size, self._mtime
        info.uname = info.gname = ""
        return info


def _regular_fd(stream: BinaryIO) -> int | None:
    """``stream``'s descriptor when it is a regular file, else None."""
    try:
        fd = stream.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _kernel_copy(source: int, dest: int, size: int) -> int:
    """``kernel_copy`` from ``source``'s start; an OS error is the output's."""
    try:
        return kernel_copy(source, dest, size)
    except OSError as err:
        raise ExportError(f"cannot copy a layer into the output: {err.strerror or err}",
                          hint="check the disk the output is written to") from err


def _check_blob(layer: LayerDescriptor, reader: HashingReader, blob: BinaryIO) -> None:
    if reader.digest != layer.digest or blob.read(1):
        raise ExportError(f"layer blob {layer.digest} does not match its digest or size "
                          f"(read {reader.digest})",
                          hint="the cached blob is damaged; rebuild with --no-cache")


def _blob_path(digest: str) -> str:
    algorithm, _, hexa = digest.partition(":")
    return f"blobs/{algorithm}/{hexa}"


def _write_layout(archive: _ArchiveWriter, subject: Exported, source: BlobSource) -> None:
    """``blobs/`` with every blob of ``subject`` (layers, configs, manifests, index) and
    ``oci-layout``; the caller adds ``index.json``."""
    archive.directory("blobs/")
    archive.directory("blobs/sha256/")
    images = subject.images if isinstance(subject, IndexArtifacts) else (subject,)
    for image in images:
        for layer in image.layers:
            archive.layer(layer, source)
        archive.blob(image.config_digest, image.config)
        archive.blob(image.manifest_digest, image.manifest)
    if isinstance(subject, IndexArtifacts):
        for attestation in subject.attestations:
            for digest, data in attestation.blobs:
                archive.blob(digest, data)
            archive.blob(attestation.config_digest, attestation.config)
            archive.blob(attestation.digest, attestation.manifest)
        archive.blob(subject.digest, subject.index)
    archive.data("oci-layout", OCI_LAYOUT)


# --- oci and docker ----------------------------------------------------------------------


def _top_descriptor(subject: Exported) -> Descriptor:
    """The layout's entry: the index's descriptor, or the manifest's without its platform,
    each with its descriptor annotations (``--annotation index-descriptor:``/
    ``manifest-descriptor:``)."""
    if isinstance(subject, IndexArtifacts):
        return subject.descriptor
    return Descriptor(subject.descriptor.media_type, subject.manifest_digest,
                      len(subject.manifest), None, subject.descriptor.annotations)


def _ref_name(name: str) -> tuple[str, str]:
    """(full normalised name, the tag part OCI calls the reference name)."""
    try:
        ref = parse_reference(name)
    except ImageReferenceError as err:
        raise ExportError(f"cannot name the exported image: {err.message}",
                          hint="pass a name like registry.example.com/app:1.0") from err
    tag = ref.tag + (f"@{ref.digest}" if ref.digest else "")
    return str(ref), tag


def layout_index(subject: Exported, names: Sequence[str]) -> bytes:
    """``index.json``: the image (or index) once per name, annotated with its names."""
    top = _top_descriptor(subject)
    entries = [top] if not names else [
        top.with_annotations({**dict(top.annotations), CONTAINERD_NAME: full, REF_NAME: tag})
        for full, tag in map(_ref_name, names)]
    return canonical_json(index_json(entries))


def export_oci(subject: Exported, source: BlobSource, dest: Destination, *,
               names: Sequence[str] = (), epoch: int | None = None) -> None:
    """An OCI image layout tar of ``subject`` (one image or a multi-platform index)."""
    index = layout_index(subject, names)
    with _open_dest(dest) as stream, _ArchiveWriter(stream, epoch) as archive:
        _write_layout(archive, subject, source)
        archive.data("index.json", index)


def docker_manifest(image: ImageArtifacts, names: Sequence[str]) -> bytes:
    """Docker's ``manifest.json``: the config, the tags (short form) and the layer files."""
    tags = [parse_reference(_ref_name(name)[0]).familiar() for name in names]
    return canonical_json([{
        "Config": _blob_path(image.config_digest),
        "RepoTags": tags,
        "Layers": [_blob_path(layer.digest) for layer in image.layers],
    }])


def export_docker(subject: Exported, source: BlobSource, dest: Destination, *,
                  names: Sequence[str] = (), epoch: int | None = None) -> None:
    """A tar ``docker load`` accepts: the OCI layout plus ``manifest.json``."""
    if isinstance(subject, IndexArtifacts) and len(subject.images) > 1:
        raise ExportError("the docker exporter writes one platform; got "
                          + ", ".join(str(image.platform) for image in subject.images),
                          hint="build one --platform, or use type=oci for several")
    index = layout_index(subject, names)  # an index: the image and its attestations
    manifest = docker_manifest(_images(subject)[0], names)
    with _open_dest(dest) as stream, _ArchiveWriter(stream, epoch) as archive:
        _write_layout(archive, subject, source)
        archive.data("index.json", index)
        archive.data("manifest.json", manifest)


# --- flattened filesystems ---------------------------------------------------------------


def _images(subject: Exported | Sequence[ImageArtifacts]) -> tuple[ImageArtifacts, ...]:
    if isinstance(subject, IndexArtifacts):
        return subject.images
    if isinstance(subject, ImageArtifacts):
        return (subject,)
    return tuple(subject)


def flatten(image: ImageArtifacts, source: BlobSource, dest: Path) -> None:
    """Apply ``image``'s layers, base first, onto the directory ``dest``."""
    for layer in image.layers:
        with source.open_blob(layer.digest) as blob:
            diff_id = apply_layer_flat(blob, dest, media_type=layer.media_type,
                                       expected_digest=layer.digest)
        if diff_id != layer.diff_id:
            raise ExportError(f"layer {layer.digest} unpacks to {diff_id}, not its diff_id "
                              f"{layer.diff_id}",
                              hint="the cached blob is damaged; rebuild with --no-cache")


def _flatten_all(images: Sequence[ImageArtifacts], source: BlobSource, dest: Path,
                 split: bool | None = None, scratch: Path | None = None) -> None:
    """Every image flattened into ``dest``: each into a directory of its platform when
    ``split`` (None: when there are several), else all into ``dest`` itself."""
    if split is None:
        split = len(images) > 1
    if split:
        for image in images:
            flatten(image, source, dest / platform_dir(image.platform))
    elif len(images) == 1:
        flatten(images[0], source, dest)
    else:
        _flatten_merged(images, source, dest, scratch)


def _flatten_merged(images: Sequence[ImageArtifacts], source: BlobSource, dest: Path,
                    scratch: Path | None) -> None:
    """``platform-split=false`` over several platforms: their files together in ``dest``;
    a path (not a directory) that two platforms both have is refused, as BuildKit does."""
    owners: dict[str, str] = {}  # path in dest -> the platform whose file it is
    for image in images:
        part = Path(tempfile.mkdtemp(prefix="dockyard-platform-", dir=scratch))
        try:
            flatten(image, source, part)
            _merge_into(part, dest, "", str(image.platform), owners)
        finally:
            shutil.rmtree(part, ignore_errors=True)


def _merge_into(part: Path, dest: Path, rel: str, platform: str,
                owners: dict[str, str]) -> None:
    """Move the entries of ``part/rel`` into ``dest/rel``, recording who owns each file."""
    for entry in sorted(os.scandir(part / rel), key=lambda e: e.name):
        path = f"{rel}/{entry.name}" if rel else entry.name
        target = dest / path
        here = target.is_dir() and not target.is_symlink()
        if entry.is_dir(follow_symlinks=False) and here:
            _merge_into(part, dest, path, platform, owners)
            continue
        if os.path.lexists(target):
            first = owners.get(path) or owners.get(next(
                (name for name in owners if name.startswith(f"{path}/")), ""), "another")
            raise ExportError(f"cannot overwrite {path} from {first} with {platform} when "
                              f"split option is disabled", hint="drop platform-split=false, "
                              "or build platforms whose files differ")
        owners.update(dict.fromkeys(_files_under(Path(entry.path), path), platform))
        os.rename(entry.path, target)


def _files_under(path: Path, name: str) -> list[str]:
    """``name`` when ``path`` is no directory, else every non-directory under it."""
    if not path.is_dir() or path.is_symlink():
        return [name]
    found = []
    for root, dirs, files in os.walk(path):
        inside = os.path.relpath(root, path)
        prefix = name if inside == "." else f"{name}/{inside}"
        found += [f"{prefix}/{item}" for item in files]
        found += [f"{prefix}/{item}" for item in dirs if os.path.islink(os.path.join(root, item))]
    return found


def _write_files(dest: Path, files: Mapping[str, bytes]) -> None:
    """``files`` (relative paths: attestation statements) into ``dest``, replacing what
    the image had there."""
    for name, data in files.items():
        path = dest / name
        try:
            path.unlink(missing_ok=True)
            path.write_bytes(data)
            path.chmod(0o644)
        except OSError as err:
            raise ExportError(f"cannot write {path}: {err.strerror or err}") from err


def export_local(subject: Exported | Sequence[ImageArtifacts], source: BlobSource,
                 dest: Path, *, split: bool | None = None, scratch: Path | None = None,
                 files: Mapping[str, bytes] | None = None) -> None:
    """The root filesystem(s) into the directory ``dest`` (created when missing); one
    directory per platform when ``split`` (None: when there are several); then ``files``
    (relative paths) beside them."""
    images = _images(subject)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create the output directory {dest}: {err.strerror}") from err
    _flatten_all(images, source, dest, split, scratch)
    _write_files(dest, files or {})


@dataclass(frozen=True, slots=True)
class _StreamSink:
    stream: BinaryIO

    def write(self, data: bytes) -> None:
        self.stream.write(data)


def export_tar(subject: Exported | Sequence[ImageArtifacts], source: BlobSource,
               dest: Destination, *, epoch: int | None = None,
               scratch: Path | None = None, split: bool | None = None,
               files: Mapping[str, bytes] | None = None) -> None:
    """The root filesystem(s) as one tar (one top directory per platform when ``split``,
    None: when there are several), with ``files`` (relative paths) beside them; files are
    flattened under ``scratch`` (a temporary directory, best on the same filesystem as the
    cache) and removed afterwards."""
    images = _images(subject)
    work = Path(tempfile.mkdtemp(prefix="dockyard-export-", dir=scratch))
    try:
        _flatten_all(images, source, work, split, scratch)
        _write_files(work, files or {})
        with _open_dest(dest) as stream:
            write_upper(work, TarEntryWriter(_StreamSink(stream), epoch))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- registry push -----------------------------------------------------------------------


class Pusher(Protocol):
    """The push half of workers/_registry.py's ``RegistryClient`` (structural, so tests and
    other clients fit): blobs from a file or small bytes, manifests from bytes."""

    async def push_blob(self, ref: Reference, digest: str, size: int, source: Path | bytes,
                        *, mount_from: Reference | None = None) -> object: ...

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str,
                            target: str = "") -> str: ...


class BlobPaths(Protocol):
    """A ``BlobSource`` that can also name a blob's file (the local cache): pushed as is."""

    def blob_path(self, digest: str) -> Path | None: ...


def _spool(source: BlobSource, layer: LayerDescriptor, scratch: Path) -> Path:
    """The layer copied to a file under ``scratch``, streamed and checked on the way."""
    path = scratch / layer.digest.replace(":", "-")
    with source.open_blob(layer.digest) as blob, open(path, "wb") as out:
        reader = HashingReader(blob)
        while chunk := reader.read(_CHUNK):
            out.write(chunk)
        _check_blob(layer, reader, blob)
    if reader.size != layer.size:
        raise ExportError(f"layer blob {layer.digest} has {reader.size} bytes, not "
                          f"{layer.size}", hint="the cached blob is damaged; rebuild with "
                          "--no-cache")
    return path


def _blob_file(source: BlobSource, layer: LayerDescriptor, scratch: Path) -> Path:
    named = source.blob_path(layer.digest) if hasattr(source, "blob_path") else None
    return named if isinstance(named, Path) else _spool(source, layer, scratch)


async def _push_layers(image: ImageArtifacts, source: BlobSource, pusher: Pusher,
                       ref: Reference, scratch: Path, mount_from: Reference | None) -> None:
    for layer in image.layers:
        path = _blob_file(source, layer, scratch)
        try:
            await pusher.push_blob(ref, layer.digest, layer.size, path, mount_from=mount_from)
        finally:
            if path.parent == scratch:
                path.unlink(missing_ok=True)


async def push_image(subject: Exported, source: BlobSource, pusher: Pusher, name: str, *,
                     scratch: Path | None = None, mount_from: Reference | None = None,
                     by_digest: bool = False) -> str:
    """Push ``subject`` as ``name``: every layer and config, each manifest by digest, then
    the top manifest (or the index) under the tag (by its digest alone when
    ``by_digest``: ``push-by-digest``).  Returns the top digest.  Layers the source cannot
    name as files are spooled through ``scratch`` one at a time."""
    ref = parse_reference(_ref_name(name)[0])
    work = Path(tempfile.mkdtemp(prefix="dockyard-push-", dir=scratch))
    try:
        for image in _images(subject):
            await _push_layers(image, source, pusher, ref, work, mount_from)
            await pusher.push_blob(ref, image.config_digest, len(image.config), image.config)
            await pusher.push_manifest(ref, image.manifest, image.descriptor.media_type,
                                       image.manifest_digest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if isinstance(subject, IndexArtifacts):
        for attestation in subject.attestations:
            for digest, data in (*attestation.blobs,
                                 (attestation.config_digest, attestation.config)):
                await pusher.push_blob(ref, digest, len(data), data)
            await pusher.push_manifest(ref, attestation.manifest,
                                       attestation.descriptor.media_type, attestation.digest)
        return await pusher.push_manifest(ref, subject.index, subject.descriptor.media_type,
                                          subject.digest if by_digest else ref.tag)
    return await pusher.push_manifest(ref, subject.manifest, subject.descriptor.media_type,
                                      subject.manifest_digest if by_digest else ref.tag)
