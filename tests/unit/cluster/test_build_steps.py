"""The steps BuildKit shows around a solve (cluster/_build_steps.py): their events, and the
plain text they make, pinned for each exporter as BuildKit names its sub-steps."""

from __future__ import annotations

import io

import pytest
from support.progress import Recorder

from dockyard.cluster._build_steps import BuildSteps, exporter_name, metadata_name, step_digest
from dockyard.cluster._render import PlainRenderer
from dockyard.scheduler._build_request import OutputSpec
from dockyard.scheduler._progress import VertexCompleted, VertexFailed, VertexStarted, VertexWarning
from dockyard.scheduler.dockerfile._ast import CheckWarning

CONFIG = "sha256:" + "c" * 64
MANIFEST = "sha256:" + "m" * 64
IMAGE_META = {"containerimage.digest": MANIFEST, "containerimage.config.digest": CONFIG}
INDEX_META = {"containerimage.digest": MANIFEST}
LINT = CheckWarning(rule="StageNameCasing", message="Stage name 'Base' should be lowercase",
                    filename="Dockerfile", line=1, description="Stage names should be "
                    "lowercase", url="https://docs.docker.com/go/dockerfile/rule/x/")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _plain(recorder: Recorder) -> str:
    out = io.StringIO()
    renderer = PlainRenderer(out, clock=Clock())
    for event in recorder.events:
        renderer.emit(event)
    renderer.close()
    return out.getvalue()


def test_the_definition_its_warnings_the_ignore_file_then_base_images() -> None:
    recorder, clock = Recorder(), Clock()
    steps = BuildSteps(recorder, "build-1", clock=clock)
    clock.now = 100.2
    answered = steps.resolving("busybox", "linux/arm64")
    clock.now = 101.5
    answered("")
    failed = steps.resolving("nosuch.example/app:1")
    failed("pull access denied")
    steps.loaded("sub/Dockerfile.dev", 93, 12, [LINT], ["build arg X was not consumed"])
    assert _plain(recorder) == """\
#1 [internal] load build definition from Dockerfile.dev
#1 transferring dockerfile: 93B done
#1 WARN: StageNameCasing: Stage name 'Base' should be lowercase (line 1)
#1 DONE 1.5s

#2 [internal] load .dockerignore
#2 transferring context: 12B done
#2 DONE 0.0s

#3 [linux/arm64 internal] load metadata for docker.io/library/busybox:latest
#3 DONE 1.3s

#4 [internal] load metadata for nosuch.example/app:1
#4 ERROR: pull access denied

WARNING: build arg X was not consumed

 1 warning found (use docker --debug to expand):
 - StageNameCasing: Stage name 'Base' should be lowercase (line 1)
"""
    warned = next(e for e in recorder.events if isinstance(e, VertexWarning))
    assert (warned.detail, warned.url, warned.filename, warned.line) == (
        LINT.description, LINT.url, "Dockerfile", 1)
    assert warned.vertex == step_digest("build-1", "[internal] load build definition from "
                                        "Dockerfile.dev")


def test_a_step_is_one_vertex_per_build() -> None:
    assert step_digest("a", "x") == step_digest("a", "x")
    assert len({step_digest("a", "x"), step_digest("b", "x"), step_digest("a", "y")}) == 3


@pytest.mark.parametrize(("output", "metadata", "expected"), [
    (OutputSpec("local", "/out"), IMAGE_META, ["copying files 2.05MB done"]),
    (OutputSpec("tar", "/out.tar"), IMAGE_META, ["sending tarball done"]),
    (OutputSpec("oci", "/o.tar"), IMAGE_META,
     ["exporting layers done", f"exporting manifest {MANIFEST} done",
      f"exporting config {CONFIG} done", "sending tarball done"]),
    (OutputSpec("docker", "/d.tar"), INDEX_META,
     ["exporting layers done", f"exporting manifest list {MANIFEST} done",
      "sending tarball done"]),
    (OutputSpec("image", None, ("app:1", "registry.example/team/app")), IMAGE_META,
     ["exporting layers done", f"writing image {CONFIG} done",
      "naming to docker.io/library/app:1 done",
      "naming to registry.example/team/app:latest done"]),
    (OutputSpec("image", None, ("app:1",)), INDEX_META,
     ["exporting layers done", f"exporting manifest list {MANIFEST} done",
      "naming to docker.io/library/app:1 done"]),
    (OutputSpec("image", None, ("registry.example/app:2",), push=True), IMAGE_META,
     ["exporting layers done", f"exporting manifest {MANIFEST} done",
      f"exporting config {CONFIG} done", "naming to registry.example/app:2 done",
      "pushing layers done", f"pushing manifest for registry.example/app:2@{MANIFEST} done"]),
], ids=["local", "tar", "oci", "docker-index", "image", "image-index", "image-push"])
def test_each_output_is_its_exporters_vertex(output: OutputSpec, metadata: dict[str, str],
                                             expected: list[str]) -> None:
    recorder, clock = Recorder(), Clock()
    steps = BuildSteps(recorder, "b", clock=clock)
    clock.now = 101.0
    steps.exporting([output])
    clock.now = 102.0
    steps.exported([output], metadata, {0: 2_048_000})
    lines = _plain(recorder).splitlines()
    assert lines == [f"#1 {exporter_name(output)}", *(f"#1 {line}" for line in expected),
                     "#1 DONE 1.0s"]


def test_exporters_show_in_the_outputs_order_and_a_failure_on_the_first() -> None:
    outputs = [OutputSpec("tar", "/t"), OutputSpec("local", "/l"), OutputSpec("tar", "/u")]
    recorder = Recorder()
    steps = BuildSteps(recorder, "b", clock=Clock())
    steps.exporting(outputs)
    steps.exported(outputs, IMAGE_META)
    assert [e.name for e in recorder.events if isinstance(e, VertexCompleted)] == [
        "exporting to client tarball", "exporting to client directory",
        "exporting to client tarball"]
    assert len({e.vertex for e in recorder.events}) == 3  # two tarballs: two vertices
    failing = Recorder()
    steps = BuildSteps(failing, "b", clock=Clock())
    steps.exporting(outputs)
    steps.export_failed(outputs, "cannot write /t: disk full")
    assert [(e.name, e.error, e.cancelled) for e in failing.events
            if isinstance(e, VertexFailed)] == [
        ("exporting to client tarball", "cannot write /t: disk full", False),
        ("exporting to client directory", "cannot write /t: disk full", True),
        ("exporting to client tarball", "cannot write /t: disk full", True)]
    assert len([e for e in failing.events if isinstance(e, VertexStarted)]) == 3


def test_a_step_of_the_client_shows_while_the_export_runs() -> None:
    recorder, clock = Recorder(), Clock()
    steps = BuildSteps(recorder, "b", clock=clock)
    load = "sha256:" + "1" * 64
    steps.exporting([OutputSpec("docker", None)])
    recorder.emit(VertexStarted(load, "importing to docker", 100.0))
    recorder.emit(VertexCompleted(load, "importing to docker", 0.5))
    clock.now = 101.0
    steps.exported([OutputSpec("docker", None)], IMAGE_META)
    assert _plain(recorder) == f"""\
#1 exporting to docker image format
#1 ...

#2 importing to docker
#2 DONE 0.5s

#1 exporting to docker image format
#1 exporting layers done
#1 exporting manifest {MANIFEST} done
#1 exporting config {CONFIG} done
#1 sending tarball done
#1 DONE 1.0s
"""


@pytest.mark.parametrize(("ref", "platform", "name"), [
    ("alpine", None, "[internal] load metadata for docker.io/library/alpine:latest"),
    ("127.0.0.1:5000/x:1", "linux/amd64",
     "[linux/amd64 internal] load metadata for 127.0.0.1:5000/x:1"),
    ("Not A Ref", None, "[internal] load metadata for Not A Ref"),
])
def test_metadata_names(ref: str, platform: str | None, name: str) -> None:
    assert metadata_name(ref, platform) == name
