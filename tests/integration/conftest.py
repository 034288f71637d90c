"""Real services for the integration tests: a registry, a token-auth registry, and a
multi-arch busybox image in the registry.

- ``registry``: Debian's ``docker-registry`` (distribution 2.8) on a free 127.0.0.1 port,
  storage in a tmp dir, one per session, ready once ``GET /v2/`` answers, stopped by PID.
- ``token_registry``: the same with ``auth: token``; the token service is a small HTTP
  server in this process that signs RS256 JWTs with a key and certificate made by the
  ``openssl`` CLI.  User ``alice``/``wonderland`` may push and pull everything, ``reader``/
  ``reader`` only pull; anonymous requests get a token granting nothing (so a 401).
- ``busybox_image``: ``library/busybox:latest``, an OCI index of linux/amd64 and
  linux/arm64/v8 images made from the host's static busybox binaries, written as an OCI
  layout with tarfile/json and pushed by ``skopeo copy --all`` (not by dockyard's client,
  which is tested against it).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

_BUSYBOX = {
    "amd64": Path("/bin/busybox"),
    "arm64": Path(os.environ.get("DOCKYARD_BUSYBOX_ARM64",
                                 "/var/cache/dockyard/busybox-arm64/bin/busybox")),
}
_REGISTRY_BIN = "/usr/bin/docker-registry"
_READY_TIMEOUT = 15.0
_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TOKEN_USERS = {"alice": ("wonderland", "pull,push"), "reader": ("reader", "pull")}
TOKEN_SERVICE = "dockyard-test-registry"


def need_tool(path: str) -> str:
    """The tool's path; a failure (never a skip) when it is missing."""
    found = shutil.which(path)
    if found is None:
        pytest.fail(f"{path} is missing: run 'make setup' (apt-get install docker-registry "
                    "skopeo openssl)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- docker-registry --------------------------------------------------------------------

@dataclass
class RunningRegistry:
    """A registry process: ``domain`` is ``127.0.0.1:<port>``, ``url`` its base URL."""

    port: int
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.domain}"


def _registry_config(root: Path, port: int, auth: dict[str, Any] | None) -> str:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    if auth is not None:
        config["auth"] = auth
    return json.dumps(config)  # JSON is YAML


def _wait_ready(reg: RunningRegistry) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if reg.process.poll() is not None:
            pytest.fail(f"docker-registry exited ({reg.process.returncode}):\n"
                        f"{reg.log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{reg.url}/v2/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # 401: up, and asking for auth
        except OSError:
            time.sleep(0.05)
    _stop(reg)
    pytest.fail(f"docker-registry did not answer on {reg.url} within {_READY_TIMEOUT}s")


def _stop(reg: RunningRegistry) -> None:
    if reg.process.poll() is None:
        os.kill(reg.process.pid, signal.SIGTERM)
        try:
            reg.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(reg.process.pid, signal.SIGKILL)
            reg.process.wait()


@pytest.fixture(scope="session")
def start_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A factory ``start_registry(auth=None) -> RunningRegistry``; every registry it started
    is stopped (by PID) at the end of the session."""
    started: list[RunningRegistry] = []
    binary = need_tool(_REGISTRY_BIN)

    def start(auth: dict[str, Any] | None = None) -> RunningRegistry:
        root = tmp_path_factory.mktemp("registry")
        port = free_port()
        (root / "config.yml").write_text(_registry_config(root, port, auth))
        log = root / "registry.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([binary, "serve", str(root / "config.yml")],
                                       stdout=out, stderr=subprocess.STDOUT)
        reg = RunningRegistry(port, root, process, log)
        started.append(reg)
        _wait_ready(reg)
        return reg
    yield start
    for reg in started:
        _stop(reg)


@pytest.fixture(scope="session")
def registry(start_registry: Any) -> RunningRegistry:
    """A plain-HTTP registry without auth on 127.0.0.1."""
    reg: RunningRegistry = start_registry()
    return reg


# --- token auth -------------------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenIssuer:
    """Signs registry tokens (RS256 JWT with an x5c certificate chain) with openssl."""

    key: Path
    cert: Path
    issuer: str = "dockyard-test-issuer"
    requests: list[dict[str, Any]] = field(default_factory=list)  # each token request seen

    def cert_der_b64(self) -> str:
        lines = self.cert.read_text().strip().splitlines()
        return "".join(line for line in lines if not line.startswith("-----"))

    def sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der_b64()]}
        claims = {"iss": self.issuer, "sub": subject, "aud": TOKEN_SERVICE, "exp": now + 600,
                  "nbf": now - 30, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}." \
                        f"{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), capture_output=True,
                                   check=True).stdout
        return f"{signing_input}.{_b64url(signature)}"


def _granted(user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
    if user is None:
        return []
    allowed = set(TOKEN_USERS[user][1].split(","))
    access = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        granted = [a for a in actions.split(",") if a in allowed]
        if kind == "repository" and granted:
            access.append({"type": kind, "name": name, "actions": granted})
    return access


_WRONG = "<wrong credentials>"


def _user_of(header: str | None) -> str | None:
    """The user a Basic header proves; None when absent, ``_WRONG`` when wrong."""
    if not header:
        return None
    if not header.startswith("Basic "):
        return _WRONG
    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return name if TOKEN_USERS.get(name, ("",))[0] == password and password else _WRONG


def _token_handler(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- http.server's name
            query = parse_qs(urlparse(self.path).query)
            user = _user_of(self.headers.get("Authorization"))
            issuer.requests.append({"user": user, "scope": query.get("scope", []),
                                    "service": query.get("service", [""])[0]})
            if user == _WRONG:
                self.send_response(401)
                self.end_headers()
                return
            token = issuer.sign(user or "", _granted(user, query.get("scope", [])))
            body = json.dumps({"token": token, "expires_in": 600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass
    return Handler


@dataclass
class TokenRegistry:
    registry: RunningRegistry
    issuer: TokenIssuer
    realm: str


@pytest.fixture(scope="session")
def token_registry(start_registry: Any,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    """A registry with ``auth: token`` and its token service (see the module docstring)."""
    keys = tmp_path_factory.mktemp("token-keys")
    need_tool("openssl")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=dockyard-test-token", "-keyout", str(keys / "key.pem"),
                    "-out", str(keys / "cert.pem")], check=True, capture_output=True)
    issuer = TokenIssuer(keys / "key.pem", keys / "cert.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(issuer))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        realm = f"http://127.0.0.1:{server.server_address[1]}/token"
        reg = start_registry({"token": {"realm": realm, "service": TOKEN_SERVICE,
                                        "issuer": issuer.issuer,
                                        "rootcertbundle": str(issuer.cert)}})
        yield TokenRegistry(reg, issuer, realm)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- the busybox image ------------------------------------------------------------------

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _entry(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> tuple[
        tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
    info.mtime, info.uname, info.gname = 0, "root", "root"
    return info, data


def busybox_layer(arch: str) -> bytes:
    """An uncompressed layer tar: /bin/busybox for ``arch``, one symlink per applet,
    /etc/passwd, /etc/group, /tmp, /root."""
    binary = _BUSYBOX[arch]
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run 'make setup'")
    applets = subprocess.run([str(_BUSYBOX["amd64"]), "--list"], check=True,
                             capture_output=True, text=True).stdout.split()
    entries = [_entry("bin", tarfile.DIRTYPE, 0o755), _entry("etc", tarfile.DIRTYPE, 0o755),
               _entry("root", tarfile.DIRTYPE, 0o700), _entry("tmp", tarfile.DIRTYPE, 0o1777),
               _entry("bin/busybox", tarfile.REGTYPE, 0o755, binary.read_bytes()),
               _entry("etc/passwd", tarfile.REGTYPE, 0o644, _PASSWD.encode()),
               _entry("etc/group", tarfile.REGTYPE, 0o644, _GROUP.encode())]
    entries += [_entry(f"bin/{name}", tarfile.SYMTYPE, 0o777, link="busybox")
                for name in sorted(applets) if name != "busybox"]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OciLayout:
    """An OCI image layout directory being written: blobs by digest, then index.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def add(self, media_type: str, data: bytes) -> dict[str, Any]:
        digest = _sha256(data)
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_json(self, media_type: str, value: dict[str, Any]) -> dict[str, Any]:
        return self.add(media_type, json.dumps(value, separators=(",", ":")).encode())

    def finish(self, top: dict[str, Any], tag: str) -> None:
        entry = {**top, "annotations": {"org.opencontainers.image.ref.name": tag}}
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                          "manifests": [entry]}))


@dataclass(frozen=True)
class PlatformImage:
    """One platform of the busybox image as written."""

    manifest_digest: str
    config_digest: str
    layer_digest: str
    layer_size: int
    diff_id: str


@dataclass(frozen=True)
class BusyboxImage:
    """``reference`` (``127.0.0.1:<port>/library/busybox:latest``), ``index_digest``, and per
    architecture (``amd64``, ``arm64``) what its image holds."""

    reference: str
    domain: str
    index_digest: str
    platforms: dict[str, PlatformImage]


def _platform_image(layout: OciLayout, arch: str) -> tuple[dict[str, Any], PlatformImage]:
    tar = busybox_layer(arch)
    layer = layout.add(OCI_LAYER, gzip.compress(tar, mtime=0))
    config = layout.add_json(OCI_CONFIG, {
        "architecture": arch, "os": "linux", **({"variant": "v8"} if arch == "arm64" else {}),
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [_PATH_ENV], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [_sha256(tar)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"busybox {arch}"}]})
    manifest = layout.add_json(OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                              "config": config, "layers": [layer]})
    platform = {"architecture": arch, "os": "linux",
                **({"variant": "v8"} if arch == "arm64" else {})}
    return {**manifest, "platform": platform}, PlatformImage(
        manifest["digest"], config["digest"], layer["digest"], layer["size"], _sha256(tar))


def write_busybox_layout(root: Path, tag: str = "latest") -> tuple[str, dict[str,
                                                                           PlatformImage]]:
    """Write the multi-arch busybox OCI layout at ``root``; its index digest and images."""
    layout = OciLayout(root)
    entries, images = [], {}
    for arch in ("amd64", "arm64"):
        entry, images[arch] = _platform_image(layout, arch)
        entries.append(entry)
    index = layout.add_json(OCI_INDEX, {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                        "manifests": entries})
    layout.finish(index, tag)
    return index["digest"], images


def skopeo_push(layout: Path, tag: str, destination: str) -> None:
    """``skopeo copy --all`` an OCI layout's ``tag`` to a plain-HTTP registry, digests kept."""
    skopeo = need_tool("skopeo")
    result = subprocess.run([skopeo, "copy", "--all", "--preserve-digests", "--quiet",
                             "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                             f"docker://{destination}"], capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        pytest.fail(f"skopeo copy to {destination} failed: {result.stderr}")


@pytest.fixture(scope="session")
def busybox_image(registry: RunningRegistry,
                  tmp_path_factory: pytest.TempPathFactory) -> BusyboxImage:
    """``library/busybox:latest`` (linux/amd64 + linux/arm64/v8) in ``registry``."""
    root = tmp_path_factory.mktemp("busybox-oci") / "layout"
    index_digest, images = write_busybox_layout(root)
    reference = f"{registry.domain}/library/busybox:latest"
    skopeo_push(root, "latest", reference)
    return BusyboxImage(reference, registry.domain, index_digest, images)
