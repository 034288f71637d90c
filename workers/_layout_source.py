"""An image from an OCI image layout of the client (``--build-context
NAME=oci-layout://PATH``): the source ``oci-layout://KEY@DIGEST``.

The client sent the blobs of image DIGEST (its manifest, config and layers) as the
context ``KEY`` (``session.contexts[KEY]``: only the ones this worker lacks travel, as
for any context file).  Here they are laid out in a scratch directory, each checked
against its digest, the layers put in the worker's cache like pulled ones, and the
result is the image's layers and config, as an image source's.  The source's identity is
DIGEST: the image's content, whatever the layout's path.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from pathlib import Path

from dockyard.cache_backends._records import StateResult
from dockyard.scheduler._errors import DockyardError, SolveError
from dockyard.scheduler._graph import SourceOp

from ._manifests import INDEX_TYPES, layers_of, parse_manifest
from ._runtime import LOCAL_SCHEME, RuntimeBackend

__all__ = ["LAYOUT_SCHEME", "layout_identity", "run_layout_source"]

LAYOUT_SCHEME = "oci-layout://"


def _parts(op: SourceOp) -> tuple[str, str]:
    """(context key, manifest digest) of an ``oci-layout://KEY@DIGEST`` source."""
    key, at, digest = op.identifier[len(LAYOUT_SCHEME):].rpartition("@")
    if not at or not key or not digest.startswith("sha256:"):
        raise SolveError(f"malformed source {op.identifier!r}: expected "
                         "oci-layout://KEY@sha256:<hex>",
                         hint="use the same dockyard version on the client and the cluster")
    return key, digest


def layout_identity(op: SourceOp) -> str:
    """What the source's cache key rests on: the image's manifest digest."""
    return _parts(op)[1]


async def run_layout_source(backend: RuntimeBackend, op: SourceOp) -> StateResult:
    key, digest = _parts(op)
    tree, _ = await backend.context_files(SourceOp(LOCAL_SCHEME + key, op.attrs))
    staging = Path(tempfile.mkdtemp(prefix="layout-", dir=backend.runtime.tmp))
    try:
        await asyncio.to_thread(tree.materialise, staging)
        return await _image(backend, _Blobs(staging, op.identifier), digest)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


async def _image(backend: RuntimeBackend, blobs: _Blobs, digest: str) -> StateResult:
    where = f"{blobs.source} ({digest})"
    try:
        media_type, manifest = parse_manifest(await blobs.read(digest), "", where)
        if media_type in INDEX_TYPES:
            raise SolveError(f"{where} is an index, not an image manifest",
                             hint="this is a bug in dockyard's client: please report it")
        config = await blobs.read(str(manifest["config"]["digest"]))
        layers = layers_of(manifest, config, where)
    except (KeyError, TypeError) as err:
        raise SolveError(f"{where}: the manifest has no config ({err})") from None
    except DockyardError as err:
        raise SolveError(err.message, hint=err.hint) from None
    cache = backend.runtime.cache
    present = await cache.has_many(layer.digest for layer in layers)
    for layer in layers:
        if layer.digest not in present:
            await cache.put_blob(layer.digest, await blobs.checked(layer.digest))
    return StateResult(layers=layers, image_config=config)


class _Blobs:
    """The layout's blobs as laid out under ``root``, each checked against its digest."""

    def __init__(self, root: Path, source: str) -> None:
        self.root = root
        self.source = source

    async def checked(self, digest: str) -> Path:
        algorithm, _, hex_ = digest.partition(":")
        path = self.root / "blobs" / algorithm / hex_
        if algorithm != "sha256" or not path.is_file():
            raise SolveError(f"{self.source}: blob {digest} was not sent",
                             hint="this is a bug in dockyard's client: please report it")
        if await asyncio.to_thread(_sha256_of, path) != hex_:
            raise SolveError(f"{self.source}: blob {digest} does not match its digest",
                             hint="the layout is damaged: write it again")
        return path

    async def read(self, digest: str) -> bytes:
        return (await self.checked(digest)).read_bytes()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
