"""Where ``--load`` finds the Docker engine: ``DOCKER_HOST`` and the docker contexts read
as the docker CLI reads them (cluster/_docker_engine.py).  Loading itself runs against a
real engine in tests/integration/cluster/test_load.py."""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path

import pytest
from support.tls import self_signed

from dockyard.cluster._docker_engine import engine_from_environ
from dockyard.scheduler._errors import UsageError

# environment -> (scheme, address, TLS)
HOSTS: list[tuple[dict[str, str], tuple[str, str, bool]]] = [
    ({}, ("unix", "/var/run/docker.sock", False)),
    ({"DOCKER_HOST": ""}, ("unix", "/var/run/docker.sock", False)),
    ({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"},
     ("unix", "/run/user/1000/docker.sock", False)),
    ({"DOCKER_HOST": "tcp://127.0.0.1:2375"}, ("tcp", "127.0.0.1:2375", False)),
    ({"DOCKER_HOST": "tcp://builder"}, ("tcp", "builder:2375", False)),
    ({"DOCKER_HOST": "tcp://[::1]:2380"}, ("tcp", "[::1]:2380", False)),
]


@pytest.mark.parametrize(("environ", "expected"), HOSTS)
def test_docker_host(environ: dict[str, str], expected: tuple[str, str, bool],
                     tmp_path: Path) -> None:
    engine = engine_from_environ({"DOCKER_CONFIG": str(tmp_path), **environ})
    assert (engine.scheme, engine.address, engine.tls is not None) == expected
    assert engine.host == (environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")


def test_tls_from_the_cert_path(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "ca.pem").write_bytes(cert.read_bytes())
    cert.rename(tmp_path / "cert.pem")
    key.rename(tmp_path / "key.pem")
    environ = {"DOCKER_HOST": "tcp://builder", "DOCKER_TLS_VERIFY": "1",
               "DOCKER_CERT_PATH": str(tmp_path)}
    engine = engine_from_environ(environ)
    assert engine.address == "builder:2376" and engine.tls is not None
    assert engine.tls.verify_mode == ssl.CERT_REQUIRED
    unverified = engine_from_environ({**environ, "DOCKER_TLS_VERIFY": "", "DOCKER_TLS": "1"})
    assert unverified.tls is not None and unverified.tls.verify_mode == ssl.CERT_NONE


def _context(config: Path, name: str, host: str, skip_verify: bool = False) -> Path:
    """A context in the docker CLI's store under ``config`` (as ``docker context
    create NAME --docker host=HOST`` writes it); its TLS directory."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({
        "Name": name, "Metadata": {},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip_verify}}}))
    return config / "contexts" / "tls" / digest / "docker"


# (config.json's currentContext, DOCKER_CONTEXT, DOCKER_HOST) -> the engine's host
CONTEXTS = [
    ("rootless", "", "", "unix:///run/user/1000/docker.sock"),
    ("rootless", "remote", "", "tcp://10.0.0.7:2375"),
    ("", "remote", "", "tcp://10.0.0.7:2375"),
    ("rootless", "remote", "unix:///d.sock", "unix:///d.sock"),
    ("default", "", "", "unix:///var/run/docker.sock"),
    ("rootless", "default", "", "unix:///var/run/docker.sock"),
]


@pytest.mark.parametrize(("current", "context", "host", "expected"), CONTEXTS)
def test_docker_contexts(current: str, context: str, host: str, expected: str,
                         tmp_path: Path) -> None:
    _context(tmp_path, "rootless", "unix:///run/user/1000/docker.sock")
    _context(tmp_path, "remote", "tcp://10.0.0.7:2375")
    (tmp_path / "config.json").write_text(json.dumps({"auths": {}, "currentContext": current}))
    environ = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": context, "DOCKER_HOST": host}
    assert engine_from_environ(environ).host == expected


def test_a_context_with_tls(tmp_path: Path) -> None:
    tls = _context(tmp_path, "secure", "tcp://127.0.0.1:2376")
    tls.mkdir(parents=True)
    cert, key = self_signed(tls)
    (tls / "ca.pem").write_bytes(cert.read_bytes())
    engine = engine_from_environ({"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "secure"})
    assert engine.address == "127.0.0.1:2376" and engine.tls is not None
    assert engine.tls.verify_mode == ssl.CERT_REQUIRED


def test_a_missing_context(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"gone").hexdigest()
    with pytest.raises(UsageError) as caught:
        engine_from_environ({"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "gone"})
    meta = tmp_path / "contexts" / "meta" / digest / "meta.json"
    assert str(caught.value) == (f"docker context 'gone' not found (read from '{meta}')\n"
                                 "hint: pick one of `docker context ls` with DOCKER_CONTEXT, "
                                 "or set DOCKER_HOST")


# environment -> the exact refusal
REFUSED = [
    ({"DOCKER_HOST": "ssh://me@builder"},
     "DOCKER_HOST 'ssh://me@builder': --load speaks to an engine over unix:// or tcp:// "
     "only\nhint: forward the engine's socket (ssh -L /tmp/docker.sock:/var/run/docker.sock "
     "HOST) and set DOCKER_HOST=unix:///tmp/docker.sock, or write the image with "
     "-o type=docker,dest=FILE"),
    ({"DOCKER_HOST": "npipe:////./pipe/docker_engine"},
     "DOCKER_HOST 'npipe:////./pipe/docker_engine': --load speaks to an engine over unix:// "
     "or tcp:// only\nhint: forward the engine's socket (ssh -L /tmp/docker.sock:/var/run/"
     "docker.sock HOST) and set DOCKER_HOST=unix:///tmp/docker.sock, or write the image "
     "with -o type=docker,dest=FILE"),
    ({"DOCKER_HOST": "unix://"}, "invalid DOCKER_HOST 'unix://': no socket path\n"
                                 "hint: use DOCKER_HOST=unix:///var/run/docker.sock"),
    ({"DOCKER_HOST": "tcp://:2375"}, "invalid DOCKER_HOST 'tcp://:2375': no host name\n"
                                     "hint: use DOCKER_HOST=tcp://HOST:PORT"),
    ({"DOCKER_HOST": "tcp://b", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/nonexistent"},
     "cannot read the Docker TLS certificates in '/nonexistent': No such file or directory\n"
     "hint: set DOCKER_CERT_PATH to the directory of ca.pem, cert.pem and key.pem"),
]


@pytest.mark.parametrize(("environ", "message"), REFUSED)
def test_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        engine_from_environ(environ)
    assert str(caught.value) == message
