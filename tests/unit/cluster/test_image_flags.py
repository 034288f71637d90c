"""``dockyard build``'s image-side flags as buildx reads them: ``--label``, ``--annotation``
(and ``-o ...,annotation.K=V``), ``-q``, ``--iidfile``; each a table of value -> parsed or
value -> exact error, and their journey through ``BuildOptions``' wire form."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._build_cmd import image_id
from dockyard.cluster._build_options import (
    BuildOptions,
    gather_options,
    parse_annotation,
    parse_labels,
    parse_output,
)
from dockyard.cluster._cli import build_parser
from dockyard.scheduler._errors import UsageError
from dockyard.scheduler.dockerfile._frontend import build_graph, with_labels

LABELS = [
    (["a=1"], (("a", "1"),)),
    (["a=1", "b=x=y", "a=2"], (("a", "2"), ("b", "x=y"))),  # the last of a key wins
    (["flag"], (("flag", ""),)),  # no value: empty, never read from the environment
    (["a="], (("a", ""),)),
]


@pytest.mark.parametrize(("items", "expected"), LABELS)
def test_labels(items: list[str], expected: tuple[tuple[str, str], ...]) -> None:
    assert parse_labels(items) == expected


ANNOTATIONS: list[tuple[str, tuple[Any, ...]]] = [
    ("", ()),
    ("org.opencontainers.image.title=app", (("manifest", "", "org.opencontainers.image.title",
                                             "app"),)),
    ("k=a=b", (("manifest", "", "k", "a=b"),)),
    ("index:k=v", (("index", "", "k", "v"),)),
    ("manifest-descriptor:k=v", (("manifest-descriptor", "", "k", "v"),)),
    ("index-descriptor:k=v", (("index-descriptor", "", "k", "v"),)),
    ("index,manifest:k=v", (("index", "", "k", "v"), ("manifest", "", "k", "v"))),
    ("manifest[linux/arm64/v8]:k=v", (("manifest", "linux/arm64", "k", "v"),)),
    ("manifest[linux/arm]:k=v", (("manifest", "linux/arm/v7", "k", "v"),)),
    ("index[linux/amd64]:k=v", (("index", "", "k", "v"),)),  # an index is not per platform
]


@pytest.mark.parametrize(("value", "expected"), ANNOTATIONS)
def test_annotation(value: str, expected: tuple[Any, ...]) -> None:
    assert parse_annotation(value) == expected


OUTPUT_ANNOTATIONS: list[tuple[str, tuple[Any, ...]]] = [
    ("type=oci,dest=o.tar,annotation.a=1", (("manifest", "", "a", "1"),)),
    ("type=docker,dest=o.tar,annotation-index.a=1", (("index", "", "a", "1"),)),
    ("type=image,name=r/a,annotation-manifest[linux/arm64].a=1",
     (("manifest", "linux/arm64", "a", "1"),)),
    ("type=registry,name=r/a,annotation-manifest-descriptor.a=1,"
     "annotation-index-descriptor.b=2",
     (("manifest-descriptor", "", "a", "1"), ("index-descriptor", "", "b", "2"))),
    ("type=oci,dest=o.tar,annotation.Org.Key=V", (("manifest", "", "org.key", "V"),)),  # as
    # buildx, which lowers the case of every --output key
]


@pytest.mark.parametrize(("value", "expected"), OUTPUT_ANNOTATIONS)
def test_output_annotations(value: str, expected: tuple[Any, ...]) -> None:
    assert parse_output(value).annotations == expected


ERRORS = [
    (parse_annotation, "novalue", "invalid annotation 'novalue', expected key=value"),
    (parse_annotation, "bogus:k=v", "invalid --annotation 'bogus:k=v': unknown annotation "
                                    "type 'bogus'"),
    (parse_annotation, "Manifest:k=v", "invalid annotation type 'Manifest', expected type "
                                       "and optional platform in square brackets"),
    (parse_annotation, "manifest[linux/]:k=v", "invalid platform 'linux/': component '' must "
                                               "match [A-Za-z0-9_.-]+"),
    (parse_output, "type=oci,dest=o.tar,annotation-bogus.k=v",
     "invalid --output 'type=oci,dest=o.tar,annotation-bogus.k=v': unknown annotation type "
     "'bogus'"),
    (parse_output, "type=oci,dest=o.tar,annotation[x y].k=v",
     "invalid --output 'type=oci,dest=o.tar,annotation[x y].k=v': could not fully parse "
     "annotation 'annotation[x y].k'"),
    (parse_output, "type=local,dest=d,annotation.k=v",
     "invalid --output 'type=local,dest=d,annotation.k=v': unsupported attribute "
     "'annotation.k' for the local exporter"),
    (parse_output, "type=tar,dest=t.tar,annotation.k=v",
     "invalid --output 'type=tar,dest=t.tar,annotation.k=v': unsupported attribute "
     "'annotation.k' for the tar exporter"),
    (parse_labels, ["=v"], "invalid key-value pair '=v': empty key"),
]


@pytest.mark.parametrize(("parse", "value", "message"), ERRORS)
def test_bad_values(parse: Any, value: Any, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse(value)
    assert caught.value.message == message


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["build", *argv])


def test_labels_and_annotations_cross_the_wire(tmp_path: Path) -> None:
    argv = ["--label", "a=1", "--label", "b=2", "--annotation", "index:i=1",
            "--annotation", "manifest[linux/arm64]:m=2", "--platform", "linux/amd64,linux/arm64",
            "-o", f"type=oci,dest={tmp_path}/o.tar,annotation-manifest-descriptor.d=3",
            str(tmp_path)]
    options = gather_options(_args(argv), {})
    assert options.labels == (("a", "1"), ("b", "2"))
    assert options.annotations == (("index", "", "i", "1"), ("manifest", "linux/arm64", "m", "2"),
                                   ("manifest-descriptor", "", "d", "3"))
    assert BuildOptions.from_wire(options.to_wire()) == options


def test_wire_of_an_earlier_client_has_no_labels_or_annotations() -> None:
    wire = BuildOptions(context="/c").to_wire()
    del wire["labels"], wire["annotations"]
    assert BuildOptions.from_wire(wire) == BuildOptions(context="/c")


GATHER_ERRORS = [
    (["--annotation", "manifest[linux/s390x]:k=v", "--platform", "linux/amd64"],
     "invalid annotation: no platform linux/s390x found in source"),
    (["-q", "--progress", "plain"], "progress=plain and quiet cannot be used together"),
    (["--iidfile", "id.txt", "-o", "type=local,dest=out"],
     "local and tar exporters are incompatible with image ID file"),
    (["--iidfile", "id.txt", "-o", "type=tar,dest=out.tar"],
     "local and tar exporters are incompatible with image ID file"),
]


@pytest.mark.parametrize(("argv", "message"), GATHER_ERRORS)
def test_refused_together(argv: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        gather_options(_args([*argv, str(tmp_path)]), {})
    assert caught.value.message == message


@pytest.mark.parametrize(("argv", "progress"), [
    (["-q"], "quiet"), (["--quiet", "--progress", "auto"], "quiet"),
    (["-q", "--progress=quiet"], "quiet"), (["--progress", "plain"], "plain"),
])
def test_quiet_is_quiet_progress(argv: list[str], progress: str, tmp_path: Path) -> None:
    assert gather_options(_args([*argv, str(tmp_path)]), {}).progress == progress


@pytest.mark.parametrize(("metadata", "expected"), [
    ({"containerimage.digest": "sha256:m", "containerimage.config.digest": "sha256:c"},
     "sha256:c"),  # one image: its config's digest, docker's image id
    ({"containerimage.digest": "sha256:i"}, "sha256:i"),  # an index: its digest
    ({}, ""),  # no image written (local, tar)
])
def test_image_id(metadata: dict[str, str], expected: str) -> None:
    assert image_id(metadata) == expected


def test_labels_win_over_the_dockerfile_and_leave_the_steps_alone() -> None:
    """BuildKit's ``label:`` attributes are set on the target's config after its own LABELs
    (checked with Docker 20.10's BuildKit: ``--label a=cli`` over ``LABEL a=...``); they
    touch no step, so no cache key."""
    graph = build_graph(b"FROM scratch\nLABEL a=dockerfile c=3\nCOPY f /f\n").graph
    labelled = with_labels(graph, (("a", "cli"), ("b", "2"), ("novalue", "")))
    assert [result.config.labels for result in labelled.results] == [
        (("a", "cli"), ("b", "2"), ("c", "3"), ("novalue", ""))]
    assert labelled.vertices == graph.vertices
    assert with_labels(graph, ()) is graph
