"""The context forms on the client (cluster/_context_forms.py) and the frontend's use of
named contexts (scheduler/dockerfile: ``--build-context`` in place of a stage or an
image), without a service: the CLI's effects are tests/integration/cluster/
test_build_contexts.py."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from dockyard.cluster._context_forms import ContextForms, is_git_url, parse_build_context
from dockyard.cluster._context_server import ContextServer, ContextServers
from dockyard.cluster._oci_layout import split_layout
from dockyard.scheduler._build_request import BuildOptions, NamedContext
from dockyard.scheduler._errors import SolveError, UsageError
from dockyard.scheduler._graph import SourceOp
from dockyard.scheduler.dockerfile._frontend import build_graph
from dockyard.workers._context_manifest import build_manifest

NAMES = [
    ("base=./dir", ("base", "./dir")),
    ("docker.io/library/alpine:latest=docker-image://busybox",
     ("alpine", "docker-image://busybox")),
    ("alpine:3.19=/tmp/x", ("alpine:3.19", "/tmp/x")),
    ("myorg/app=https://example.invalid/app.git#main:sub",
     ("myorg/app", "https://example.invalid/app.git#main:sub")),
    ("x=a=b", ("x", "a=b")),
]


@pytest.mark.parametrize(("value", "parsed"), NAMES)
def test_build_context_names_are_familiar(value: str, parsed: tuple[str, str]) -> None:
    assert parse_build_context(value) == parsed


@pytest.mark.parametrize("value", ["base", "=dir", "base=", "Upper=dir", "a b=dir",
                                   "base=target:x",
                                   "base=docker-image://Bad Ref"])
def test_bad_build_contexts_are_usage_errors(value: str) -> None:
    with pytest.raises(UsageError, match="invalid --build-context"):
        parse_build_context(value)


@pytest.mark.parametrize(("text", "git"), [
    ("https://host/repo.git#main:sub", True), ("git://host/repo", True),
    ("git@host:org/repo.git", True), ("ssh://git@host/repo", True),
    ("github.com/org/repo", True), ("https://host/ctx.tar.gz", False), (".", False),
    ("./repo.git", False)])
def test_git_urls_are_told_apart(text: str, git: bool) -> None:
    assert is_git_url(text) is git


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_stdin_tar_is_unpacked_and_removed_on_close() -> None:
    with ContextForms() as forms:
        stdin = io.BytesIO(gzip.compress(_tar({"Dockerfile": b"FROM scratch\n",
                                               "../up/a": b"A"})))
        found = forms.main("-", None, stdin)
        assert found.dockerfile == b"FROM scratch\n"
        assert (found.directory / "up" / "a").read_bytes() == b"A"  # cleaned, as ADD does
        assert found.dockerfile_path == found.directory / "Dockerfile"
    assert not found.directory.exists()


def test_stdin_text_is_the_dockerfile_with_an_empty_context() -> None:
    with ContextForms() as forms:
        found = forms.main("-", None, io.BytesIO(b"FROM scratch\n"))
        assert (found.dockerfile, found.dockerfile_path) == (b"FROM scratch\n", None)
        assert list(found.directory.iterdir()) == []


def test_an_ssh_git_url_without_an_agent_is_refused() -> None:
    with ContextForms({"other": "/tmp/sock"}) as forms, \
            pytest.raises(UsageError, match="pass --ssh default"):
        forms.main("git@127.0.0.1:repo.git", None, io.BytesIO())


def test_context_servers_answer_by_name_and_refuse_others(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"main")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_bytes(b"named")
    servers = ContextServers()
    for name, sub in (("context", "a"), ("context:b", "b")):
        root = tmp_path / sub
        servers.add(name, ContextServer(root, build_manifest(root, [])))
    assert servers.read({"name": "context:b", "items": [["f", 0, 5]]}) == [b"named"]
    assert servers.read({"name": "context", "items": [["f", 0, 4]]}) == [b"main"]
    assert servers.served == 9
    with pytest.raises(SolveError, match="'context:c' is not a context the client sent"):
        servers.read({"name": "context:c", "items": [["f", 0, 1]]})


def test_named_contexts_survive_the_wire() -> None:
    options = BuildOptions(context=".", named_contexts=(
        NamedContext("base", "local://context:base", ("*.log",)),
        NamedContext("alpine", "docker-image://busybox"),
        NamedContext("lay", "oci-layout://context:lay@sha256:" + "a" * 64, ("**",), b"{}")))
    assert BuildOptions.from_wire(options.to_wire()).named_contexts == options.named_contexts
    wire = options.to_wire()
    del wire["named_contexts"]  # an older client's map
    assert BuildOptions.from_wire(wire).named_contexts == ()


def _sources(dockerfile: str, *contexts: NamedContext) -> list[SourceOp]:
    graph = build_graph(dockerfile.encode(), named_contexts=contexts).graph
    return [v.op for v in graph.vertices.values() if isinstance(v.op, SourceOp)]


LOCAL = NamedContext("base", "local://context:base", ("x",))


def test_from_a_named_directory_is_a_whole_layer_source() -> None:
    assert _sources("FROM base\n", LOCAL) == [
        SourceOp("local://context:base", (("exclude", '["x"]'), ("rootfs", "true")))]


def test_copy_from_a_named_directory_keeps_the_chain() -> None:
    assert _sources("FROM scratch\nCOPY --from=base / /\n", LOCAL) == [
        SourceOp("local://context:base", (("exclude", '["x"]'),))]


def test_a_named_context_replaces_the_stage_of_its_name() -> None:
    sources = _sources("FROM busybox AS base\nRUN false\nFROM scratch\nCOPY --from=base / /\n",
                       LOCAL)
    assert [s.identifier for s in sources] == ["local://context:base"]


def test_a_docker_image_context_replaces_an_image_by_its_familiar_name() -> None:
    image = NamedContext("alpine", "docker-image://busybox:1.36")
    sources = _sources("FROM docker.io/library/alpine:latest\n", image)
    assert [s.identifier for s in sources] == ["docker-image://docker.io/library/busybox:1.36"]
    assert [s.identifier for s in _sources("FROM scratch\nCOPY --from=alpine / /\n", image)
            ] == ["docker-image://docker.io/library/busybox:1.36"]


@pytest.mark.parametrize(("value", "parts"), [
    ("oci-layout:///l", ("/l", "", "")), ("oci-layout://./l:v1", ("./l", "v1", "")),
    ("oci-layout:///l@sha256:ab", ("/l", "", "sha256:ab")),
    ("oci-layout:///l:v1@sha256:ab", ("/l", "v1", "sha256:ab")),
    ("oci-layout://host:5000/l", ("host:5000/l", "", ""))])
def test_oci_layout_values(value: str, parts: tuple[str, str, str]) -> None:
    assert split_layout(value) == parts
