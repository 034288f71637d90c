"""A warm rebuild asks the registry once per FROM: the client keeps manifests, indexes and
configs by digest, and asks for the tag every time.

The requests are counted twice: by the client's ``statistics()`` and by a recording proxy on
127.0.0.1 in front of the real registry (docker-registry, the ``registry`` fixture), which
lists every request the registry was sent.

Fixtures come from tests/integration/conftest.py (typed ``Any``: conftest modules are not
importable)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dockyard.scheduler._platform import Platform, parse_platform
from dockyard.scheduler._reference import Reference, parse_reference
from dockyard.workers._auth import DockerConfig
from dockyard.workers._registry import OCI_MANIFEST, RegistryClient, RegistryConfig

NO_CREDS = DockerConfig(Path("/nonexistent/config.json"))
CACHED = RegistryConfig(docker_config=NO_CREDS, backoff_initial=0.01)
UNCACHED = RegistryConfig(docker_config=NO_CREDS, backoff_initial=0.01, content_cache_bytes=0)
_FORWARDED = ("Content-Type", "Docker-Content-Digest", "Content-Length", "Location")


@dataclass
class Recorder:
    """What the proxy forwarded: ``(method, path)`` of each request, in order."""

    domain: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)

    def take(self) -> list[tuple[str, str]]:
        seen, self.seen = self.seen, []
        return seen


@asynccontextmanager
async def recording_proxy(upstream: str, answered: tuple[str, ...] = _FORWARDED
                          ) -> AsyncIterator[Recorder]:
    """A plain-HTTP proxy on 127.0.0.1 that forwards every request to ``upstream`` and
    records it, passing back the ``answered`` headers; stopped on exit, even when the body
    fails."""
    recorder = Recorder()
    async with aiohttp.ClientSession() as session:
        async def forward(request: web.Request) -> web.Response:
            recorder.seen.append((request.method, request.path))
            headers = {k: v for k, v in request.headers.items()
                       if k in ("Accept", "Authorization", "Content-Type")}
            async with session.request(request.method, upstream + request.path_qs,
                                       headers=headers, data=await request.read(),
                                       allow_redirects=False) as answer:
                body = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k in answered}
                kept.pop("Content-Length", None)
                return web.Response(status=answer.status, headers=kept, body=body)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            recorder.domain = f"127.0.0.1:{port}"
            yield recorder
        finally:
            await runner.cleanup()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _run(registry: Any, body: Callable[[Recorder], Awaitable[None]],
         answered: tuple[str, ...] = _FORWARDED) -> None:
    async def main() -> None:
        async with recording_proxy(registry.url, answered) as recorder:
            await body(recorder)
    asyncio.run(main())


def _paths(recorder: Recorder) -> list[str]:
    return [f"{method} {path}" for method, path in recorder.take()]


def _busybox(recorder: Recorder, name: str = "latest") -> Reference:
    return parse_reference(f"{recorder.domain}/library/busybox{name}")


TAG = "/v2/library/busybox/manifests/latest"
WITHOUT_DIGEST = tuple(h for h in _FORWARDED if h != "Docker-Content-Digest")

# (platform, architecture in the busybox image, headers the registry answers, the requests
# of a warm resolve, the manifests it takes from the cache): a HEAD of the tag (index and
# manifest cached), then a GET when the HEAD did not name the digest (manifest cached)
WARM = [
    ("linux/amd64", "amd64", _FORWARDED, [f"HEAD {TAG}"], 2),
    ("linux/arm64", "arm64", _FORWARDED, [f"HEAD {TAG}"], 2),
    ("linux/arm64", "arm64", WITHOUT_DIGEST, [f"HEAD {TAG}", f"GET {TAG}"], 1),
]


@pytest.mark.parametrize(("platform", "arch", "answered", "warm_requests", "manifest_hits"),
                         WARM)
def test_warm_resolve_asks_only_for_the_tag(registry: Any, busybox_image: Any, platform: str,
                                            arch: str, answered: tuple[str, ...],
                                            warm_requests: list[str],
                                            manifest_hits: int) -> None:
    expected = busybox_image.platforms[arch]

    async def body(recorder: Recorder) -> None:
        ref = _busybox(recorder, ":latest")
        async with RegistryClient(CACHED) as client:
            cold = await client.resolve(ref, parse_platform(platform))
            assert _paths(recorder) == [
                f"GET {TAG}", f"GET /v2/library/busybox/manifests/{expected.manifest_digest}",
                f"GET /v2/library/busybox/blobs/{expected.config_digest}"]
            warm = await client.resolve(ref, parse_platform(platform))
            assert _paths(recorder) == warm_requests
            stats = client.statistics()
        assert warm == cold
        assert warm.digest == expected.manifest_digest
        assert stats["requests"] == 3 + len(warm_requests)
        assert (stats["manifest_hits"], stats["config_hits"]) == (manifest_hits, 1)
    _run(registry, body, answered)


def test_a_digest_reference_costs_nothing_once_known(registry: Any,
                                                     busybox_image: Any) -> None:
    arm = busybox_image.platforms["arm64"]

    async def body(recorder: Recorder) -> None:
        by_index = _busybox(recorder, f"@{busybox_image.index_digest}")
        by_manifest = _busybox(recorder, f"@{arm.manifest_digest}")
        arm64 = Platform("linux", "arm64")
        async with RegistryClient(CACHED) as client:
            first = await client.resolve(by_index, arm64)
            assert len(_paths(recorder)) == 3  # index, manifest, config
            again = [await client.resolve(by_index, arm64),
                     await client.resolve(by_manifest, arm64)]
            assert _paths(recorder) == []
        assert first.digest == arm.manifest_digest
        assert [image.digest for image in again] == [arm.manifest_digest] * 2
        assert [image.index_digest for image in again] == [busybox_image.index_digest, ""]
        async with RegistryClient(CACHED) as client:  # known from the tag: no request either
            await client.resolve(_busybox(recorder, ":latest"), arm64)
            recorder.take()
            await client.resolve(by_index, arm64)
            assert _paths(recorder) == []
    _run(registry, body)


def test_without_a_cache_every_resolve_asks_three_times(registry: Any,
                                                        busybox_image: Any) -> None:
    async def body(recorder: Recorder) -> None:
        ref = _busybox(recorder, ":latest")
        async with RegistryClient(UNCACHED) as client:
            for _ in range(2):
                await client.resolve(ref, Platform("linux", "amd64"))
                assert len(_paths(recorder)) == 3
            assert client.statistics()["manifest_hits"] == 0
    _run(registry, body)


def _image(marker: str) -> tuple[bytes, bytes, bytes]:
    """(config, layer, manifest) of a small one-layer image."""
    layer = f"layer of {marker}".encode()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": [marker]},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _digest(layer), "size": len(layer)}]}).encode()
    return config, layer, manifest


async def _push(ref: Reference, marker: str, pusher: RegistryClient | None = None) -> str:
    """Push the image ``_image(marker)`` as ``ref`` (with a client of its own by default)."""
    if pusher is None:
        async with RegistryClient(CACHED) as own:
            return await _push(ref, marker, own)
    config, layer, manifest = _image(marker)
    for blob in (config, layer):
        await pusher.push_blob(ref, _digest(blob), len(blob), blob)
    return await pusher.push_manifest(ref, manifest, OCI_MANIFEST)


def test_a_repushed_tag_is_seen(registry: Any) -> None:
    async def body(recorder: Recorder) -> None:
        ref = parse_reference(f"{recorder.domain}/cache-{uuid.uuid4().hex[:8]}/app:v1")
        amd64 = Platform("linux", "amd64")
        async with RegistryClient(CACHED) as client:
            first_digest = await _push(ref, "one")
            recorder.take()
            assert (await client.resolve(ref, amd64)).digest == first_digest
            assert len(_paths(recorder)) == 2  # the tag (a manifest), its config
            second_digest = await _push(ref, "two")
            recorder.take()
            second = await client.resolve(ref, amd64)
            assert second.digest == second_digest != first_digest
            assert json.loads(second.config)["config"]["Env"] == ["two"]
            manifests = f"/v2/{ref.path}/manifests"
            config_digest = second.manifest["config"]["digest"]
            assert _paths(recorder) == [f"HEAD {manifests}/v1", f"GET {manifests}/{second_digest}",
                                        f"GET /v2/{ref.path}/blobs/{config_digest}"]
            await client.resolve(ref, amd64)
            assert _paths(recorder) == [f"HEAD {manifests}/v1"]
    _run(registry, body)


def test_warm_resolve_with_token_auth(token_registry: Any, tmp_path: Path) -> None:
    """The HEAD of the tag is answered 401 like a GET: the cached token answers it, one
    request in all."""
    domain = token_registry.registry.domain
    ref = parse_reference(f"{domain}/team/cached-{uuid.uuid4().hex[:8]}:v1")
    alice = {"auth": base64.b64encode(b"alice:wonderland").decode()}
    config = RegistryConfig(docker_config=DockerConfig(tmp_path / "config.json", {domain: alice}),
                            backoff_initial=0.01)

    async def run() -> tuple[str, str, int]:
        async with RegistryClient(config) as client:
            pushed = await _push(ref, "token", client)
            cold = await client.resolve(ref, Platform("linux", "amd64"))
            before = client.statistics()["requests"]
            warm = await client.resolve(ref, Platform("linux", "amd64"))
            return pushed, warm.digest if warm == cold else "", \
                client.statistics()["requests"] - before
    pushed, warm, requests = asyncio.run(run())
    assert (warm, requests) == (pushed, 1)
