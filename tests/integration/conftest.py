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
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

# tests/ holds ``support``; pytest has it on sys.path already, conf_record.py (which loads
# this file by path, as tests/conformance/conftest.py does) has not.
if str(Path(__file__).parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parents[1]))

from support import registry as _registry  # noqa: E402
from support.busybox_image import (  # noqa: E402
    PlatformImage,
    SetupError,
    skopeo_push,
    write_busybox_layout,
)
from support.busybox_image import need_tool as find_tool  # noqa: E402
from support.registry import RunningRegistry  # noqa: E402

__all__ = ["PlatformImage", "RunningRegistry", "write_busybox_layout"]

TOKEN_USERS = {"alice": ("wonderland", "pull,push"), "reader": ("reader", "pull")}
TOKEN_SERVICE = "dockyard-test-registry"


@contextmanager
def _setup_failure() -> Iterator[None]:
    """A missing or failing host prerequisite fails the test (never a skip)."""
    try:
        yield
    except SetupError as err:
        pytest.fail(f"{err}")


def need_tool(name: str) -> str:
    """The tool's path; a failure (never a skip) when it is missing."""
    with _setup_failure():
        found = find_tool(name)
    return found


# --- docker-registry --------------------------------------------------------------------

@pytest.fixture(scope="session")
def start_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A factory ``start_registry(auth=None) -> RunningRegistry`` (tests/support/registry.py);
    every registry it started is stopped (by PID) at the end of the session."""
    started: list[RunningRegistry] = []
    need_tool("docker-registry")

    def start(auth: dict[str, Any] | None = None) -> RunningRegistry:
        with _setup_failure():
            reg = _registry.start_registry(tmp_path_factory.mktemp("registry"), auth)
        started.append(reg)
        return reg
    yield start
    for reg in started:
        _registry.stop_registry(reg)


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


# --- the busybox image (tests/support/busybox_image.py) ----------------------------------

@dataclass(frozen=True)
class BusyboxImage:
    """``reference`` (``127.0.0.1:<port>/library/busybox:latest``), ``index_digest``, and per
    architecture (``amd64``, ``arm64``) what its image holds."""

    reference: str
    domain: str
    index_digest: str
    platforms: dict[str, PlatformImage]


@pytest.fixture(scope="session")
def busybox_image(registry: RunningRegistry,
                  tmp_path_factory: pytest.TempPathFactory) -> BusyboxImage:
    """``library/busybox:latest`` (linux/amd64 + linux/arm64/v8) in ``registry``."""
    root = tmp_path_factory.mktemp("busybox-oci") / "layout"
    reference = f"{registry.domain}/library/busybox:latest"
    with _setup_failure():
        index_digest, images = write_busybox_layout(root)
        skopeo_push(root, "latest", reference)
    return BusyboxImage(reference, registry.domain, index_digest, images)
