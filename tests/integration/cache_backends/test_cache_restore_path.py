"""The path of a restore, from an S3 GET to an OCI tar (issue 10), through a real S3
endpoint (moto, conftest.py), a real local store and the real exporter.

Pinned, by observing the code rather than timing it:

- a blob's bytes are hashed once between the GET and the tar: ``fetch_into`` hashes them
  as they arrive (one streamed GET, or ranged parallel GETs hashed in order), the store
  takes that hash, and the exporter copies the blob the store checked without hashing it
  again (every ``hashlib.sha256`` of the modules on the path counts its bytes);
- that copy goes through ``os.copy_file_range`` when the output is a regular file, and
  through reads and writes when it is a stream, with the same bytes either way;
- the archive is byte for byte what ``tarfile``'s ``w|`` mode writes for those entries;
- a blob file replaced in the store after it was checked is not trusted: the export reads
  it through the verifying reader and fails on its damage, as it does for a store that did
  not check the blob itself (another process's);
- ranged parts held at once stay within the backend's slots.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import types
from pathlib import Path
from typing import Any

import pytest
from _blobs import blob, run

from dockyard.cache_backends._local import LocalBackend
from dockyard.cache_backends._protocol import BlobCorrupt
from dockyard.cache_backends._records import LayerDescriptor
from dockyard.cache_backends._s3 import S3Backend
from dockyard.scheduler._errors import ExportError
from dockyard.scheduler._graph import ImageConfig
from dockyard.scheduler._platform import Platform
from dockyard.workers._exporters import export_oci
from dockyard.workers._image import ImageArtifacts, build_image

MB = 1 << 20
#: The modules between a GET and the tar that hash blob bytes.
HASHING = ("dockyard.cache_backends._s3", "dockyard.cache_backends._s3_ranges",
           "dockyard.cache_backends._local", "dockyard.cache_backends._protocol",
           "dockyard.workers._layer_stream")


class HashedBytes:
    """Counts the bytes every ``sha256`` of the ``HASHING`` modules is fed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        counter = self

        class Counting:
            def __init__(self, data: bytes = b"") -> None:
                self._hash = hashlib.sha256()
                self.update(data)

            def update(self, data: bytes) -> None:
                counter.bytes += len(data)
                self._hash.update(data)

            def hexdigest(self) -> str:
                return self._hash.hexdigest()

        fake = types.SimpleNamespace(sha256=Counting)
        for module in HASHING:
            monkeypatch.setattr(f"{module}.hashlib", fake)


class KernelCopies:
    """Counts the bytes ``os.copy_file_range`` moved."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        real = os.copy_file_range

        def counting(*args: Any, **kwargs: Any) -> int:
            done = real(*args, **kwargs)
            self.bytes += done
            return done

        monkeypatch.setattr(os, "copy_file_range", counting)


def remote(s3_endpoint: Any, tmp: Path) -> S3Backend:
    """Parts of 2 MiB above 2 MiB, 3 parts at once: a 9 MiB blob takes 5 ranged GETs."""
    return S3Backend(s3_endpoint.bucket(), "path/", region="us-east-1",
                     endpoint_url=s3_endpoint.url, use_path_style=True, retry_for=5.0,
                     multipart_threshold=2 * MB, part_size=2 * MB, concurrency=3,
                     tmp_dir=tmp)


def image_of(layers: list[LayerDescriptor]) -> ImageArtifacts:
    return build_image(None, ImageConfig(), tuple(layers), Platform("linux", "amd64"),
                       created=0, epoch=None)


def layer_of(digest: str, data: bytes) -> LayerDescriptor:
    return LayerDescriptor(digest, len(data), digest)


@pytest.mark.parametrize("size", [1 * MB + 5, 9 * MB + 3], ids=["one GET", "ranged"])
def test_a_restored_blob_is_hashed_once_and_copied_by_the_kernel(
        s3_endpoint: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        size: int) -> None:
    backend = remote(s3_endpoint, tmp_path)
    digest, data = blob(size, size)
    run(backend.put_blob(digest, data))
    hashed, copies = HashedBytes(monkeypatch), KernelCopies(monkeypatch)
    store = LocalBackend(tmp_path / "root")
    assert run(backend.fetch_into(digest, store)) == size
    assert hashed.bytes == size  # the GET's bytes, hashed as they came; not read back
    image = image_of([layer_of(digest, data)])
    export_oci(image, store.blob_source(), tmp_path / "image.tar")
    assert hashed.bytes == size  # the export trusted what the store checked
    assert copies.bytes == size
    with tarfile.open(tmp_path / "image.tar") as tar:
        member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert member is not None and member.read() == data
    stream = io.BytesIO()
    export_oci(image, store.blob_source(), stream)
    assert copies.bytes == size  # a stream is written, not copied by the kernel
    assert stream.getvalue() == (tmp_path / "image.tar").read_bytes()
    assert backend._bucket.slots.statistics()["peak"] <= 3


def test_the_archive_is_what_tarfile_writes(tmp_path: Path) -> None:
    """The entries the OCI exporter writes, written again by ``tarfile`` (``w|``, PAX, the
    same headers): the same bytes, for a copied layer and for a streamed one."""
    store = LocalBackend(tmp_path / "root")
    blobs = [blob(3000, 1), blob(512, 2), blob(0, 3)]
    for digest, data in blobs:
        run(store.put_blob(digest, data))
    image = image_of([layer_of(digest, data) for digest, data in blobs])
    export_oci(image, store.blob_source(), tmp_path / "ours.tar")
    reference = io.BytesIO()
    with tarfile.open(tmp_path / "ours.tar") as ours, \
            tarfile.open(fileobj=reference, mode="w|", format=tarfile.PAX_FORMAT) as again:
        for member in ours:
            again.addfile(member, ours.extractfile(member) if member.isfile() else None)
    assert (tmp_path / "ours.tar").read_bytes() == reference.getvalue()


def test_a_blob_replaced_after_the_store_checked_it_is_verified_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBackend(tmp_path / "root")
    digest, data = blob(4 * MB, 7)
    run(store.put_blob(digest, data))
    path = tmp_path / "root" / "cache" / "blobs" / "sha256" / digest.removeprefix("sha256:")
    damaged = tmp_path / "damaged"
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    os.replace(damaged, path)  # another file (inode) under the blob's name
    copies = KernelCopies(monkeypatch)
    with pytest.raises(BlobCorrupt):
        export_oci(image_of([layer_of(digest, data)]), store.blob_source(),
                   tmp_path / "image.tar")
    assert copies.bytes == 0
    assert not (tmp_path / "image.tar").exists()
    assert not path.exists()  # the verifying reader dropped it


def test_a_store_that_did_not_check_a_blob_verifies_it(tmp_path: Path) -> None:
    digest, data = blob(2 * MB, 8)
    run(LocalBackend(tmp_path / "root").put_blob(digest, data))
    path = tmp_path / "root" / "cache" / "blobs" / "sha256" / digest.removeprefix("sha256:")
    with open(path, "r+b") as file:  # damaged in place: same inode and size
        file.seek(100)
        file.write(b"\0")
    other = LocalBackend(tmp_path / "root")  # another process's view of the same root
    with pytest.raises((BlobCorrupt, ExportError)):
        export_oci(image_of([layer_of(digest, data)]), other.blob_source(),
                   tmp_path / "image.tar")
    assert not (tmp_path / "image.tar").exists()
