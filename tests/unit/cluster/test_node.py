"""``dockyard node``: argument checks, node.json, the ``ray start`` command, the cluster's
token, and stopping exactly a root's processes (real processes, no Ray: a real cluster is
tests/integration/cluster/test_nodes.py)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._cli import main
from dockyard.cluster._node import (
    NodePaths,
    NodeRecord,
    NodeSettings,
    _check_emulation,
    _place_token,
    detect_arch,
    health_config,
    node_processes,
    ray_start_argv,
    read_record,
    start_node,
    stop_node,
)
from dockyard.cluster._node_cmd import cluster_address
from dockyard.cluster._node_ls import format_table, human_size
from dockyard.cluster._service import alive
from dockyard.scheduler._errors import ServiceError, UsageError

_GOOD: dict[str, Any] = {"head": True, "address": None, "arch": "amd64", "emulate": None,
                         "slots": 2, "node_ip": "127.0.0.2", "port": None,
                         "object_store": None}

BAD_ARGS = [
    ({"head": False}, "give exactly one of --head (start a cluster) and --address HOST:PORT "
                      "(join one)"),
    ({"address": "127.0.0.2:6379"}, "give exactly one of --head (start a cluster) and "
                                    "--address HOST:PORT (join one)"),
    ({"head": False, "address": "127.0.0.2:6379", "port": 7000},
     "--port is the head's port: use it with --head"),
    ({"head": False, "address": "127.0.0.2"}, "--address '127.0.0.2': expected HOST:PORT "
     "(the head's address, printed by 'dockyard node start --head')"),
    ({"head": False, "address": "127.0.0.2:x"}, "--address '127.0.0.2:x': expected "
     "HOST:PORT (the head's address, printed by 'dockyard node start --head')"),
    ({"arch": "riscv64"}, "unknown arch 'riscv64': use one of amd64, arm64"),
    ({"emulate": "arm64,s390x"}, "unknown arch 's390x': use one of amd64, arm64"),
    ({"emulate": "amd64"}, "--emulate amd64: amd64 is this node's native arch"),
    ({"slots": 0}, "--slots 0: a node runs at least one vertex at a time"),
    ({"node_ip": "host"}, "--node-ip 'host' is not an IP address"),
    ({"node_ip": "127.0.0.1"}, "--node-ip 127.0.0.1: Ray replaces it with the machine's "
                               "address"),
    ({"port": 70000}, "--port 70000 is not a TCP port (0-65535; 0: a free one)"),
    ({"object_store": 1000}, "--object-store-memory 1000: Ray needs at least 78643200 bytes"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ARGS)
def test_bad_arguments_are_refused_with_a_clear_message(change: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(UsageError) as caught:
        NodeSettings.from_args(**(_GOOD | change))
    assert caught.value.message == message


def test_settings_of_an_emulating_joining_node() -> None:
    settings = NodeSettings.from_args(**(_GOOD | {
        "head": False, "address": "127.0.0.2:6379", "emulate": "arm64, arm64,",
        "token_file": "/t"}))
    assert settings.arches == ["amd64", "arm64"]
    assert (settings.address, settings.port, settings.token_file) == \
        ("127.0.0.2:6379", 0, Path("/t"))
    assert settings.object_store_bytes == 100 * 1024 * 1024


@pytest.mark.parametrize(("machine", "arch"), [("x86_64", "amd64"), ("aarch64", "arm64"),
                                               ("arm64", "arm64"), ("AMD64", "amd64")])
def test_detect_arch(machine: str, arch: str) -> None:
    assert detect_arch(machine) == arch


def test_detect_arch_refuses_other_machines() -> None:
    with pytest.raises(UsageError, match="not on 'riscv64'"):
        detect_arch("riscv64")


@pytest.mark.parametrize(("environ", "period"), [({}, 500),
                                                 ({"DOCKYARD_HEALTH_CHECK_MS": "3000"}, 3000)])
def test_health_checks_are_a_setting(environ: dict[str, str], period: int) -> None:
    config = health_config(environ)
    assert config["health_check_period_ms"] == config["health_check_timeout_ms"] == period
    assert config["health_check_failure_threshold"] == 2


@pytest.mark.parametrize("value", ["fast", "50", ""])
def test_bad_health_check_setting(value: str) -> None:
    with pytest.raises(UsageError, match="DOCKYARD_HEALTH_CHECK_MS"):
        health_config({"DOCKYARD_HEALTH_CHECK_MS": value})


def test_ray_start_of_a_head() -> None:
    settings = NodeSettings.from_args(**(_GOOD | {"emulate": "arm64", "port": 6400}))
    argv = ray_start_argv(settings, Path("/r/run/ray"), (1001, 1002), {"a": 1}, ray="/v/ray")
    assert argv[:2] == ["/v/ray", "start"]
    assert {"--head", "--port=6400", "--dashboard-port=1001", "--num-cpus=1",
            "--dashboard-agent-listen-port=1002", "--temp-dir=/r/run/ray",
            "--node-ip-address=127.0.0.2", "--disable-usage-stats", "--no-monitor",
            "--include-log-monitor=false",
            '--system-config={"a": 1, "task_events_report_interval_ms": 0}'} <= set(argv)
    resources = json.loads(next(a for a in argv if a.startswith("--resources="))[12:])
    assert resources == {"arch:amd64": 2, "arch:arm64": 2}
    assert "--block" not in argv


def test_ray_start_of_a_joining_node() -> None:
    settings = NodeSettings.from_args(**(_GOOD | {"head": False, "address": "10.0.0.1:6379",
                                                  "node_ip": None, "arch": "arm64"}))
    argv = ray_start_argv(settings, Path("/t"), (1001, 1002), {"a": 1})
    assert "--address=10.0.0.1:6379" in argv
    assert not [a for a in argv if a.startswith(("--head", "--port", "--system-config",
                                                 "--node-ip-address"))]
    assert '--resources={"arch:arm64": 2}' in argv
    assert {"--num-cpus=1", "--include-log-monitor=false"} <= set(argv)
    assert "--no-monitor" not in argv  # a head's flag


# --- node.json --------------------------------------------------------------------------

_RECORD = NodeRecord(address="127.0.0.2:6379", node_id="ab" * 28, node_ip="127.0.0.2",
                     head=True, session=42, session_dir="/r/run/ray/session_x",
                     arches=["amd64", "arm64"], slots=2, processes=[(42, "100"), (43, "101")])


def test_node_record_round_trip(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    paths.run.mkdir()
    assert read_record(paths) is None
    paths.record.write_text(_RECORD.to_json())
    assert read_record(paths) == _RECORD
    assert _RECORD.worker == "dockyard-worker-" + "ab" * 6


BAD_RECORDS = [
    ("{", "Expecting property name"),
    ("[]", "is not a dockyard node record"),
    (json.dumps({"address": "a"}), "'v'"),
    (json.dumps({**json.loads(_RECORD.to_json()), "v": 2}), "unknown version"),
    (json.dumps({**json.loads(_RECORD.to_json()), "slots": "2"}), "wrong type"),
    (json.dumps({**json.loads(_RECORD.to_json()), "extra": 1}), "unexpected keyword"),
]


@pytest.mark.parametrize(("text", "detail"), BAD_RECORDS)
def test_a_bad_node_record_is_a_clear_error(tmp_path: Path, text: str, detail: str) -> None:
    paths = NodePaths(tmp_path)
    paths.run.mkdir()
    paths.record.write_text(text)
    with pytest.raises(ServiceError) as caught:
        read_record(paths)
    assert caught.value.message.startswith(f"{paths.record} is not a dockyard node record")
    assert detail in caught.value.message
    assert caught.value.hint == "if no node runs under this root, remove the file"


# --- which cluster ls talks to ----------------------------------------------------------

ADDRESSES = [
    ("127.0.0.9:1", _RECORD, {}, ("127.0.0.9:1", "127.0.0.2")),
    (None, _RECORD, {}, ("127.0.0.2:6379", "127.0.0.2")),
    (None, _RECORD, {"DOCKYARD_RAY_ADDRESS": "127.0.0.5:7"}, ("127.0.0.5:7", "127.0.0.2")),
    (None, None, {"DOCKYARD_RAY_ADDRESS": "127.0.0.5:7"}, ("127.0.0.5:7", "127.0.0.5")),
    ("10.1.2.3:6379", None, {}, ("10.1.2.3:6379", None)),
    ("head.example:6379", None, {}, ("head.example:6379", None)),
]


@pytest.mark.parametrize(("option", "record", "environ", "expected"), ADDRESSES)
def test_cluster_address(option: str | None, record: NodeRecord | None,
                         environ: dict[str, str], expected: tuple[str, str | None]) -> None:
    assert cluster_address(option, record, environ) == expected


def test_no_cluster_to_list() -> None:
    with pytest.raises(UsageError, match="no cluster to list"):
        cluster_address(None, None, {})


# --- the table --------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "text"), [(0, "0B"), (999, "999B"), (1500, "1.5kB"),
                                            (2_000_000, "2MB"), (123_456_789_000, "123GB")])
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_format_table() -> None:
    rows = [{"name": "dockyard-worker-aa", "address": "127.0.0.2", "status": "ready",
             "arches": ["amd64", "arm64"], "native": ["amd64"], "slots": 2, "running": 1,
             "store_bytes": 1500},
            {"name": "dockyard-worker-bb", "address": "127.0.0.3", "status": "unreachable"}]
    assert format_table(rows).splitlines() == [
        "NODE                 ADDRESS     ARCH                      SLOTS   RUNNING   STORE"
        "   STATUS",
        "dockyard-worker-aa   127.0.0.2   amd64, arm64 (emulated)   2       1         1.5kB"
        "   ready",
        "dockyard-worker-bb   127.0.0.3" + " " * (3 + 23 + 3 + 5 + 3 + 7 + 3 + 5 + 3)
        + "unreachable",
    ]


# --- the token and emulation ------------------------------------------------------------

def _joining(token_file: str | None = None) -> NodeSettings:
    return NodeSettings.from_args(**(_GOOD | {"head": False, "address": "127.0.0.2:1",
                                              "token_file": token_file}))


def test_a_joining_node_needs_the_token(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="joining 127.0.0.2:1 needs the cluster's token"):
        _place_token(_joining(), NodePaths(tmp_path), {})


@pytest.mark.parametrize("source", ["file", "path", "env"])
def test_a_joining_node_keeps_the_token_under_its_root(tmp_path: Path, source: str) -> None:
    given = tmp_path / "given"
    given.write_text("s3cret\n")
    environ = {"path": {"RAY_AUTH_TOKEN_PATH": str(given)},
               "env": {"RAY_AUTH_TOKEN": "s3cret"}}.get(source, {})
    paths = NodePaths(tmp_path / "root")
    _place_token(_joining(str(given) if source == "file" else None), paths, environ)
    assert paths.token.read_text() == "s3cret"
    assert stat.S_IMODE(paths.token.stat().st_mode) == 0o600


def test_a_head_makes_its_token_once(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    head = NodeSettings.from_args(**_GOOD)
    _place_token(head, paths, {})
    first = paths.token.read_text()
    _place_token(head, paths, {})
    assert len(first) == 64 and paths.token.read_text() == first
    assert stat.S_IMODE(paths.token.stat().st_mode) == 0o600


def test_emulation_needs_a_probe_that_runs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is missing") as caught:
        _check_emulation("arm64", {"DOCKYARD_BUSYBOX_ARM64": str(tmp_path / "none")})
    assert "qemu-user-static" in (caught.value.hint or "")
    with pytest.raises(UsageError, match="exited with status 1"):
        _check_emulation("arm64", {"DOCKYARD_BUSYBOX_ARM64": "/bin/false"})
    _check_emulation("arm64", {"DOCKYARD_BUSYBOX_ARM64": "/bin/true"})


# --- refusing a second node, stopping exactly a root's processes -------------------------

def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def test_a_second_node_under_a_root_is_refused(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    paths.run.mkdir()
    me = (os.getpid(), _start_time(os.getpid()))
    paths.record.write_text(_record_with([me]).to_json())
    with pytest.raises(ServiceError) as caught:
        start_node(NodeSettings.from_args(**_GOOD), tmp_path, {})
    assert caught.value.message == (
        f"a dockyard node already runs under {tmp_path}: dockyard-worker-abababababab at "
        "127.0.0.2 (cluster 127.0.0.2:6379)")
    assert caught.value.hint == "stop it first with 'dockyard node stop'"


def _record_with(processes: list[tuple[int, str]], session: int = 42) -> NodeRecord:
    return NodeRecord(address=_RECORD.address, node_id=_RECORD.node_id,
                      node_ip=_RECORD.node_ip, head=True, session=session,
                      session_dir=_RECORD.session_dir, arches=_RECORD.arches, slots=2,
                      processes=processes)


_FAMILY = """
sleep 60 &
DOCKYARD_ROOT=/elsewhere sleep 60 &
trap '' TERM
echo ready
wait
"""


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_stop_kills_the_roots_session_and_nothing_else(tmp_path: Path) -> None:
    """A shell ignoring SIGTERM (so it needs the SIGKILL), its child of this root, and a
    child of another root in the same session, which must survive."""
    paths = NodePaths(tmp_path)
    paths.run.mkdir()
    family = subprocess.Popen(["sh", "-c", _FAMILY], stdout=subprocess.PIPE,
                              env={**os.environ, "DOCKYARD_ROOT": str(tmp_path)},
                              start_new_session=True)
    try:
        assert family.stdout is not None and family.stdout.readline() == b"ready\n"
        _wait_for(lambda: len(node_processes(family.pid, tmp_path)) == 2)
        ours = node_processes(family.pid, tmp_path)
        other = node_processes(family.pid, Path("/elsewhere"))
        assert len(other) == 1
        paths.record.write_text(_record_with([], session=family.pid).to_json())
        assert stop_node(tmp_path, grace=0.5) is not None
        family.wait(timeout=10)
        assert not any(alive(p) for p in ours)
        assert all(alive(p) for p in other)
        assert not paths.record.exists()
        assert stop_node(tmp_path) is None
    finally:
        for pid in [family.pid, *(p for p, _ in node_processes(family.pid, Path("/elsewhere")))]:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        family.wait(timeout=10)


# --- the command line -------------------------------------------------------------------

# argv, exit status (125: a flag the command line cannot read, Docker's status), message
CLI_ERRORS = [
    (["node", "start"], 1, "one of the arguments --head --address is required"),
    (["node", "start", "--head", "--address", "a:1"], 1, "not allowed with argument --head"),
    (["node", "start", "--head", "--slots", "x"], 125, "invalid int value: 'x'"),
    (["node", "ls", "--format", "yaml"], 1, "invalid choice: 'yaml'"),
    (["ls"], 1, "no cluster to list: no node runs under this root"),
]


@pytest.mark.parametrize(("argv", "status", "message"), CLI_ERRORS)
def test_cli_errors(argv: list[str], status: int, message: str, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKYARD_ROOT", str(tmp_path))
    monkeypatch.delenv("DOCKYARD_RAY_ADDRESS", raising=False)
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_cli_stop_without_a_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKYARD_ROOT", str(tmp_path))
    assert main(["node", "stop"]) == 0
    assert capsys.readouterr().out == f"no dockyard node runs under {tmp_path}\n"


def test_a_node_is_refused_under_a_root_whose_embedded_service_runs(tmp_path: Path) -> None:
    from dockyard.cluster._service import RunPaths, try_flock

    paths = RunPaths(tmp_path)
    paths.run.mkdir()
    with try_flock(paths.daemon_lock) as held:
        assert held
        with pytest.raises(ServiceError) as caught:
            start_node(NodeSettings.from_args(**_GOOD), tmp_path, {})
    assert caught.value.message == f"the embedded dockyard service runs under {tmp_path}"


def test_a_stale_record_is_removed_before_a_start(tmp_path: Path) -> None:
    from dockyard.cluster._node import _refuse_running

    paths = NodePaths(tmp_path)
    paths.run.mkdir()
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True,
                          check=True).stdout.strip()
    paths.record.write_text(_record_with([(int(dead), "1")], session=int(dead)).to_json())
    _refuse_running(paths)
    assert not paths.record.exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_address_where_nothing_answers_is_refused_at_once(tmp_path: Path) -> None:
    import socket

    from dockyard.cluster._node_ls import check_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    address = f"127.0.0.1:{_closed_port()}"
    settings = NodeSettings.from_args(**(_GOOD | {"head": False, "address": address}))
    began = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        start_node(settings, tmp_path, {"RAY_AUTH_TOKEN": "t"})
    assert caught.value.message == f"no Ray cluster answers at {address}: Connection refused"
    assert time.monotonic() - began < 5
    assert not NodePaths(tmp_path).token.exists()


FAILURE_LOGS = [
    ("\n--- t1 ray start\nold: x\nValueError: old\n--- t2 ray start\nline\n  File \"x\"\n"
     "ray.exceptions.AuthenticationError: RPC error: token\n",
     "ray.exceptions.AuthenticationError: RPC error: token"),
    ("\n--- t1 ray start\nValueError: an earlier run\n\n--- t2 ray start\na\nb\n", "a\nb"),
]


@pytest.mark.parametrize(("log", "why"), FAILURE_LOGS)
def test_why_ray_start_failed(tmp_path: Path, log: str, why: str) -> None:
    from dockyard.cluster._node import _start_failure

    (tmp_path / "node.log").write_text(log)
    assert _start_failure(tmp_path / "node.log") == why
