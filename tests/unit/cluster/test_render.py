"""Progress rendering: plain output pinned line for line (BuildKit's plain printer), rawjson
parseable, tty drawn, mode selection."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from support.solve_status import SchemaError, read_stream

from dockyard.cluster._render import (
    FAILED_TO_SOLVE,
    PlainRenderer,
    QuietRenderer,
    RawJsonRenderer,
    TtyRenderer,
    error_prefix,
    format_bytes,
    format_offset,
    make_renderer,
)
from dockyard.scheduler._errors import ExecError, UsageError
from dockyard.scheduler._progress import (
    Event,
    StatusUpdate,
    VertexCached,
    VertexCompleted,
    VertexFailed,
    VertexLog,
    VertexStarted,
    VertexWarning,
    warning,
)

D1, D2, D3, D4 = (f"sha256:{c * 64}" for c in "1234")
LOAD = "[internal] load build definition from Dockerfile"
MAKE_ERROR = 'process "/bin/sh -c make" did not complete successfully: exit code: 2'

# A step is an event, or a float: the clock's new reading (unix seconds).
Step = Event | float

PLAIN_CASES: list[tuple[str, list[Step], str]] = [
    ("build", [
        100.0,
        VertexStarted(D1, LOAD, 100.0),
        StatusUpdate(D1, "transferring dockerfile:", current=37, done=True),
        VertexCompleted(D1, LOAD, 0.04),
        VertexCached(D2, "[build 1/4] FROM docker.io/library/busybox:latest"),
        VertexStarted(D3, "[build 2/4] RUN make", 100.0),
        100.352,
        VertexLog(D3, 1, b"output line\npart"),
        100.5,
        VertexLog(D3, 2, b"ial line\n"),
        VertexStarted(D4, "[build 3/4] RUN ./configure", 100.5),
        101.0,
        VertexCompleted(D3, "[build 2/4] RUN make", 1.2),
        VertexLog(D4, 1, b"checking...\n"),
        VertexFailed(D4, "[build 3/4] RUN ./configure", MAKE_ERROR),
    ], f"""\
#1 {LOAD}
#1 transferring dockerfile: 37B done
#1 DONE 0.0s

#2 [build 1/4] FROM docker.io/library/busybox:latest
#2 CACHED

#3 [build 2/4] RUN make
#3 0.352 output line
#3 0.500 partial line
#3 ...

#4 [build 3/4] RUN ./configure
#4 ...

#3 [build 2/4] RUN make
#3 DONE 1.2s

#4 [build 3/4] RUN ./configure
#4 0.500 checking...
#4 ERROR: {MAKE_ERROR}
"""),
    ("cancelled-with-partial-output", [
        0.0,
        VertexStarted(D1, "[a 2/2] RUN sleep 100", 0.0),
        12.5,
        VertexLog(D1, 1, b"tick\nno newline"),
        150.0,
        VertexLog(D1, 1, b"\nlate\n"),
        VertexStarted(D2, "[b 2/2] RUN sleep 100", 149.0),
        VertexLog(D2, 2, b"half"),
        VertexFailed(D2, "[b 2/2] RUN sleep 100", "context canceled", cancelled=True),
        VertexFailed(D1, "[a 2/2] RUN sleep 100", "context canceled", cancelled=True),
    ], """\
#1 [a 2/2] RUN sleep 100
#1 12.50 tick
#1 150.0 no newline
#1 150.0 late
#1 ...

#2 [b 2/2] RUN sleep 100
#2 1.000 half
#2 CANCELED

#1 [a 2/2] RUN sleep 100
#1 CANCELED
"""),
    ("cancelled-order", [
        0.0,
        VertexStarted(D1, "[a 2/2] RUN x", 0.0),
        VertexFailed(D1, "[a 2/2] RUN x", "context canceled", cancelled=True),
    ], """\
#1 [a 2/2] RUN x
#1 CANCELED
"""),
    ("status-throttled", [
        0.0,
        VertexStarted(D1, "[internal] load build context", 0.0),
        StatusUpdate(D1, "transferring context:", current=10, total=10_000_000),
        StatusUpdate(D1, "transferring context:", current=20, total=10_000_000),
        StatusUpdate(D1, "transferring context:", current=2_050_000, total=10_000_000),
        6.0,
        StatusUpdate(D1, "transferring context:", current=2_060_000, total=10_000_000),
        StatusUpdate(D1, "transferring context:", current=10_000_000, total=10_000_000,
                     done=True),
        VertexCompleted(D1, "[internal] load build context", 6.04),
    ], """\
#1 [internal] load build context
#1 transferring context: 10B / 10.00MB
#1 transferring context: 2.05MB / 10.00MB
#1 transferring context: 2.06MB / 10.00MB
#1 transferring context: 10.00MB / 10.00MB done
#1 DONE 6.0s
"""),
    ("secret-mount-shows-only-its-id", [
        0.0,
        VertexStarted(D1, "[b 2/2] RUN --mount=type=secret,id=token ./deploy", 0.0),
        VertexLog(D1, 1, b"deploying\n"),
        VertexCompleted(D1, "[b 2/2] RUN --mount=type=secret,id=token ./deploy", 0.25),
        VertexCached(D2, "[b 3/3] COPY a /a"),
    ], """\
#1 [b 2/2] RUN --mount=type=secret,id=token ./deploy
#1 0.000 deploying
#1 DONE 0.2s

#2 [b 3/3] COPY a /a
#2 CACHED
"""),
    ("log-before-start-names-the-digest", [
        0.0,
        VertexLog(D1, 1, b"early\n"),
    ], f"""\
#1 {D1}
#1 0.000 early
"""),
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _render_plain(steps: list[Step]) -> str:
    out, clock = io.StringIO(), FakeClock()
    renderer = PlainRenderer(out, clock=clock)
    for step in steps:
        if isinstance(step, float):
            clock.now = step
        else:
            renderer.emit(step)
    renderer.close()
    return out.getvalue()


@pytest.mark.parametrize(("steps", "expected"), [(s, e) for _, s, e in PLAIN_CASES],
                         ids=[name for name, _, _ in PLAIN_CASES])
def test_plain_output(steps: list[Step], expected: str) -> None:
    assert _render_plain(steps) == expected


@pytest.mark.parametrize(("count", "text"), [
    (0, "0B"), (37, "37B"), (999, "999B"), (1000, "1.00kB"), (2048, "2.05kB"),
    (1_500_000, "1.50MB"), (3_000_000_000, "3.00GB"),
])
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (-1.0, "0.000"), (0.3521, "0.352"), (9.9994, "9.999"), (10.0, "10.00"), (99.994, "99.99"),
    (100.0, "100.0"), (1234.56, "1234.6"),
])
def test_format_offset(seconds: float, text: str) -> None:
    assert format_offset(seconds) == text


ALL_EVENTS: list[Event] = [
    VertexStarted(D1, "[a 1/2] RUN x", 1.5),
    VertexLog(D1, 2, b"\x00\xff binary\n"),
    StatusUpdate(D1, "layer", 1, 2, False),
    VertexCompleted(D1, "[a 1/2] RUN x", 0.5),
    VertexCached(D2, "[a 2/2] COPY . /"),
    VertexFailed(D3, "[a 3/3] RUN y", MAKE_ERROR),
]


def _rawjson(events: list[Event], clock: FakeClock | None = None) -> str:
    out = io.StringIO()
    renderer = RawJsonRenderer(out, clock=clock or FakeClock())
    for event in events:
        renderer.emit(event)
    renderer.close()
    return out.getvalue()


def test_rawjson_is_buildkits_solve_status_one_per_line() -> None:
    clock = FakeClock()
    clock.now = 2.0
    text = _rawjson([*ALL_EVENTS, CHECKED[2], warning("cache", "down")], clock)
    assert len(text.splitlines()) == len(ALL_EVENTS) + 2
    stream = read_stream(text)  # raises on any key or type BuildKit's schema lacks
    run, copy, failed = (stream.vertexes[d] for d in (D1, D2, D3))
    assert run["name"] == "[a 1/2] RUN x" and "cached" not in run
    assert run["started"] == datetime.fromtimestamp(1.5, UTC)
    assert run["completed"] == datetime.fromtimestamp(2.0, UTC)
    assert copy["cached"] is True and copy["completed"] == copy["started"]
    assert failed["error"] == MAKE_ERROR
    assert stream.logs == [{"vertex": D1, "stream": 2, "data": b"\x00\xff binary\n",
                            "timestamp": datetime.fromtimestamp(2.0, UTC)}]
    assert [(s["id"], s["current"], s["total"], "completed" in s) for s in stream.statuses] \
        == [("layer", 1, 2, False)]
    lint, build = stream.warnings
    assert lint["vertex"] == D1 and lint["short"] == SHORT.encode()
    assert lint["detail"] == [b"Stage names should be lowercase"]
    assert lint["sourceInfo"] == {"filename": "Dockerfile"}
    assert lint["range"] == [{"start": {"line": 3}, "end": {"line": 3}}]
    assert build == {"level": 1, "short": b"down"}  # a warning of no vertex


def test_rawjson_cancelled_is_buildkits_context_canceled() -> None:
    stream = read_stream(_rawjson([VertexFailed(D1, "[1/1] RUN x", "stop", cancelled=True)]))
    assert stream.vertexes[D1]["error"] == "context canceled"


@pytest.mark.parametrize("line", [
    '{"vertexes":[{"digest":"sha256:1","name":"x"}]}',  # a digest of no sha256
    f'{{"vertexes":[{{"digest":"{D1}","duration":1.0}}]}}',  # a key the schema lacks
    f'{{"logs":[{{"vertex":"{D1}","data":"not base64!","timestamp":"2020-01-01T00:00:00Z"}}]}}',
    '{"statuses":[{"id":"x","current":1,"timestamp":"yesterday"}]}',
    '{"vertexes":[]}', '{"events":[{}]}', "not json",
])
def test_the_schema_reader_refuses_what_buildkit_never_writes(line: str) -> None:
    with pytest.raises(SchemaError):
        read_stream(line)


SHORT = "StageNameCasing: Stage name 'Base' should be lowercase (line 3)"
CHECKED: list[Event] = [
    VertexStarted(D1, LOAD, 0.0),
    StatusUpdate(D1, "transferring dockerfile:", current=93, done=True),
    VertexWarning(D1, SHORT, "Stage names should be lowercase",
                  "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/", "Dockerfile",
                  3),
    VertexWarning(D1, "JSONArgsRecommended: JSON arguments recommended (line 4)"),
    VertexCompleted(D1, LOAD, 0.0),
    VertexStarted(D2, "[1/1] RUN x", 0.0),
    VertexFailed(D2, "[1/1] RUN x", MAKE_ERROR),
]
SUMMARY = f"""
 2 warnings found (use docker --debug to expand):
 - {SHORT}
 - JSONArgsRecommended: JSON arguments recommended (line 4)
"""


def test_plain_shows_build_checks_in_their_vertex_and_summarises_them() -> None:
    out = io.StringIO()
    renderer = PlainRenderer(out, clock=FakeClock())
    for event in CHECKED:
        renderer.emit(event)
    renderer.close("------\n > [1/1] RUN x:\nboom\n------\n")
    assert out.getvalue() == f"""\
#1 {LOAD}
#1 transferring dockerfile: 93B done
#1 WARN: {SHORT}
#1 WARN: JSONArgsRecommended: JSON arguments recommended (line 4)
#1 DONE 0.0s

#2 [1/1] RUN x
#2 ERROR: {MAKE_ERROR}
------
 > [1/1] RUN x:
boom
------
{SUMMARY}"""


def test_one_build_check_is_one_warning_found() -> None:
    out = io.StringIO()
    renderer = PlainRenderer(out, clock=FakeClock())
    renderer.emit(VertexWarning(D1, SHORT))
    renderer.close()
    assert out.getvalue().endswith(
        f"\n 1 warning found (use docker --debug to expand):\n - {SHORT}\n")


def test_tty_shows_build_checks_and_their_summary() -> None:
    out = io.StringIO()
    renderer = TtyRenderer(out, clock=FakeClock(), width=200)
    for event in CHECKED:
        renderer.emit(event)
    renderer.close()
    assert f"WARN: {SHORT}" in out.getvalue()
    assert " => => transferring dockerfile: 93B" in out.getvalue()
    assert out.getvalue().endswith(SUMMARY)


def test_quiet_has_no_build_check_summary() -> None:  # as buildx: quiet and rawjson
    out = io.StringIO()
    renderer = QuietRenderer(out)
    for event in CHECKED:
        renderer.emit(event)
    renderer.close()
    assert out.getvalue() == ""


def test_tty_draws_every_vertex_and_the_error() -> None:
    out, clock = io.StringIO(), FakeClock()
    renderer = TtyRenderer(out, clock=clock, width=200)
    for event in ALL_EVENTS:
        renderer.emit(event)
    clock.now = 3.0
    renderer.close()
    text = out.getvalue()
    for expected in ("[a 1/2] RUN x", "CACHED [a 2/2] COPY . /", "ERROR [a 3/3] RUN y",
                     f"ERROR: {MAKE_ERROR}", "(3/3)"):
        assert expected in text


@pytest.mark.parametrize(("mode", "cls"), [
    ("plain", PlainRenderer), ("rawjson", RawJsonRenderer), ("quiet", QuietRenderer),
    ("auto", PlainRenderer),  # a StringIO is not a terminal
    ("tty", PlainRenderer),  # nor can tty draw on one: plain, as buildx falls back
])
def test_make_renderer(mode: str, cls: type) -> None:
    renderer = make_renderer(mode, io.StringIO())
    assert isinstance(renderer, cls)
    renderer.close()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_on_a_terminal_is_tty() -> None:
    renderer = make_renderer("auto", _Terminal())
    assert isinstance(renderer, TtyRenderer)
    renderer.close()


def test_quiet_prints_nothing() -> None:
    out = io.StringIO()
    renderer = make_renderer("quiet", out)
    for event in ALL_EVENTS:
        renderer.emit(event)
    renderer.close()
    assert out.getvalue() == ""


CACHE_DOWN = "cache import from s3://b/ failed, reading it as misses for this build"
WARNED: list[Event] = [
    VertexStarted(D1, "[1/1] RUN x", 0.0),
    warning("cache", CACHE_DOWN),
    VertexCompleted(D1, "[1/1] RUN x", 0.5),
    warning("cache", CACHE_DOWN),  # the same warning twice is printed once
]


@pytest.mark.parametrize(("mode", "expected"), [
    ("plain", f"#1 [1/1] RUN x\n#1 DONE 0.5s\n\nWARNING: {CACHE_DOWN}\n"),
    ("quiet", f"WARNING: {CACHE_DOWN}\n"),
])
def test_warnings_are_printed_once_after_the_progress(mode: str, expected: str) -> None:
    out = io.StringIO()
    renderer = make_renderer(mode, out)
    for event in WARNED:
        renderer.emit(event)
    renderer.close()
    assert out.getvalue() == expected


def test_tty_prints_warnings_after_the_view() -> None:
    out = io.StringIO()
    renderer = TtyRenderer(out, clock=FakeClock(), width=200)
    for event in WARNED:
        renderer.emit(event)
    renderer.close()
    assert out.getvalue().endswith(f"WARNING: {CACHE_DOWN}\n")
    assert out.getvalue().count("WARNING") == 1 and "(1/1)" in out.getvalue()


def test_unknown_mode() -> None:
    with pytest.raises(UsageError) as info:
        make_renderer("fancy", io.StringIO())
    assert str(info.value) == ("invalid progress mode 'fancy'\n"
                               "hint: use one of: auto, plain, tty, rawjson, quiet")


def test_debug_expands_each_build_check_as_buildx_does() -> None:
    out = io.StringIO()
    source = b"# syntax=docker/dockerfile:1\n\nFROM busybox AS Base\nRUN true\n"
    renderer = make_renderer("plain", out, clock=FakeClock(), debug=True, source=source)
    renderer.emit(CHECKED[2])  # StageNameCasing at line 3, with detail and url
    renderer.emit(VertexWarning(D1, "NoPlace: a finding of no line"))
    renderer.close()
    assert out.getvalue().split("\n", 3)[3] == f"""\

 2 warnings found:
 - {SHORT}
Stage names should be lowercase
More info: https://docs.docker.com/go/dockerfile/rule/stage-name-casing/
Dockerfile:3
--------------------
   1 |     # syntax=docker/dockerfile:1
   2 |     {''}
   3 | >>> FROM busybox AS Base
   4 |     RUN true
   5 |     {''}
--------------------

 - NoPlace: a finding of no line

"""


def test_a_failed_solve_is_reported_as_buildx_reports_it() -> None:
    error = ExecError("Dockerfile:2:1 [2/2] RUN false: exit code: 1", vertex="[2/2] RUN false",
                      exit_code=1)
    assert error_prefix(error) == "error: "  # not marked: any other error of the CLI
    error.add_note(FAILED_TO_SOLVE)
    assert error_prefix(error) == "ERROR: failed to solve: "
