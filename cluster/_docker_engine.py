"""The local Docker engine, as ``--load`` (and ``-o type=docker`` without ``dest``) needs
it, found as the docker CLI finds it: its API on ``DOCKER_HOST`` (``unix://PATH`` or
``tcp://HOST:PORT``, with TLS when ``DOCKER_TLS_VERIFY`` or ``DOCKER_TLS`` is set,
certificates from ``DOCKER_CERT_PATH``), else on the host of the docker context that
``DOCKER_CONTEXT`` or ``config.json``'s ``currentContext`` names (``DOCKER_CONFIG``, default
``~/.docker``), else on the default socket ``unix:///var/run/docker.sock``.

Plain HTTP/1.1 over the standard library, two requests only: ``GET /_ping`` (checked
before a build that loads, so an unreachable engine fails it at once, not after it ran)
and ``POST /images/load`` with the docker-archive tar as its body, as ``docker load``
sends it.  The engine answers a load with a JSON stream (one object per line): a
``stream`` line per image loaded (``Loaded image: NAME`` or ``Loaded image ID: ID``), or
an ``error``/``errorDetail`` object when the archive was refused; an HTTP error status
carries ``{"message": ...}``.  Every failure is one ``ExportError`` naming the engine and
what to do; nothing of the engine's client library is needed.

It is the client that loads (the engine is on the client's machine): with ``--endpoint``
the tar comes back over the session channel like any file output (cluster/_outputs.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from dockyard.scheduler._errors import ExportError, UsageError

__all__ = ["DEFAULT_HOST", "DockerEngine", "engine_from_environ"]

DEFAULT_HOST = "unix:///var/run/docker.sock"
CONNECT_TIMEOUT = 10.0  # seconds to connect and for a ping's answer
LOAD_TIMEOUT = 3600.0  # seconds of silence a load may take (a big image, a slow disk)
_BLOCK = 1024 * 1024  # bytes per send of a load's body
_WHAT_TO_DO = ("start the Docker engine, or set DOCKER_HOST to its socket "
               "(unix:///PATH or tcp://HOST:PORT); or write the image to a file with "
               "-o type=docker,dest=FILE")


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the engine's default)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout, blocksize=_BLOCK)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class DockerEngine:
    """One engine's address: ``host`` as the user gave it (for messages), ``scheme``
    unix or tcp, ``address`` the socket path or ``host:port``, ``tls`` the context of a
    TLS connection (None: plain)."""

    host: str
    scheme: str
    address: str
    tls: ssl.SSLContext | None = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "unix":
            return _UnixConnection(self.address, timeout)
        host, _, port = self.address.rpartition(":")
        if self.tls is not None:
            return http.client.HTTPSConnection(host, int(port), timeout=timeout,
                                               context=self.tls, blocksize=_BLOCK)
        return http.client.HTTPConnection(host, int(port), timeout=timeout, blocksize=_BLOCK)

    def _unreachable(self, exc: BaseException) -> ExportError:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ExportError(f"cannot reach the Docker engine at {self.host} to load the "
                           f"image: {why}", hint=_WHAT_TO_DO)

    def ping(self) -> None:
        """Check that the engine answers (``GET /_ping``)."""
        connection = self._connection(CONNECT_TIMEOUT)
        try:
            connection.request("GET", "/_ping")
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            connection.close()
        if response.status != 200:
            raise ExportError(f"the Docker engine at {self.host} answered its ping with "
                              f"HTTP {response.status}: {_message(body)}", hint=_WHAT_TO_DO)

    def load(self, archive: IO[bytes], size: int) -> list[str]:
        """``archive`` (a docker-archive tar of ``size`` bytes, read from its current
        position) loaded into the engine; the engine's lines (``Loaded image: ...``)."""
        connection = self._connection(LOAD_TIMEOUT)
        headers = {"Content-Type": "application/x-tar", "Content-Length": str(size)}
        try:
            with contextlib.suppress(BrokenPipeError):  # the engine stopped reading:
                connection.request("POST", "/images/load?quiet=1", body=archive,
                                   headers=headers)  # its answer says why
            response = connection.getresponse()
            return self._loaded(response.status, response)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            connection.close()

    def _loaded(self, status: int, response: http.client.HTTPResponse) -> list[str]:
        if status != 200:
            raise ExportError(f"the Docker engine at {self.host} refused the image "
                              f"(HTTP {status}): {_message(response.read())}")
        lines = []
        for raw in response:
            text = raw.strip()
            if not text:
                continue
            message = _json_object(text)
            error = message.get("errorDetail") or {}
            if message.get("error") or (isinstance(error, dict) and error.get("message")):
                detail = error.get("message") if isinstance(error, dict) else None
                raise ExportError(f"the Docker engine at {self.host} could not load the "
                                  f"image: {detail or message.get('error')}")
            stream = message.get("stream")
            if isinstance(stream, str) and stream.strip():
                lines.append(stream.strip())
        return lines


def _json_object(text: bytes) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"stream": text.decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {}


def _message(body: bytes) -> str:
    """The ``message`` of an engine's JSON error body (else the body's text)."""
    value = _json_object(body.strip())
    message = value.get("message")
    return str(message) if message else body.decode("utf-8", "replace").strip()


def engine_from_environ(environ: Mapping[str, str] = os.environ) -> DockerEngine:
    """The engine the docker CLI would use: ``DOCKER_HOST`` (``unix://``, ``tcp://``; TLS
    from ``DOCKER_TLS_VERIFY``/``DOCKER_TLS``/``DOCKER_CERT_PATH``), else the docker context
    ``DOCKER_CONTEXT`` or the config's ``currentContext`` names (``docker context use``),
    else the default socket; a form this client cannot speak is a ``UsageError``."""
    host = environ.get("DOCKER_HOST", "").strip()
    if host:
        return _engine(host, environ, None)
    config = Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    name = environ.get("DOCKER_CONTEXT", "").strip() or _current_context(config)
    if not name or name == "default":
        return _engine(DEFAULT_HOST, environ, None)
    return _context_engine(config, name, environ)


def _current_context(config: Path) -> str:
    """The ``currentContext`` of the docker CLI's ``config.json`` (empty: none)."""
    try:
        value = json.loads((config / "config.json").read_bytes())
    except (OSError, ValueError):
        return ""
    name = value.get("currentContext") if isinstance(value, dict) else None
    return name.strip() if isinstance(name, str) else ""


def _context_engine(config: Path, name: str, environ: Mapping[str, str]) -> DockerEngine:
    """The engine of the docker context ``name``, from the CLI's context store:
    ``contexts/meta/<sha256 of name>/meta.json`` names it (``Endpoints.docker.Host``), its
    TLS files are under ``contexts/tls/<sha256 of name>/docker/``."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / digest / "meta.json"
    try:
        value = json.loads(meta.read_bytes())
        endpoint = value["Endpoints"]["docker"]
        host = str(endpoint["Host"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"docker context {name!r} not found (read from {str(meta)!r})",
                         hint="pick one of `docker context ls` with DOCKER_CONTEXT, or set "
                              "DOCKER_HOST") from None
    tls_dir = config / "contexts" / "tls" / digest / "docker"
    tls = None
    if host.startswith("tcp://") and tls_dir.is_dir():
        tls = _tls_context(tls_dir, not endpoint.get("SkipTLSVerify", False))
    return _engine(host, environ, tls)


def _engine(host: str, environ: Mapping[str, str], tls: ssl.SSLContext | None
            ) -> DockerEngine:
    parts = urlsplit(host)
    if parts.scheme == "unix":
        path = parts.path or parts.netloc
        if not path:
            raise UsageError(f"invalid DOCKER_HOST {host!r}: no socket path",
                             hint="use DOCKER_HOST=unix:///var/run/docker.sock")
        return DockerEngine(host, "unix", path)
    if parts.scheme == "tcp":
        return _tcp_engine(host, parts.hostname, parts.port, environ, tls)
    raise UsageError(f"DOCKER_HOST {host!r}: --load speaks to an engine over unix:// or "
                     f"tcp:// only", hint="forward the engine's socket (ssh -L "
                     "/tmp/docker.sock:/var/run/docker.sock HOST) and set DOCKER_HOST="
                     "unix:///tmp/docker.sock, or write the image with "
                     "-o type=docker,dest=FILE")


def _tcp_engine(host: str, hostname: str | None, port: int | None,
                environ: Mapping[str, str], tls: ssl.SSLContext | None) -> DockerEngine:
    if not hostname:
        raise UsageError(f"invalid DOCKER_HOST {host!r}: no host name",
                         hint="use DOCKER_HOST=tcp://HOST:PORT")
    verify = bool(environ.get("DOCKER_TLS_VERIFY", ""))
    if tls is None and (verify or environ.get("DOCKER_TLS")):
        directory = Path(environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
        tls = _tls_context(directory, verify)
    port = port or (2376 if tls is not None else 2375)
    name = f"[{hostname}]" if ":" in hostname else hostname
    return DockerEngine(host, "tcp", f"{name}:{port}", tls)


def _tls_context(directory: Path, verify: bool) -> ssl.SSLContext:
    """TLS as the docker CLI sets it up: ``ca.pem`` verifies the engine (when
    ``verify``), ``cert.pem``/``key.pem`` are the client's, all in ``directory``
    (``DOCKER_CERT_PATH``, default ``~/.docker``, or a context's TLS directory)."""
    try:
        context = ssl.create_default_context(
            cafile=str(directory / "ca.pem") if verify else None)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if (directory / "cert.pem").exists():
            context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot read the Docker TLS certificates in {str(directory)!r}: "
                         f"{getattr(exc, 'strerror', None) or exc}",
                         hint="set DOCKER_CERT_PATH to the directory of ca.pem, cert.pem "
                              "and key.pem") from None
    return context
