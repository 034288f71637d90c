"""The service's wire frames: round trips, rejected frames (messages pinned), errors across."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from dockyard.cluster._wire import (
    WIRE_VERSION,
    Cancel,
    EventFrame,
    Failure,
    Frame,
    Request,
    Response,
    WireError,
    decode_frame,
    encode_frame,
    error_from_failure,
    failure_from_error,
)
from dockyard.scheduler._errors import (
    BlobLost,
    DockerfileError,
    DockyardError,
    ExecError,
    LayerError,
    ServiceError,
    SolveError,
)
from dockyard.scheduler._progress import VertexLog, event_to_wire

ROUND_TRIPS: list[Frame] = [
    Request(1, "ping"),
    Request(7, "solve", {"echo": "hi", "lines": 3, "nested": {"a": [1, 2]}}),
    Cancel(7),
    EventFrame(7, event_to_wire(VertexLog("sha256:ab", 1, b"\x00\xffbytes\n"))),
    Response(7, None),
    Response(2, {"pid": 12, "took": 0.5, "blob": b"\x01"}),
    Failure(3, "ExecError", "exit code: 2", "look at the output",
            {"exit_code": 2, "output_tail": "x", "vertex": "v", "location": "D:1:1"}),
    Failure(4, "BlobLost", "layer gone", None, {"digests": ["sha256:aa", "sha256:bb"]}),
]


@pytest.mark.parametrize("frame", ROUND_TRIPS, ids=lambda f: type(f).__name__)
def test_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


BAD_FRAMES: list[tuple[str, bytes, str]] = [
    ("not-msgpack", b"\xc1", "a frame that is not msgpack: "),
    ("not-a-map", _pack([1, 2]), "a frame that is not a map but list"),
    ("old-version", _pack({"v": 0, "kind": "cancel", "id": 1}),
     "a frame of wire version 0 (this dockyard speaks version 1)\n"
     "hint: use the same dockyard version on the client and the service"),
    ("no-version", _pack({"kind": "cancel", "id": 1}),
     "a frame of wire version None (this dockyard speaks version 1)\n"
     "hint: use the same dockyard version on the client and the service"),
    ("unknown-kind", _pack({"v": WIRE_VERSION, "kind": "hello", "id": 1}),
     "a frame of unknown kind 'hello'"),
    ("unknown-field", _pack({"v": WIRE_VERSION, "kind": "cancel", "id": 1, "x": 2}),
     "a 'cancel' frame with unknown field 'x'"),
    ("missing-field", _pack({"v": WIRE_VERSION, "kind": "request", "id": 1}),
     "a 'request' frame without 'method'"),
    ("bad-id", _pack({"v": WIRE_VERSION, "kind": "cancel", "id": "1"}),
     "a 'cancel' frame whose 'id' is str"),
    ("bool-id", _pack({"v": WIRE_VERSION, "kind": "cancel", "id": True}),
     "a 'cancel' frame whose 'id' is bool"),
    ("bad-params", _pack({"v": WIRE_VERSION, "kind": "request", "id": 1, "method": "m",
                          "params": [1]}),
     "a 'request' frame whose 'params' is list"),
    ("bad-hint", _pack({"v": WIRE_VERSION, "kind": "failure", "id": 1, "error": "E",
                        "message": "m", "hint": 3, "details": {}}),
     "a 'failure' frame whose 'hint' is int"),
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in BAD_FRAMES],
                         ids=[name for name, _, _ in BAD_FRAMES])
def test_bad_frames(data: bytes, message: str) -> None:
    with pytest.raises(WireError) as info:
        decode_frame(data)
    assert isinstance(info.value, ServiceError)
    assert str(info.value).startswith(message)
    if not message.endswith(": "):
        assert str(info.value) == message


def test_oversized_frame() -> None:
    with pytest.raises(WireError, match="a frame of 67108865 bytes"):
        decode_frame(b"\x00" * (64 * 1024 * 1024 + 1))


class _PrivateLayerError(LayerError):
    """A module-private subclass: crosses the wire as its public ancestor."""


ERRORS: list[tuple[DockyardError, type[DockyardError], str]] = [
    (ServiceError("no worker", hint="start one"), ServiceError, "no worker\nhint: start one"),
    (SolveError("boom", vertex="[a 1/2] RUN x", location="Dockerfile:2:1"), SolveError,
     "Dockerfile:2:1 [a 1/2] RUN x: boom"),
    (ExecError('process "/bin/sh -c make" did not complete successfully: exit code: 2',
               exit_code=2, output_tail="make: *** no rule", vertex="[b 2/4] RUN make"),
     ExecError,
     '[b 2/4] RUN make: process "/bin/sh -c make" did not complete successfully: exit code: 2'),
    (DockerfileError("unknown instruction: RUNN", line=3, source_line="RUNN x"),
     DockerfileError, "Dockerfile:3:1: unknown instruction: RUNN\n  3 | RUNN x\n    | ^"),
    (_PrivateLayerError("entry '../x' escapes the root"), LayerError,
     "entry '../x' escapes the root"),
    (BlobLost("layer sha256:aa is gone", digests=("sha256:aa", "sha256:bb"), hint="rebuild"),
     BlobLost, "layer sha256:aa is gone\nhint: rebuild"),
]


@pytest.mark.parametrize(("error", "cls", "text"), ERRORS, ids=lambda v: type(v).__name__)
def test_errors_cross_the_wire(error: DockyardError, cls: type[DockyardError],
                               text: str) -> None:
    frame = decode_frame(encode_frame(failure_from_error(5, error)))
    assert isinstance(frame, Failure) and frame.id == 5
    back = error_from_failure(frame)
    assert type(back) is cls
    assert str(back) == text
    if isinstance(error, ExecError):
        assert isinstance(back, ExecError)
        assert (back.exit_code, back.output_tail) == (2, "make: *** no rule")
    if isinstance(error, BlobLost):
        assert isinstance(back, BlobLost)
        assert back.digests == ("sha256:aa", "sha256:bb")


def test_unknown_error_class_becomes_service_error() -> None:
    back = error_from_failure(Failure(1, "FutureError", "new", "upgrade", {"x": 1}))
    assert type(back) is ServiceError
    assert str(back) == "FutureError: new\nhint: upgrade"


def test_unexpected_details_are_dropped() -> None:
    back = error_from_failure(Failure(1, "LayerError", "bad", None, {"vertex": "v"}))
    assert type(back) is LayerError and str(back) == "bad"
