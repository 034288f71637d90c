"""``dockyard history`` end to end, as a user runs it: the CLI against its own
DOCKYARD_ROOT's embedded service (started by the first build, one for the module), real
runc and the registry fixture's busybox.  The tests run in order: a build that succeeds
and one that fails, their records listed, inspected and their logs read, a rebuild's
cached steps, a running build listed and then cancelled, removals, then ``dockyard
stop``: the records are still read (from disk, no service started), and a build that
starts the service again with a retention of two records prunes the older ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli_root import PROJECT, Dockyard, private_root
from support.leaks import files_containing

SECRET = "hist-s3cr3t-41d9c7"  # mounted by a RUN: must reach no record

OK = """\
FROM BUSYBOX
ARG GREETING
COPY file.txt /file.txt
RUN --mount=type=secret,id=token test -s /run/secrets/token && echo "run-says-$GREETING"
"""

FAILING = """\
FROM BUSYBOX
RUN echo about-to-fail && exit 3
"""


@pytest.fixture(scope="module")
def dockyard(busybox_image: Any) -> Iterator[Dockyard]:
    with private_root(busybox_image.reference, "dyh") as found:
        yield found


def _context(dockyard: Dockyard, name: str, dockerfile: str) -> Path:
    context = dockyard.work / name
    if not context.exists():
        context.mkdir()
        (context / "Dockerfile").write_text(dockerfile.replace("BUSYBOX", dockyard.busybox))
        (context / "file.txt").write_text("from the context\n")
    return context


def _build_ok(dockyard: Dockyard, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = dockyard.work / "ok-out"
    out.mkdir(exist_ok=True)
    done = dockyard.build("--build-arg", "GREETING=hello", "--secret", "id=token,env=TOKEN",
                          "-t", "example/hist:1", "-o", f"type=oci,dest={out}/image.tar",
                          "--metadata-file", f"{out}/meta.json",
                          str(_context(dockyard, "ok", OK)),
                          env={"TOKEN": SECRET, **(env or {})})
    assert done.returncode == 0, done.stderr.decode()
    metadata: dict[str, Any] = json.loads((out / "meta.json").read_text())
    return metadata


def _history(dockyard: Dockyard, *argv: str) -> str:
    done = dockyard.run("history", *argv)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def _records(dockyard: Dockyard) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(_history(dockyard, "ls", "--format", "json"))
    return listed


def _record(dockyard: Dockyard, ref: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(_history(dockyard, "inspect", ref, "--format", "json"))
    return record


def _run_step(record: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in record["vertices"] if v["name"].startswith("[2/2] RUN")
                or v["name"].startswith("[3/3] RUN"))


def test_ls_lists_a_completed_and_a_failed_build(dockyard: Dockyard) -> None:
    metadata = _build_ok(dockyard)
    failed = dockyard.build(str(_context(dockyard, "failing", FAILING)))
    assert failed.returncode == 1, failed.stderr.decode()
    records = _records(dockyard)
    assert [r["status"] for r in records] == ["error", "completed"]  # newest first
    build_id = metadata["buildx.build.ref"].rsplit("/", 1)[1]
    assert records[1]["id"] == build_id  # the metadata file's ref names the record
    table = _history(dockyard, "ls").splitlines()
    assert table[0].split() == ["BUILD", "ID", "NAME", "STATUS", "CREATED", "AT", "DURATION"]
    assert "Error" in table[1] and "failing" in table[1]
    assert "Completed" in table[2] and build_id[:25] in table[2]


def test_inspect_shows_the_request_the_steps_and_the_outputs(dockyard: Dockyard) -> None:
    record = _record(dockyard, "^1")
    assert record["status"] == "completed"
    assert _record(dockyard, record["id"][:10])["id"] == record["id"]  # an id prefix
    assert record["build_args"] == [["GREETING", "hello"]]
    assert record["secrets"] == ["token"]  # the id only
    assert "RUN --mount=type=secret,id=token" in record["dockerfile"]
    assert record["outputs"] == [{"type": "oci", "names": ["example/hist:1"], "push": False}]
    meta = json.loads((dockyard.work / "ok-out" / "meta.json").read_text())
    assert record["metadata"]["containerimage.digest"] == meta["containerimage.digest"]
    run = _run_step(record)
    assert run["cached"] is False and run["node"] and run["error"] is None
    assert run["completed"] >= run["started"] >= record["created"]
    text = _history(dockyard, "inspect", "^1")
    assert "Build Arg GREETING:" in text and "Status:" in text and "Completed" in text
    assert run["name"][:60] in text and run["node"] in text and "example/hist:1" in text
    failed = _record(dockyard, "^0")
    assert failed["status"] == "error" and "exit code: 3" in failed["error"]
    assert "exit code: 3" in _run_step(failed)["error"]


def test_logs_show_a_runs_output(dockyard: Dockyard) -> None:
    logs = _history(dockyard, "logs", "^1")
    assert "run-says-hello" in logs and "DONE" in logs
    run = _run_step(_record(dockyard, "^1"))
    only = _history(dockyard, "logs", "^1", "--vertex", str(run["index"])).splitlines()
    assert only and all(line.startswith(f"#{run['index']} ") for line in only)
    assert any("run-says-hello" in line for line in only)
    assert "about-to-fail" in _history(dockyard, "logs")  # ^0: the failed build
    bad = dockyard.run("history", "logs", "^1", "--vertex", "99")
    assert bad.returncode == 1 and "invalid --vertex 99" in bad.stderr.decode()


def test_a_rebuild_shows_its_cached_steps(dockyard: Dockyard) -> None:
    _build_ok(dockyard)
    record = _record(dockyard, "^0")
    run = _run_step(record)
    assert run["cached"] is True and run["node"] is None
    assert "(" in _history(dockyard, "inspect") and "% cached)" in _history(dockyard,
                                                                           "inspect")


def test_no_record_holds_a_secret_value(dockyard: Dockyard) -> None:
    history = dockyard.root / "history"
    assert len(list(history.glob("*.msgpack"))) == 3
    assert files_containing(history, [SECRET.encode()]) == []


def test_a_running_build_is_listed_and_a_cancelled_one_kept(dockyard: Dockyard) -> None:
    context = _context(dockyard, "cancel", "FROM BUSYBOX\nRUN echo sleeping && sleep 47\n")
    environ = {**os.environ, "DOCKYARD_ROOT": str(dockyard.root), "PYTHONPATH": str(PROJECT)}
    process = subprocess.Popen([sys.executable, "-m", "dockyard", "build", "--progress=plain",
                                "--no-cache", str(context)], cwd=dockyard.work, env=environ,
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert process.stderr is not None
        for raw in process.stderr:
            if raw.rstrip().endswith(b" sleeping"):
                break
        running = _records(dockyard)[0]
        assert running["status"] == "running" and running["completed"] is None
        assert "Running" in _history(dockyard, "ls").splitlines()[1]
        refused = dockyard.run("history", "rm", running["id"])
        assert refused.returncode == 1 and "is running" in refused.stderr.decode()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 20
    while _records(dockyard)[0]["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    record = _record(dockyard, running["id"])
    assert record["status"] == "canceled" and record["completed"] is not None
    assert "sleeping" in _history(dockyard, "logs", running["id"])
    assert "CANCELED" in _history(dockyard, "logs", running["id"])


def test_rm_removes_records(dockyard: Dockyard) -> None:
    ids = [r["id"] for r in _records(dockyard)]
    assert _history(dockyard, "rm", "^0", ids[1][:12]).split() == ids[:2]
    assert [r["id"] for r in _records(dockyard)] == ids[2:]
    missing = dockyard.run("history", "rm", "0" * 12)
    assert missing.returncode == 1
    assert "no build record '000000000000'" in missing.stderr.decode()


def test_records_survive_a_restart_and_are_pruned_by_count(dockyard: Dockyard) -> None:
    before = [r["id"] for r in _records(dockyard)]
    assert len(before) == 2
    assert dockyard.run("stop", timeout=90).returncode == 0
    assert [r["id"] for r in _records(dockyard)] == before  # read from disk
    assert not (dockyard.root / "run" / "dockyard.sock").exists(), "no service started"
    metadata = _build_ok(dockyard, env={"DOCKYARD_HISTORY_MAX_RECORDS": "2"})
    after = [r["id"] for r in _records(dockyard)]
    assert after == [metadata["buildx.build.ref"].rsplit("/", 1)[1], before[0]]
    assert _history(dockyard, "rm", "--all").split() == after
    assert _records(dockyard) == []
