"""The build graph: digests (pinned), dedup and order, msgpack round trip, strict decoding,
JSON lines."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.scheduler._errors import GraphError
from dockyard.scheduler._graph import (
    GRAPH_VERSION,
    BuildGraph,
    Copy,
    ExecMount,
    ExecOp,
    FileOp,
    Healthcheck,
    HistoryEntry,
    ImageConfig,
    ImageResult,
    MergeOp,
    Mkdir,
    Mkfile,
    Rm,
    SourceOp,
    Symlink,
    Ulimit,
    Vertex,
    vertex_from_wire,
    vertex_to_wire,
)
from dockyard.scheduler._platform import Platform

AMD64 = Platform("linux", "amd64")
ALPINE = SourceOp("docker-image://docker.io/library/alpine:3.19")
CONTEXT = SourceOp("local://context", (("exclude", '["*.md"]'),))


def small_graph() -> BuildGraph:
    graph = BuildGraph()
    base = graph.add(Vertex(ALPINE, platform=AMD64, name="[1/3] FROM alpine:3.19",
                             location="Dockerfile:1:1"))
    context = graph.add(Vertex(CONTEXT, name="load context"))
    run = graph.add(Vertex(
        ExecOp(("/bin/sh", "-c", "make"), env=("PATH=/bin",), cwd="/src",
               mounts=(ExecMount("/", 0, output=True),
                       ExecMount("/cache", None, type="cache", cache_id="go", sharing="locked"),
                       ExecMount("/run/secrets/tok", None, type="secret", secret_id="tok",
                                 mode=0o400, uid=0, gid=0)),
               proxy_env=("HTTP_PROXY=http://proxy:3128",)),
        inputs=(base,), platform=AMD64, name="[2/3] RUN make", location="Dockerfile:2:1"))
    files = graph.add(Vertex(
        FileOp((Copy(1, "/app", "/dst", chown="1000:1000", chmod="u+x", exclude=("*.tmp",)),
                Mkfile("/etc/motd", "hello\n"), Mkdir("/d", make_parents=True), Rm("/tmp/x"),
                Symlink("/d", "/e")), base=None),
        inputs=(run, context), platform=AMD64, name="[3/3] COPY --link . /dst",
        location="Dockerfile:3:3"))
    merged = graph.add(Vertex(MergeOp(), inputs=(run, files), platform=AMD64))
    graph.add_result(ImageResult(AMD64, merged, ImageConfig(
        cmd=("sh",), labels=(("a", "b"),), exposed_ports=("80/tcp",),
        healthcheck=Healthcheck(("CMD-SHELL", "true"), interval=30_000_000_000, retries=3),
        history=(HistoryEntry("RUN make"), HistoryEntry("ENV A=1", empty_layer=True))),
        target="final"))
    return graph


class _Hashed:
    """Gives serialised bytes a ``digest`` so they sit in the same table as vertices."""

    def __init__(self, data: bytes) -> None:
        self.digest = "sha256:" + hashlib.sha256(data).hexdigest()


# Pinned: an accidental change of the canonical encoding (field names, defaults, order,
# GRAPH_VERSION) changes these and must be a deliberate, versioned decision.
PINNED = [
    ("alpine", lambda: Vertex(ALPINE, platform=AMD64),
     "sha256:70f708d0e21bd2569a20e189a9214353ce029c959e4175111c08a5d06cae1c26"),
    ("context", lambda: Vertex(CONTEXT),
     "sha256:b98a4b9136b68b74f3da8210c5038b1989b5ea87ab666b14d88fd33ada65d057"),
    ("last", lambda: list(small_graph().vertices.values())[-1],
     "sha256:39a22bb669838225dcd771eefb662c911029377d983e55b0938c113e34424269"),
    ("whole graph", lambda: _Hashed(small_graph().to_msgpack()),
     "sha256:cae39e2fec5f9fe53af6d7bfb7b630b414f5f353b508680885e02796a731ce3d"),
]


@pytest.mark.parametrize(("label", "make", "digest"), PINNED, ids=[p[0] for p in PINNED])
def test_pinned_digests(label: str, make: Any, digest: str) -> None:
    assert make().digest == digest


# Two vertices whose digests must be equal (left out of the digest) or differ.
SAME = [
    ("name", Vertex(ALPINE, name="a"), Vertex(ALPINE, name="b")),
    ("location", Vertex(ALPINE, location="Dockerfile:1:1"),
     Vertex(ALPINE, location="other.Dockerfile:9:2")),
    ("proxy_env", Vertex(ExecOp(("true",), proxy_env=("HTTP_PROXY=a",))),
     Vertex(ExecOp(("true",), proxy_env=("HTTP_PROXY=b",)))),
]
DIFFERENT = [
    ("platform", Vertex(ALPINE, platform=AMD64), Vertex(ALPINE, platform=None)),
    ("variant", Vertex(ALPINE, platform=Platform("linux", "arm", "v7")),
     Vertex(ALPINE, platform=Platform("linux", "arm", "v6"))),
    ("env", Vertex(ExecOp(("true",), env=("A=1",))), Vertex(ExecOp(("true",), env=("A=2",)))),
    ("mount", Vertex(ExecOp(("true",), mounts=(ExecMount("/", 0),))),
     Vertex(ExecOp(("true",), mounts=(ExecMount("/", 0, readonly=True),)))),
    ("action kind", Vertex(FileOp((Mkdir("/a"),))), Vertex(FileOp((Rm("/a"),)))),
    ("base", Vertex(FileOp((Mkdir("/a"),))), Vertex(FileOp((Mkdir("/a"),), base=None))),
    ("attrs", Vertex(SourceOp("local://context")), Vertex(CONTEXT)),
    ("ulimits", Vertex(ExecOp(("true",))),
     Vertex(ExecOp(("true",), ulimits=(Ulimit("nofile", 1062, 1062),)))),
    ("shm_size", Vertex(ExecOp(("true",))), Vertex(ExecOp(("true",), shm_size=1 << 27))),
]


@pytest.mark.parametrize(("label", "a", "b"), SAME, ids=[s[0] for s in SAME])
def test_left_out_of_digest(label: str, a: Vertex, b: Vertex) -> None:
    assert a.digest == b.digest


@pytest.mark.parametrize(("label", "a", "b"), DIFFERENT, ids=[d[0] for d in DIFFERENT])
def test_part_of_digest(label: str, a: Vertex, b: Vertex) -> None:
    assert a.digest != b.digest


def test_a_field_added_unless_default_keeps_digests_and_wire() -> None:
    """``ulimits``/``shm_size`` came after graphs were cached: at their defaults they are
    neither digested nor sent (an older worker reads the graph), set they are both."""
    plain = Vertex(ExecOp(("true",), env=("A=1",)))
    assert plain.digest == "sha256:" + hashlib.sha256(msgpack.packb(
        [GRAPH_VERSION, "exec", {"args": ["true"], "cwd": "/", "env": ["A=1"], "hostname": "",
                                 "mounts": [], "network": "default", "security": "sandbox",
                                 "user": ""}, [], None], use_bin_type=True)).hexdigest()
    assert not {"ulimits", "shm_size"} & set(vertex_to_wire(plain)["op"])
    limited = Vertex(ExecOp(("true",), ulimits=(Ulimit("nofile", 1, -1),), shm_size=4096))
    assert vertex_from_wire(vertex_to_wire(limited)) == limited


def test_inputs_are_part_of_the_digest_in_order() -> None:
    graph = BuildGraph()
    one = graph.add(Vertex(ALPINE))
    two = graph.add(Vertex(CONTEXT))
    assert Vertex(MergeOp(), (one, two)).digest != Vertex(MergeOp(), (two, one)).digest


def test_add_dedups_and_keeps_order() -> None:
    graph = BuildGraph()
    first = graph.add(Vertex(ALPINE, name="first"))
    assert graph.add(Vertex(ALPINE, name="second")) == first
    assert list(graph.vertices) == [first]
    assert graph.vertices[first].name == "first"


def test_add_keeps_the_first_location() -> None:
    graph = BuildGraph()
    first = graph.add(Vertex(ALPINE, location="Dockerfile:1:1"))
    assert graph.add(Vertex(ALPINE, location="Dockerfile:5:1")) == first
    assert graph.vertices[first].location == "Dockerfile:1:1"


def test_round_trip() -> None:
    graph = small_graph()
    data = graph.to_msgpack()
    again = BuildGraph.from_msgpack(data)
    assert again == graph
    assert again.to_msgpack() == data
    assert list(again.vertices) == list(graph.vertices)
    assert again.results == graph.results
    exec_vertex = list(again.vertices.values())[2]
    assert isinstance(exec_vertex.op, ExecOp)
    assert exec_vertex.op.proxy_env == ("HTTP_PROXY=http://proxy:3128",)
    # metadata is not compared by ==, so check it field by field
    assert [(v.name, v.location) for v in again.vertices.values()] == [
        (v.name, v.location) for v in graph.vertices.values()]
    assert [v.location for v in again.vertices.values()] == [
        "Dockerfile:1:1", "", "Dockerfile:2:1", "Dockerfile:3:3", ""]


def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = msgpack.unpackb(small_graph().to_msgpack())
    return loaded


def _set(path: tuple[Any, ...], value: Any) -> bytes:
    document = _document()
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    packed: bytes = msgpack.packb(document)
    return packed


_DELETE = object()

# what is broken -> the bytes -> the exact message
MALFORMED = [
    ("not msgpack", b"\xc1", "malformed build graph: "),
    ("truncated", small_graph().to_msgpack()[:-5], "malformed build graph: "),
    ("not a map", msgpack.packb([1, 2]),
     "malformed build graph: expected a map at the top level"),
    ("future version", _set(("version",), GRAPH_VERSION + 1),
     f"unsupported build graph version {GRAPH_VERSION + 1} (this dockyard reads version "
     f"{GRAPH_VERSION})"),
    ("no version", _set(("version",), _DELETE),
     f"unsupported build graph version None (this dockyard reads version {GRAPH_VERSION})"),
    ("vertices not a list", _set(("vertices",), {}),
     "malformed build graph: 'vertices' must be an array"),
    ("unknown op", _set(("vertices", 0, "op", "kind"), "teleport"),
     "malformed build graph at vertices[0].op: unknown kind 'teleport'"),
    ("unknown field", _set(("vertices", 0, "op", "colour"), "red"),
     "malformed build graph at vertices[0].op: unknown field 'colour'"),
    ("wrong type", _set(("vertices", 2, "op", "args"), "make"),
     "malformed build graph at vertices[2].op.args: expected an array, got str"),
    ("bool for int", _set(("vertices", 2, "op", "mounts", 0, "input"), True),
     "malformed build graph at vertices[2].op.mounts[0].input: expected int, got bool"),
    ("float", _set(("vertices", 2, "op", "mounts", 2, "mode"), 1.5),
     "malformed build graph at vertices[2].op.mounts[2].mode: expected int, got float"),
    ("missing field", _set(("vertices", 2, "op", "args"), _DELETE),
     "malformed build graph at vertices[2].op: ExecOp.__init__() missing 1 required "
     "positional argument: 'args'"),
    ("unknown action", _set(("vertices", 3, "op", "actions", 1, "kind"), "chmod"),
     "malformed build graph at vertices[3].op.actions[1]: unknown kind 'chmod'"),
    ("pair of three", _set(("vertices", 1, "op", "attrs", 0), ["a", "b", "c"]),
     "malformed build graph at vertices[1].op.attrs[0]: expected 2 items, got 3"),
    ("tampered", _set(("vertices", 2, "op", "cwd"), "/elsewhere"),
     "malformed build graph at vertices[2]: digest"),
    ("vertex keys", _set(("vertices", 0, "extra"), 1),
     "malformed build graph at vertices[0]: expected a map with digest, op, inputs, name, "
     "platform and optionally location"),
    ("vertex without name", _set(("vertices", 0, "name"), _DELETE),
     "malformed build graph at vertices[0]: expected a map with digest, op, inputs, name, "
     "platform and optionally location"),
    ("location not text", _set(("vertices", 0, "location"), 7),
     "malformed build graph at vertices[0].location: expected str, got int"),
    ("input order", _set(("vertices", 0), _document()["vertices"][2]),
     "vertex '[2/3] RUN make': input 0 ("),
    ("dangling root", _set(("results", 0, "root"), "sha256:" + "0" * 64),
     f"result for linux/amd64: root sha256:{'0' * 64} is not in the graph"),
    ("bad platform", _set(("results", 0, "platform"), "linux/amd64"),
     "malformed build graph at results[0].platform: expected a map, got str"),
    ("author not text", _set(("results", 0, "config", "author"), 7),
     "malformed build graph at results[0].config.author: expected str, got int"),
]


@pytest.mark.parametrize(("label", "data", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(label: str, data: bytes, message: str) -> None:
    with pytest.raises(GraphError) as caught:
        BuildGraph.from_msgpack(data)
    assert caught.value.message.startswith(message)


# a config field changed in the bytes -> the decoded config's value (fields with a default
# may be absent: a graph written before the field existed still reads)
CONFIG_FIELDS = [
    ("author absent", _set(("results", 0, "config", "author"), _DELETE), "author", ""),
    ("author set", _set(("results", 0, "config", "author"), "Jane <j@x>"), "author",
     "Jane <j@x>"),
]


@pytest.mark.parametrize(("label", "data", "name", "value"), CONFIG_FIELDS,
                         ids=[c[0] for c in CONFIG_FIELDS])
def test_config_fields_decode(label: str, data: bytes, name: str, value: Any) -> None:
    assert getattr(BuildGraph.from_msgpack(data).results[0].config, name) == value


def test_vertex_without_location_decodes() -> None:
    """A graph written before vertices carried a location still reads (as "")."""
    graph = BuildGraph.from_msgpack(_set(("vertices", 0, "location"), _DELETE))
    assert list(graph.vertices.values())[0].location == ""
    assert graph == small_graph()


def test_add_refuses_missing_input() -> None:
    with pytest.raises(GraphError, match="input 0 .* is not in the graph"):
        BuildGraph().add(Vertex(MergeOp(), inputs=("sha256:" + "1" * 64,)))


# an op that cannot be encoded -> the exact message
UNENCODABLE = [
    (replace(ExecOp(("true",)), cwd=1.5),  # type: ignore[arg-type]
     "cannot encode a float in a build graph"),
    (ExecOp(("true",), env=("A=\udcff",)),
     "cannot encode text in a build graph: surrogates not allowed ('\\udcff')"),
    (Mkdir("/a", mode=2**64), "cannot encode an integer outside the 64-bit range in a "
                              "build graph"),
]


@pytest.mark.parametrize(("op", "message"), UNENCODABLE)
def test_unencodable_ops(op: Any, message: str) -> None:
    if isinstance(op, Mkdir):
        op = FileOp((op,))
    with pytest.raises(GraphError) as caught:
        Vertex(op)
    assert caught.value.message == message


def test_json_lines() -> None:
    graph = small_graph()
    lines = [json.loads(line) for line in graph.to_json_lines().splitlines()]
    digests = list(graph.vertices)
    assert [line.get("digest") for line in lines[:-1]] == digests
    assert lines[0] == {"digest": digests[0], "op": "source", "inputs": [],
                        "platform": "linux/amd64", "name": "[1/3] FROM alpine:3.19",
                        "location": "Dockerfile:1:1", "attrs": [],
                        "identifier": ALPINE.identifier}
    assert lines[1]["platform"] is None and lines[1]["location"] == ""
    assert lines[3]["location"] == "Dockerfile:3:3"
    assert lines[2]["op"] == "exec" and lines[2]["proxy_env"] == ["HTTP_PROXY=http://proxy:3128"]
    assert [a["kind"] for a in lines[3]["actions"]] == ["copy", "mkfile", "mkdir", "rm",
                                                        "symlink"]
    assert lines[3]["base"] is None
    assert lines[-1]["result"] == "final" and lines[-1]["root"] == digests[-1]
    assert lines[-1]["config"]["healthcheck"]["test"] == ["CMD-SHELL", "true"]
    assert lines[-1]["config"]["author"] == ""
    assert graph.to_json_lines().endswith("}\n")


def test_constructor_takes_vertices_and_results() -> None:
    graph = small_graph()
    assert BuildGraph(graph.vertices, graph.results) == graph
    assert BuildGraph(list(graph.vertices.values()), graph.results) == graph


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_graph_error(data: bytes) -> None:
    with contextlib.suppress(GraphError):
        BuildGraph.from_msgpack(data)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255))
def test_corrupted_graph_decodes_or_raises_graph_error(offset: int, byte: int) -> None:
    data = bytearray(small_graph().to_msgpack())
    data[offset % len(data)] = byte
    with contextlib.suppress(GraphError):
        BuildGraph.from_msgpack(bytes(data))
