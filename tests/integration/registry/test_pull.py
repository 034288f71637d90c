"""Pull from Debian's docker-registry an image dockyard did not make (the ``busybox_image``
fixture, pushed by skopeo): resolve per platform, fetch and verify blobs.

Fixtures come from tests/integration/conftest.py (typed ``Any`` here: conftest modules are
not importable)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from dockyard.scheduler._errors import RegistryError
from dockyard.scheduler._platform import parse_platform
from dockyard.scheduler._reference import parse_reference
from dockyard.workers._auth import DockerConfig
from dockyard.workers._registry import OCI_INDEX, RegistryClient, RegistryConfig

NO_CREDS = RegistryConfig(docker_config=DockerConfig(Path("/nonexistent/config.json")))

PLATFORMS = [
    ("linux/amd64", "amd64"),
    ("linux/x86_64", "amd64"),
    ("linux/amd64/v3", "amd64"),
    ("linux/arm64", "arm64"),
    ("linux/arm64/v8", "arm64"),
    ("linux/aarch64", "arm64"),
]


@pytest.mark.parametrize(("platform", "arch"), PLATFORMS)
def test_resolve_per_platform(busybox_image: Any, platform: str, arch: str) -> None:
    async def resolve() -> None:
        async with RegistryClient(NO_CREDS) as client:
            image = await client.resolve(parse_reference(busybox_image.reference),
                                         parse_platform(platform))
        expected = busybox_image.platforms[arch]
        assert image.digest == expected.manifest_digest
        assert image.index_digest == busybox_image.index_digest
        assert hashlib.sha256(image.config).hexdigest() == expected.config_digest[7:]
        assert json.loads(image.config)["architecture"] == arch
        assert [(layer.digest, layer.size, layer.diff_id) for layer in image.layers] == [
            (expected.layer_digest, expected.layer_size, expected.diff_id)]
    asyncio.run(resolve())


def test_resolve_by_digest(busybox_image: Any) -> None:
    name = busybox_image.reference.rsplit(":", 1)[0]
    arm = busybox_image.platforms["arm64"].manifest_digest

    async def resolve() -> None:
        async with RegistryClient(NO_CREDS) as client:
            by_index = await client.resolve(parse_reference(f"{name}@{busybox_image.index_digest}"),
                                            parse_platform("linux/arm64"))
            by_manifest = await client.resolve(parse_reference(f"{name}@{arm}"),
                                               parse_platform("linux/amd64"))
            top = await client.fetch_manifest(parse_reference(busybox_image.reference))
        assert by_index.digest == arm
        assert by_manifest.digest == arm  # a manifest reference is taken as it is
        assert by_manifest.index_digest == ""
        assert (top.digest, top.media_type) == (busybox_image.index_digest, OCI_INDEX)
    asyncio.run(resolve())


def test_resolve_a_missing_platform(busybox_image: Any) -> None:
    async def resolve() -> None:
        async with RegistryClient(NO_CREDS) as client:
            await client.resolve(parse_reference(busybox_image.reference),
                                 parse_platform("linux/s390x"))
    with pytest.raises(RegistryError) as caught:
        asyncio.run(resolve())
    assert caught.value.message == (
        f"http://{busybox_image.domain}/v2/library/busybox/manifests/latest has no image for "
        "platform linux/s390x (it has: linux/amd64, linux/arm64/v8)")


def test_missing_image(busybox_image: Any) -> None:
    async def resolve() -> None:
        async with RegistryClient(NO_CREDS) as client:
            await client.resolve(parse_reference(f"{busybox_image.domain}/library/nope:1"),
                                 parse_platform("linux/amd64"))
    with pytest.raises(RegistryError) as caught:
        asyncio.run(resolve())
    assert caught.value.message == (
        f"image not found: {busybox_image.domain}/library/nope:1 (http://{busybox_image.domain}"
        "/v2/library/nope/manifests/1 answered 404) (MANIFEST_UNKNOWN: manifest unknown)")


def test_fetch_blob_streams_and_verifies(busybox_image: Any, tmp_path: Path) -> None:
    async def fetch() -> list[str]:
        async with RegistryClient(NO_CREDS) as client:
            ref = parse_reference(busybox_image.reference)
            image = await client.resolve(ref, parse_platform("linux/arm64"))
            await client.fetch_blob(ref, image.layers[0], tmp_path / "layer.tgz")
            return [layer.diff_id for layer in image.layers]
    diff_ids = asyncio.run(fetch())
    raw = gzip.decompress((tmp_path / "layer.tgz").read_bytes())
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_ids[0]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        busybox = tar.extractfile("bin/busybox")
        assert busybox is not None and busybox.read(20)[18] == 0xB7  # e_machine: AArch64
        assert tar.getmember("bin/sh").linkname == "busybox"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.tgz"]


def test_fetch_a_missing_blob(busybox_image: Any, tmp_path: Path) -> None:
    from dockyard.workers._registry import Descriptor
    missing = Descriptor("x", "sha256:" + "0" * 64, 3)

    async def fetch() -> None:
        async with RegistryClient(NO_CREDS) as client:
            await client.fetch_blob(parse_reference(busybox_image.reference), missing,
                                    tmp_path / "blob")
    with pytest.raises(RegistryError, match="blob sha256:0{64} not found in .*library/busybox"):
        asyncio.run(fetch())
    assert list(tmp_path.iterdir()) == []
