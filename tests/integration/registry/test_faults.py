"""A registry that lies, breaks or is gone: fake registries on loopback (aiohttp servers in
the test) answering a small image with one thing wrong, each case in one table."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from dockyard.scheduler._errors import RegistryError
from dockyard.scheduler._platform import Platform
from dockyard.scheduler._reference import parse_reference
from dockyard.workers._auth import DockerConfig
from dockyard.workers._registry import OCI_MANIFEST, RegistryClient, RegistryConfig

LAYER = b"layer bytes " * 100
DIFF_ID = "sha256:" + "d" * 64
CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]}}).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_for(config: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(LAYER), "size": len(LAYER)}]}).encode()


MANIFEST = manifest_for(CONFIG)

Answer = tuple[int, dict[str, str], bytes]
OK_MANIFEST: Answer = (200, {"Content-Type": OCI_MANIFEST}, MANIFEST)
MANIFEST_PATH = "/v2/app/manifests/1"
CONFIG_PATH = f"/v2/app/blobs/{_digest(CONFIG)}"
LAYER_PATH = f"/v2/app/blobs/{_digest(LAYER)}"


@dataclass
class FakeRegistry:
    """Answers by path: a list of answers, one per request, the last one repeated."""

    answers: dict[str, list[Answer]]
    seen: list[str] = field(default_factory=list)  # "METHOD path" of each request

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(f"{request.method} {request.path}")
        queue = self.answers.get(request.path) or [(404, {}, b"")]
        status, headers, body = queue.pop(0) if len(queue) > 1 else queue[0]
        return web.Response(status=status, headers=headers, body=body)


def image(**overrides: list[Answer]) -> dict[str, list[Answer]]:
    answers: dict[str, list[Answer]] = {MANIFEST_PATH: [OK_MANIFEST],
                                        CONFIG_PATH: [(200, {}, CONFIG)],
               LAYER_PATH: [(200, {}, LAYER)]}
    answers.update({{"manifest": MANIFEST_PATH, "config": CONFIG_PATH,
                     "layer": LAYER_PATH}[k]: v for k, v in overrides.items()})
    return answers


def with_config(config: bytes) -> dict[str, list[Answer]]:
    """The image with another config (and a manifest naming it)."""
    return {**image(manifest=[(200, {}, manifest_for(config))]),
            f"/v2/app/blobs/{_digest(config)}": [(200, {}, config)]}


@asynccontextmanager
async def serving(fake: FakeRegistry) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


FAST = RegistryConfig(attempts=3, backoff_initial=0.01, backoff_max=0.02,
                      docker_config=DockerConfig(Path("/nonexistent/config.json")))
UNAUTHORIZED = (401, {"WWW-Authenticate": 'Basic realm="fake"'},
                b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
SCHEMA1 = json.dumps({"schemaVersion": 1, "name": "app", "fsLayers": []}).encode()

# (case, answers, message pattern with {url} for the fake's base URL, retries)
FAULTS: list[tuple[str, dict[str, list[Answer]], str, int]] = [
    ("corrupt layer", image(layer=[(200, {}, LAYER.replace(b"l", b"L"))]),
     r"blob at {url}/v2/app/blobs/sha256:\w+ does not match its digest: got sha256:\w+", 0),
    ("short layer", image(layer=[(200, {}, LAYER[:-1])]),
     r"blob at {url}/v2/app/blobs/sha256:\w+ is shorter than its descriptor's 1200 bytes", 0),
    ("long layer", image(layer=[(200, {}, LAYER + b"x")]),
     r"blob at {url}/v2/app/blobs/sha256:\w+ is larger than its descriptor's 1200 bytes", 0),
    ("corrupt config", image(config=[(200, {}, CONFIG.replace(b"amd64", b"arm64"))]),
     r"blob at {url}/v2/app/blobs/sha256:\w+ does not match its digest: got sha256:\w+", 0),
    ("html manifest", image(manifest=[(200, {"Content-Type": "text/html"}, b"<html>hi")]),
     r"registry returned an invalid manifest at {url}/v2/app/manifests/1: not JSON "
     r"\(Expecting value: line 1 column 1 \(char 0\)\)", 0),
    ("truncated manifest", image(manifest=[(200, {}, MANIFEST[:40])]),
     r"registry returned an invalid manifest at {url}/v2/app/manifests/1: not JSON .*", 0),
    ("schema 1", image(manifest=[(200, {}, SCHEMA1)]),
     r"{url}/v2/app/manifests/1 is a Docker schema 1 manifest, which is not supported", 0),
    ("config without rootfs", with_config(b"{}"),
     r"registry returned an invalid image config at {url}/v2/app/manifests/sha256:\w+: "
     r"no rootfs.diff_ids", 0),
    ("layers and diff_ids disagree", with_config(b'{"rootfs":{"diff_ids":[]}}'),
     r"registry returned an invalid manifest at {url}/v2/app/manifests/sha256:\w+: 1 layers "
     r"but the config lists 0 diff_ids", 0),
    ("always 503", image(manifest=[(503, {}, b"")]),
     r"pulling {host}/app:1: {url}/v2/app/manifests/1 failed after 3 attempts: HTTP 503", 2),
    ("always 429", image(manifest=[(429, {}, b"")]),
     r"pulling {host}/app:1: {url}/v2/app/manifests/1 failed after 3 attempts: HTTP 429", 2),
    ("401 without credentials", image(manifest=[UNAUTHORIZED]),
     r"pulling {host}/app:1: {url}/v2/app/manifests/1 answered 401 unauthorized "
     r"\(UNAUTHORIZED: authentication required\)", 0),
    ("401 without a challenge", image(manifest=[(401, {}, b"")]),
     r"pulling {host}/app:1: {url}/v2/app/manifests/1 answered 401 unauthorized", 0),
    ("403", image(manifest=[(403, {}, b"")]),
     r"pulling {host}/app:1: {url}/v2/app/manifests/1 answered 403 denied", 0),
]


def _fetch_all(domain: str, out: Path, config: RegistryConfig = FAST) -> Callable[
        [], asyncio.Future[dict[str, int]]]:
    async def run() -> dict[str, int]:
        ref = parse_reference(f"{domain}/app:1")
        async with RegistryClient(config) as client:
            try:
                resolved = await client.resolve(ref, Platform("linux", "amd64"))
                await client.fetch_blob(ref, resolved.layers[0], out)
            finally:
                stats = client.statistics()
        return stats
    return run  # type: ignore[return-value]


@pytest.mark.parametrize(("case", "answers", "pattern", "retries"), FAULTS,
                         ids=[row[0] for row in FAULTS])
def test_fault(case: str, answers: dict[str, list[Answer]], pattern: str, retries: int,
               tmp_path: Path) -> None:
    fake = FakeRegistry({k: list(v) for k, v in answers.items()})
    caught: list[RegistryError] = []

    async def run() -> str:
        async with serving(fake) as domain:
            try:
                await _fetch_all(domain, tmp_path / "layer")()
            except RegistryError as err:
                caught.append(err)
            return domain
    domain = asyncio.run(run())
    assert caught, f"{case}: no RegistryError"
    expected = pattern.format(url=re.escape(f"http://{domain}"), host=re.escape(domain))
    assert re.fullmatch(expected, caught[0].message), caught[0].message
    assert caught[0].hint
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left
    assert sum(1 for s in fake.seen if s.endswith("/manifests/1")) == 1 + retries


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    answers = image(manifest=[(503, {}, b""), (429, {}, b""), OK_MANIFEST],
                    layer=[(500, {}, b""), (200, {}, LAYER)])
    fake = FakeRegistry(answers)

    async def run() -> dict[str, int]:
        async with serving(fake) as domain:
            return await _fetch_all(domain, tmp_path / "layer")()
    stats = asyncio.run(run())
    assert (tmp_path / "layer").read_bytes() == LAYER
    assert stats["retries"] == 3


def test_basic_auth_from_docker_config(tmp_path: Path) -> None:
    import base64
    good = "Basic " + base64.b64encode(b"bob:pw").decode()

    async def guarded(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != good:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="x"'})
        return await fake.handle(request)
    fake = FakeRegistry(image())
    config_dir = tmp_path / "docker"
    config_dir.mkdir()

    async def run() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", guarded)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            domain = f"127.0.0.1:{runner.addresses[0][1]}"
            (config_dir / "config.json").write_text(json.dumps(
                {"auths": {domain: {"auth": base64.b64encode(b"bob:pw").decode()}}}))
            config = RegistryConfig(docker_config=DockerConfig(config_dir / "config.json",
                                                               _auths(config_dir, domain)))
            await _fetch_all(domain, tmp_path / "layer", config)()
        finally:
            await runner.cleanup()
    asyncio.run(run())
    assert (tmp_path / "layer").read_bytes() == LAYER


def _auths(config_dir: Path, domain: str) -> dict[str, dict[str, str]]:
    loaded = json.loads((config_dir / "config.json").read_text())["auths"]
    return {domain: loaded[domain]}


def test_manifest_digest_mismatch() -> None:
    wrong = "sha256:" + "e" * 64
    fake = FakeRegistry({f"/v2/app/manifests/{wrong}": [OK_MANIFEST]})

    async def run() -> str:
        async with serving(fake) as domain, RegistryClient(FAST) as client:
            with pytest.raises(RegistryError) as caught:
                await client.fetch_manifest(parse_reference(f"{domain}/app@{wrong}"))
            return caught.value.message
    message = asyncio.run(run())
    assert re.fullmatch(rf"manifest at http://.*/v2/app/manifests/{wrong} does not match its "
                        rf"digest: got {_digest(MANIFEST)}", message)



def test_nothing_listening() -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused

        async def run() -> None:
            async with RegistryClient(FAST) as client:
                await client.resolve(parse_reference(f"127.0.0.1:{port}/app:1"),
                                     Platform("linux", "amd64"))
        with pytest.raises(RegistryError) as caught:
            asyncio.run(run())
    assert re.fullmatch(rf"pulling 127\.0\.0\.1:{port}/app:1: http://127\.0\.0\.1:{port}/v2/app"
                        r"/manifests/1 failed after 3 attempts: ClientConnectorError: .*",
                        caught.value.message), caught.value.message
    assert caught.value.hint == ("check that the registry is running and reachable at that "
                                 "address (a plain-HTTP registry must be localhost or listed "
                                 "as insecure)")
