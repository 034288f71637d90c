"""Push to Debian's docker-registry and pull back: blobs (exists / cross-repository mount /
monolithic and chunked upload), manifests and an index, then resolve the copy per platform.

Fixtures come from tests/integration/conftest.py (typed ``Any``: conftest modules are not
importable)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from dockyard.scheduler._errors import RegistryError
from dockyard.scheduler._platform import Platform, parse_platform
from dockyard.scheduler._reference import Reference, parse_reference
from dockyard.workers._auth import DockerConfig
from dockyard.workers._registry import Descriptor, RegistryClient, RegistryConfig

NO_CREDS = DockerConfig(Path("/nonexistent/config.json"))
PLATFORMS = (Platform("linux", "amd64"), Platform("linux", "arm64", "v8"))


def _copy_ref(domain: str, name: str) -> Reference:
    return parse_reference(f"{domain}/copies/{name}-{uuid.uuid4().hex[:8]}:v1")


async def _copy_image(client: RegistryClient, source: Reference, dest: Reference,
                      platform: Platform, tmp: Path, mount: bool) -> tuple[Descriptor, list[str]]:
    """Copy one platform's image from ``source`` to ``dest``: its outcomes per blob."""
    image = await client.resolve(source, platform)
    config = hashlib.sha256(image.config).hexdigest()
    outcomes: list[str] = [await client.push_blob(dest, f"sha256:{config}", len(image.config),
                                                  image.config,
                                                  mount_from=source if mount else None)]
    for layer in image.layers:
        path = tmp / layer.digest[7:]
        await client.fetch_blob(source, layer, path)
        outcomes.append(await client.push_blob(dest, layer.digest, layer.size, path,
                                               mount_from=source if mount else None))
    digest = await client.push_manifest(dest, image.manifest_bytes, image.media_type,
                                        target=image.digest)
    assert digest == image.digest
    return Descriptor(image.media_type, digest, len(image.manifest_bytes), platform), outcomes


async def _copy_all(config: RegistryConfig, source: Reference, dest: Reference, tmp: Path,
                    mount: bool) -> tuple[list[list[str]], dict[str, int]]:
    async with RegistryClient(config) as client:
        copied = [await _copy_image(client, source, dest, p, tmp, mount) for p in PLATFORMS]
        await client.push_index(dest, [descriptor for descriptor, _ in copied])
        again = [await _copy_image(client, source, dest, p, tmp, mount) for p in PLATFORMS]
        return [o for _, o in copied + again], client.statistics()


async def _resolve_all(ref: Reference) -> list[str]:
    async with RegistryClient(RegistryConfig(docker_config=NO_CREDS)) as client:
        return [(await client.resolve(ref, p)).digest for p in PLATFORMS]


@pytest.mark.parametrize(("mount", "chunk_size", "first", "chunks"), [
    (True, 8 * 1024 * 1024, ["mounted", "mounted"], 0),
    (False, 8 * 1024 * 1024, ["uploaded", "uploaded"], 0),
    (False, 256 * 1024, ["uploaded", "uploaded"], 8),  # two ~1 MB layers in 256 KiB PATCHes
])
def test_push_round_trip(busybox_image: Any, tmp_path: Path, mount: bool, chunk_size: int,
                         first: list[str], chunks: int) -> None:
    source = parse_reference(busybox_image.reference)
    dest = _copy_ref(busybox_image.domain, "busybox")
    config = RegistryConfig(docker_config=NO_CREDS, chunk_size=chunk_size)
    outcomes, stats = asyncio.run(_copy_all(config, source, dest, tmp_path, mount))
    assert outcomes == [first, first, ["exists", "exists"], ["exists", "exists"]]
    assert stats["mounts" if mount else "uploads"] == 4
    assert stats["chunks"] == chunks
    assert asyncio.run(_resolve_all(dest)) == [
        busybox_image.platforms["amd64"].manifest_digest,
        busybox_image.platforms["arm64"].manifest_digest]


def test_mount_of_a_blob_the_source_lacks_falls_back_to_upload(busybox_image: Any) -> None:
    data = b"only here " + uuid.uuid4().bytes
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    other = parse_reference(f"{busybox_image.domain}/library/busybox:latest")
    dest = _copy_ref(busybox_image.domain, "fallback")

    async def push() -> tuple[str, dict[str, int]]:
        async with RegistryClient(RegistryConfig(docker_config=NO_CREDS)) as client:
            outcome = await client.push_blob(dest, digest, len(data), data, mount_from=other)
            return outcome, client.statistics()
    outcome, stats = asyncio.run(push())
    assert outcome == "uploaded"  # the registry answered 202 to the mount and took the bytes
    assert (stats["mounts"], stats["uploads"]) == (0, 1)


def test_push_bytes_that_do_not_match_the_digest(busybox_image: Any) -> None:
    dest = _copy_ref(busybox_image.domain, "bad")
    wrong = "sha256:" + "1" * 64

    async def push() -> None:
        async with RegistryClient(RegistryConfig(docker_config=NO_CREDS)) as client:
            await client.push_blob(dest, wrong, 5, b"hello")
    with pytest.raises(RegistryError) as caught:
        asyncio.run(push())
    assert caught.value.message.startswith(f"uploading blob {wrong}: http://{busybox_image.domain}"
                                           f"/v2/{dest.path}/blobs/uploads/")
    assert caught.value.message.endswith("answered 400 (DIGEST_INVALID: provided digest did not "
                                         "match uploaded content)")


def test_push_a_manifest_whose_blobs_are_missing(busybox_image: Any) -> None:
    dest = _copy_ref(busybox_image.domain, "orphan")
    absent = "sha256:" + "2" * 64
    manifest = ('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
                f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json",'
                f'"digest":"{absent}","size":2}},"layers":[]}}').encode()

    async def push() -> None:
        async with RegistryClient(RegistryConfig(docker_config=NO_CREDS)) as client:
            await client.push_manifest(dest, manifest,
                                       "application/vnd.oci.image.manifest.v1+json")
    with pytest.raises(RegistryError) as caught:
        asyncio.run(push())
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert caught.value.message == (
        f"pushing manifest {digest}: http://{busybox_image.domain}/v2/{dest.path}/manifests/v1 "
        "answered 400 (MANIFEST_BLOB_UNKNOWN: blob unknown to registry)")


def test_resolve_parse_platform_of_pushed_index(busybox_image: Any) -> None:
    """A digest-pinned reference to the copy's index resolves like the tag."""
    source = parse_reference(busybox_image.reference)
    dest = _copy_ref(busybox_image.domain, "pinned")

    async def run() -> tuple[str, str]:
        async with RegistryClient(RegistryConfig(docker_config=NO_CREDS)) as client:
            amd = await client.resolve(source, parse_platform("linux/amd64"))
            arm = await client.resolve(source, parse_platform("linux/arm64"))
            for image in (amd, arm):
                await client.push_blob(dest, image.layers[0].digest, image.layers[0].size,
                                       await _layer_bytes(client, source, image.layers[0]),
                                       mount_from=source)
                await client.push_blob(dest, "sha256:" + hashlib.sha256(image.config).hexdigest(),
                                       len(image.config), image.config, mount_from=source)
                await client.push_manifest(dest, image.manifest_bytes, image.media_type,
                                           target=image.digest)
            index = await client.push_index(dest, [
                Descriptor(amd.media_type, amd.digest, len(amd.manifest_bytes),
                           Platform("linux", "amd64")),
                Descriptor(arm.media_type, arm.digest, len(arm.manifest_bytes),
                           Platform("linux", "arm64", "v8"))])
            pinned = parse_reference(f"{dest.name}@{index}")
            return index, (await client.resolve(pinned, parse_platform("linux/arm64"))).digest
    index, arm_digest = asyncio.run(run())
    assert index.startswith("sha256:")
    assert arm_digest == busybox_image.platforms["arm64"].manifest_digest


async def _layer_bytes(client: RegistryClient, ref: Reference, layer: Any) -> bytes:
    return await client.fetch_blob_bytes(ref, layer.digest, layer.size)
