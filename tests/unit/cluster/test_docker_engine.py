"""Where ``--load`` finds the Docker engine: ``DOCKER_HOST`` read as the docker CLI reads
it (cluster/_docker_engine.py).  Loading itself runs against a real engine in
tests/integration/cluster/test_load.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from support.tls import self_signed

from cluster._docker_engine import engine_from_environ
from scheduler._errors import UsageError

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
def test_docker_host(environ: dict[str, str], expected: tuple[str, str, bool]) -> None:
    engine = engine_from_environ(environ)
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
