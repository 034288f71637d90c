"""Token auth against docker-registry (``auth: token`` with the fixture's token service),
and credentials found the docker CLI's way: ``$DOCKER_CONFIG/config.json`` ``auths``,
``credsStore`` / ``credHelpers`` answered by a ``docker-credential-*`` program on PATH.

Fixtures come from tests/integration/conftest.py (typed ``Any``: conftest modules are not
importable)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from dockyard.scheduler._errors import RegistryError
from dockyard.scheduler._platform import Platform
from dockyard.scheduler._reference import Reference, parse_reference
from dockyard.workers._auth import load_docker_config
from dockyard.workers._registry import OCI_MANIFEST, RegistryClient, RegistryConfig

LAYER = b"not really a tar, but a blob is a blob"
DIFF_ID = "sha256:" + "d" * 64
CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]}}).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": _digest(CONFIG), "size": len(CONFIG)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _digest(LAYER), "size": len(LAYER)}]}).encode()


def _write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: dict[str, Any]) -> None:
    folder = tmp_path / "docker-config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(content))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))


def _auths(domain: str, user: str, password: str) -> dict[str, Any]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"auths": {domain: {"auth": token}}}


async def _push(ref: Reference) -> dict[str, int]:
    async with RegistryClient(RegistryConfig(backoff_initial=0.01)) as client:
        await client.push_blob(ref, _digest(CONFIG), len(CONFIG), CONFIG)
        await client.push_blob(ref, _digest(LAYER), len(LAYER), LAYER)
        await client.push_manifest(ref, MANIFEST, OCI_MANIFEST)
        return client.statistics()


async def _pull(ref: Reference, out: Path) -> str:
    async with RegistryClient(RegistryConfig(backoff_initial=0.01)) as client:
        image = await client.resolve(ref, Platform("linux", "amd64"))
        await client.fetch_blob(ref, image.layers[0], out)
        return image.digest


@pytest.fixture
def pushed(token_registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Reference:
    """A small image pushed by alice to a fresh repository of the token registry."""
    domain = token_registry.registry.domain
    ref = parse_reference(f"{domain}/team/app-{uuid.uuid4().hex[:8]}:1")
    _write_config(tmp_path, monkeypatch, _auths(domain, "alice", "wonderland"))
    stats = asyncio.run(_push(ref))
    assert stats["uploads"] == 2
    assert stats["token_hits"] > 0  # one token for the push scope, reused
    monkeypatch.delenv("DOCKER_CONFIG")
    return ref


def test_token_push_and_pull(token_registry: Any, pushed: Reference, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    _write_config(tmp_path, monkeypatch, _auths(pushed.domain, "reader", "reader"))
    before = len(token_registry.issuer.requests)
    assert asyncio.run(_pull(pushed, tmp_path / "layer")) == _digest(MANIFEST)
    assert (tmp_path / "layer").read_bytes() == LAYER
    asked = token_registry.issuer.requests[before:]
    assert asked and all(r["user"] == "reader" for r in asked)
    assert {s for r in asked for s in r["scope"]} == {f"repository:{pushed.path}:pull"}
    assert {r["service"] for r in asked} == {"dockyard-test-registry"}


UNAUTHORIZED = [
    ("anonymous", None, "pull",
     r"pulling {ref}: {url}/v2/{path}/manifests/1 answered 401 unauthorized .*"),
    ("wrong password", ("alice", "nope"), "pull",
     r"getting a registry token: {realm}\?service=dockyard-test-registry&scope=repository%3A"
     r"{qpath}%3Apull answered 401 unauthorized"),
    ("reader pushing", ("reader", "reader"), "push",
     r"pushing manifest sha256:\w+: {url}/v2/{path}/manifests/1 answered 401 unauthorized "
     r"\(UNAUTHORIZED: authentication required\)"),  # its blobs exist: only the PUT fails
]


@pytest.mark.parametrize(("case", "creds", "action", "pattern"), UNAUTHORIZED,
                         ids=[row[0] for row in UNAUTHORIZED])
def test_unauthorized(token_registry: Any, pushed: Reference, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch, case: str, creds: tuple[str, str] | None,
                      action: str, pattern: str) -> None:
    import re
    _write_config(tmp_path, monkeypatch, _auths(pushed.domain, *creds) if creds else {})
    with pytest.raises(RegistryError) as caught:
        asyncio.run(_pull(pushed, tmp_path / "layer") if action == "pull" else _push(pushed))
    expected = pattern.format(ref=re.escape(str(pushed)), url=re.escape(
        f"http://{pushed.domain}"), path=re.escape(pushed.path),
        realm=re.escape(token_registry.realm), qpath=re.escape(pushed.path.replace("/", "%2F")))
    assert re.fullmatch(expected, caught.value.message), caught.value.message
    assert caught.value.hint == (f"log in with 'docker login {pushed.domain}' (credentials are "
                                 "read from $DOCKER_CONFIG or ~/.docker/config.json)")
    assert not (tmp_path / "layer").exists()


def _helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, domain: str) -> Path:
    """A docker-credential-<name> on PATH that knows alice for ``domain``; it logs each
    server it was asked about."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = get ] || exit 1\nread server\necho "$server" >> {log}\n'
        f'if [ "$server" = "{domain}" ]; then\n'
        '  echo \'{"ServerURL":"x","Username":"alice","Secret":"wonderland"}\'\nelse\n'
        "  echo 'credentials not found in native keychain'; exit 1\nfi\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.mark.parametrize("key", ["credsStore", "credHelpers"])
def test_credential_helper(pushed: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           key: str) -> None:
    log = _helper(tmp_path, monkeypatch, "dytest", pushed.domain)
    setting = "dytest" if key == "credsStore" else {pushed.domain: "dytest"}
    _write_config(tmp_path, monkeypatch, {key: setting})
    assert asyncio.run(_pull(pushed, tmp_path / "layer")) == _digest(MANIFEST)
    assert log.read_text().split() == [pushed.domain]  # asked once, then remembered


def test_missing_helper_falls_back_to_auths(pushed: Reference, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = {**_auths(pushed.domain, "alice", "wonderland"), "credsStore": "not-installed-xyz"}
    _write_config(tmp_path, monkeypatch, config)
    assert asyncio.run(_pull(pushed, tmp_path / "layer")) == _digest(MANIFEST)


def test_helper_that_knows_nothing_means_anonymous(pushed: Reference, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _helper(tmp_path, monkeypatch, "dyempty", "elsewhere.example:5000")
    _write_config(tmp_path, monkeypatch, {"credsStore": "dyempty"})
    with pytest.raises(RegistryError, match="answered 401 unauthorized"):
        asyncio.run(_pull(pushed, tmp_path / "layer"))


BROKEN_CONFIGS = [
    ("{not json", "{dir}/config.json: invalid JSON at line 1"),
    ('{"auths": {"h": {"auth": "%%%"}}}',
     "{dir}/config.json: auths[h]: the 'auth' value is not base64 of user:password"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN_CONFIGS)
def test_broken_docker_config(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(RegistryError) as caught:
        load_docker_config({"DOCKER_CONFIG": str(tmp_path)}).stored("h")
    assert caught.value.message == message.format(dir=tmp_path)


def test_docker_config_defaults_to_home(tmp_path: Path) -> None:
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(json.dumps(_auths("h:1", "u", "p")))
    config = load_docker_config({"HOME": str(tmp_path)})
    assert config.path == tmp_path / ".docker" / "config.json"
    stored = config.stored("h:1")
    assert stored is not None and stored.username == "u"
    assert load_docker_config({"DOCKER_CONFIG": str(tmp_path / "none")}).auths == {}
