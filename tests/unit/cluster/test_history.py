"""Build records without a service: the recorder's fields and bounds, the store's
retention (count and age), build references (``^N``, id prefixes), the retention's
settings, and the CLI's table, inspect text and replayed logs."""

from __future__ import annotations

import argparse
import io
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dockyard.cluster._endpoint import serve_settings
from dockyard.cluster._history import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_RECORDS,
    MAX_DOCKERFILE_BYTES,
    MAX_EVENT_BYTES,
    BuildRecorder,
    HistoryStore,
    Retention,
    answer,
)
from dockyard.cluster._history_cmd import format_duration, format_inspect, format_table, write_logs
from dockyard.scheduler._build_request import BuildOptions, SecretSpec
from dockyard.scheduler._errors import UsageError
from dockyard.scheduler._progress import (
    StatusUpdate,
    VertexCached,
    VertexCompleted,
    VertexFailed,
    VertexLog,
    VertexStarted,
    warning,
)

RUN = "sha256:" + "1" * 64
COPY = "sha256:" + "2" * 64


def _request(**options: Any) -> dict[str, Any]:
    wire = BuildOptions(context="/src/app", **options).to_wire()
    return {"dockerfile": b"FROM scratch\n", "options": wire}


class _Clock:
    """Unix time that moves only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _recorded(started: float = 1000.0, **options: Any) -> BuildRecorder:
    clock = _Clock(started)
    recorder = BuildRecorder(uuid.uuid4().hex, _request(**options), started, clock=clock)
    for event in (VertexCached(COPY, "[1/2] COPY a /a"),
                  VertexStarted(RUN, "[2/2] RUN make", started + 1),
                  StatusUpdate(RUN, "running on w-1 at 10.0.0.2"),
                  VertexLog(RUN, 1, b"compiling\n"), warning("cache", "cache unreachable"),
                  VertexCompleted(RUN, "[2/2] RUN make", 2.0)):
        clock.now += 0.5
        recorder.observe(event)
    return recorder


def test_a_record_keeps_the_request_but_no_secret_source() -> None:
    secret = SecretSpec("token", src="/home/me/token-file", env="MY_TOKEN_VAR")
    recorder = _recorded(target="app", platforms=("linux/arm64",),
                         build_args=(("A", "1"),), secrets=(secret,))
    recorder.finish("completed", result={"metadata": {"containerimage.digest": "sha256:ab",
                                                      "nested": {"x": 1}}})
    record = recorder.record()
    assert record["name"] == "app (app)" and record["target"] == "app"
    assert record["platforms"] == ["linux/arm64"] and record["build_args"] == [["A", "1"]]
    assert record["secrets"] == ["token"]
    packed = msgpack.packb(record, use_bin_type=True)
    assert b"token-file" not in packed and b"MY_TOKEN_VAR" not in packed
    assert record["metadata"] == {"containerimage.digest": "sha256:ab"}
    copy, run = record["vertices"]  # the warning of no vertex is no step
    assert copy["cached"] and copy["node"] is None
    assert run["node"] == "w-1 at 10.0.0.2" and not run["cached"]
    assert (run["started"], run["index"]) == (1001.0, 2)


def test_a_record_is_bounded() -> None:
    recorder = BuildRecorder(uuid.uuid4().hex, {"dockerfile": b"#" * (MAX_DOCKERFILE_BYTES + 9),
                                                "options": BuildOptions("/c").to_wire()}, 0.0)
    chunk = b"x" * 65536
    for _ in range(MAX_EVENT_BYTES // len(chunk) + 5):
        recorder.observe(VertexLog(RUN, 1, chunk))
    recorder.observe(VertexFailed(RUN, "RUN x", "exit code: 1"))  # an end is always kept
    record = recorder.record()
    assert len(record["dockerfile"]) == MAX_DOCKERFILE_BYTES
    assert record["dockerfile_size"] == MAX_DOCKERFILE_BYTES + 9
    assert record["truncated"]
    assert sum(len(w["data"]) for _, w in record["events"] if "data" in w) <= MAX_EVENT_BYTES
    assert record["vertices"][0]["error"] == "exit code: 1"


def _store(tmp_path: Path, retention: Retention, created: list[float]) -> list[str]:
    store = HistoryStore(tmp_path / "history", retention)
    ids = []
    for when in created:
        recorder = BuildRecorder(uuid.uuid4().hex, _request(), when)
        recorder.finish("completed")
        store.write(recorder.record())
        ids.append(recorder.build_id)
    return ids


def test_retention_by_count_keeps_the_newest(tmp_path: Path) -> None:
    ids = _store(tmp_path, Retention(max_records=3, max_age=0), [10, 20, 30, 40, 50])
    store = HistoryStore(tmp_path / "history")
    assert [r["id"] for r in store.records()] == ids[:1:-1]
    assert sorted(p.name for p in (tmp_path / "history").iterdir()) == \
        sorted(f"{i}.msgpack" for i in ids[2:])  # no partial file left


def test_retention_by_age(tmp_path: Path) -> None:
    import time

    now = time.time()
    ids = _store(tmp_path, Retention(max_records=0, max_age=3600),
                 [now - 7200, now - 10, now - 5])
    assert [r["id"] for r in HistoryStore(tmp_path / "history").records()] == ids[:0:-1]


def test_references(tmp_path: Path) -> None:
    ids = _store(tmp_path, Retention(max_age=0), [10, 20, 30])
    store = HistoryStore(tmp_path / "history")
    assert answer(store, {"op": "get"})["id"] == ids[2]
    assert answer(store, {"op": "get", "ref": "^2"})["id"] == ids[0]
    assert answer(store, {"op": "get", "ref": ids[1][:6].upper()})["id"] == ids[1]
    with pytest.raises(UsageError, match=r"no build record \^3: the service keeps 3"):
        answer(store, {"op": "get", "ref": "^3"})
    with pytest.raises(UsageError, match="invalid build reference '\\^x'"):
        answer(store, {"op": "get", "ref": "^x"})
    assert answer(store, {"op": "rm", "all": True}) == ids[::-1]
    assert answer(store, {"op": "ls"}) == []


def test_an_ambiguous_prefix_and_a_running_build(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "history", Retention(max_age=0))
    for last in "12":
        recorder = BuildRecorder("a" * 31 + last, _request(), 10.0)
        recorder.finish("error", error="failed")
        store.write(recorder.record())
    with pytest.raises(UsageError, match="build reference 'aaaa' names 2 records"):
        answer(store, {"op": "get", "ref": "aaaa"})
    running = BuildRecorder("b" * 32, _request(), 20.0).record()
    assert [s["status"] for s in answer(store, {"op": "ls"}, [running])] == \
        ["running", "error", "error"]
    with pytest.raises(UsageError, match="is running: its record is kept until it ends"):
        answer(store, {"op": "rm", "refs": ["bbb"]}, [running])
    assert answer(store, {"op": "rm", "all": True}, [running]) == ["a" * 31 + "2",
                                                                  "a" * 31 + "1"]


def test_an_unreadable_record_is_passed_over(tmp_path: Path) -> None:
    ids = _store(tmp_path, Retention(max_age=0), [10])
    (tmp_path / "history" / f"{'f' * 32}.msgpack").write_bytes(b"\xc1 not msgpack")
    assert [r["id"] for r in HistoryStore(tmp_path / "history").records()] == ids


def test_retention_settings() -> None:
    assert Retention.parse(None, None) == Retention(DEFAULT_MAX_RECORDS, DEFAULT_MAX_AGE)
    assert DEFAULT_MAX_RECORDS == 50 and DEFAULT_MAX_AGE == 172800  # BuildKit's
    assert Retention.from_environ({"DOCKYARD_HISTORY_MAX_RECORDS": "7",
                                   "DOCKYARD_HISTORY_MAX_AGE": "1h30m"}) == Retention(7, 5400)
    assert Retention.parse("0", "0") == Retention(0, 0)
    with pytest.raises(UsageError, match="invalid DOCKYARD_HISTORY_MAX_RECORDS 'many'"):
        Retention.from_environ({"DOCKYARD_HISTORY_MAX_RECORDS": "many"})
    with pytest.raises(UsageError, match="invalid DOCKYARD_HISTORY_MAX_AGE '2 days'"):
        Retention.from_environ({"DOCKYARD_HISTORY_MAX_AGE": "2 days"})


def test_serve_flags_set_the_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_HISTORY_MAX_AGE", "12h")
    args = argparse.Namespace(tls_cert=None, tls_key=None, port=8375, token_file=None,
                              insecure=False, host="127.0.0.1", advertise_url=None,
                              ray_address=None, history_max_records="9",
                              history_max_age=None)
    assert serve_settings(args).history == Retention(9, 12 * 3600)
    args.history_max_age = "soon"
    with pytest.raises(UsageError, match="invalid --history-max-age 'soon'"):
        serve_settings(args)


def test_table_inspect_and_logs() -> None:
    recorder = _recorded(build_args=(("A", "1"),))
    recorder.finish("completed", result={"metadata": {"containerimage.digest": "sha256:ab"}})
    record = recorder.record()
    table = format_table([{"id": record["id"], "name": "app", "status": "completed",
                           "created": 1000.0, "completed": 1003.5}], 1000.0 + 7200)
    header, row = table.splitlines()
    assert header.split() == ["BUILD", "ID", "NAME", "STATUS", "CREATED", "AT", "DURATION"]
    assert row.split() == [record["id"][:25], "app", "Completed", "2", "hours", "ago", "3.5s"]
    assert format_duration(125) == "2m  5s" and format_duration(3720) == "1h  2m"
    text = format_inspect(record, 2000.0)
    assert "Build Arg A: 1" in " ".join(text.split()) and "2/2 (50% cached)" in text
    assert "w-1 at 10.0.0.2" in text and "containerimage.digest" in text
    logs = io.StringIO()
    write_logs(record, logs)
    assert "#2 1.000 compiling" in logs.getvalue()  # the time it came, from the step's start
    only = io.StringIO()
    write_logs(record, only, vertex=1)
    assert only.getvalue() == "#1 [1/2] COPY a /a\n#1 CACHED\n"
    with pytest.raises(UsageError, match="invalid --vertex 3"):
        write_logs(record, io.StringIO(), vertex=3)
