"""The harness itself, without BuildKit or dockyard: layers applied (whiteouts, opaque
directories, replacements, hardlinks), listing lines, config normalisation, the base
image rewrite and the comparison's messages -- tables walked by one test each."""

from __future__ import annotations

import io
import tarfile

import pytest
from conf_compare import Built, Failed, compare
from conf_corpus import CONTEXT_MTIME, case_names, dockyard_dockerfile, load_case
from conf_tree import Entry, apply_layer, listing, normalise_config

Spec = tuple[str, str]  # (name, "d" | "f:<text>" | "l:<target>" | "h:<target>")


def _layer(specs: list[Spec]) -> tarfile.TarFile:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, spec in specs:
            info = tarfile.TarInfo(name)
            info.mtime = CONTEXT_MTIME
            kind, _, rest = spec.partition(":")
            data = rest.encode() if kind == "f" else b""
            info.type = {"d": tarfile.DIRTYPE, "f": tarfile.REGTYPE, "l": tarfile.SYMTYPE,
                         "h": tarfile.LNKTYPE}[kind]
            info.mode, info.size = (0o755 if kind == "d" else 0o644), len(data)
            info.linkname = rest if kind in "lh" else ""
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return tarfile.open(fileobj=out)


def _paths(layers: list[list[Spec]]) -> list[str]:
    entries: dict[str, Entry] = {}
    for layer in layers:
        apply_layer(entries, _layer(layer))
    return [line.split(" ")[0] + " " + line.split(" ", 5)[4] for line in listing(entries)]


LAYERS: list[tuple[str, list[list[Spec]], list[str]]] = [
    ("whiteout of a file", [[("a", "f:1"), ("b", "f:2")], [(".wh.a", "f:")]], ["f b"]),
    ("whiteout of a directory takes its contents",
     [[("d", "d"), ("d/x", "f:1")], [(".wh.d", "f:")]], []),
    ("opaque directory keeps only this layer's entries",
     [[("d", "d"), ("d/old", "f:1")], [("d", "d"), ("d/.wh..wh..opq", "f:"), ("d/new", "f:2")]],
     ["d d", "f d/new"]),
    ("a file replacing a directory drops its contents",
     [[("x", "d"), ("x/y", "f:1")], [("x", "f:2")]], ["f x"]),
    ("a directory replacing a file", [[("x", "f:1")], [("x", "d"), ("x/y", "f:2")]],
     ["d x", "f x/y"]),
]


@pytest.mark.parametrize("about,layers,expected", LAYERS, ids=[row[0] for row in LAYERS])
def test_layers_apply(about: str, layers: list[list[Spec]], expected: list[str]) -> None:
    assert _paths(layers) == expected


def test_hardlinks_are_listed_as_their_file_with_a_group() -> None:
    entries: dict[str, Entry] = {}
    apply_layer(entries, _layer([("b", "f:data"), ("a", "h:b"), ("c", "l:b")]))
    assert listing(entries) == [
        "f 0644 0:0 ctx a 4 3a6eb0790f39ac87 =a",
        "f 0644 0:0 ctx b 4 3a6eb0790f39ac87 =a",
        "l 0644 0:0 ctx c -> b",
    ]


def test_config_keeps_what_users_see() -> None:
    config = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
              "config": {"Env": ["A=1"], "Cmd": None, "Labels": {}, "User": "app"},
              "rootfs": {"diff_ids": ["sha256:1", "sha256:2"]},
              "history": [{"created": "x", "created_by": "RUN x", "comment": "buildkit"},
                          {"created_by": "ENV A=1", "empty_layer": True}]}
    assert normalise_config(config) == {
        "architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"], "User": "app"},
        "history": [{"created_by": "RUN x", "empty_layer": False},
                    {"created_by": "ENV A=1", "empty_layer": True}], "layers": 2}


REWRITES = [
    ("FROM busybox\n", "FROM R\n"),
    ("FROM --platform=$BUILDPLATFORM busybox AS b\n", "FROM --platform=$BUILDPLATFORM R AS b\n"),
    ("COPY --from=busybox /x /\n", "COPY --from=R /x /\n"),
    ("RUN --mount=type=bind,from=busybox,target=/m true\n",
     "RUN --mount=type=bind,from=R,target=/m true\n"),
    ("ARG IMG=busybox\n", "ARG IMG=R\n"),
    ("RUN echo busybox > /x\n", "RUN echo busybox > /x\n"),
    ("FROM busyboxes\n", "FROM busyboxes\n"),
]


@pytest.mark.parametrize("text,expected", REWRITES)
def test_base_image_rewrite(text: str, expected: str) -> None:
    assert dockyard_dockerfile(text, "R") == expected


TREE = ["d 0755 0:0 - a", "f 0644 0:0 * a/f 2 ab"]
COMPARISONS = [
    (Built(TREE, {}), Built(TREE, {}), None, []),
    (Built(TREE, {}), Built(TREE[:1], {}), None, ["-f 0644 0:0 * a/f 2 ab"]),
    (Built(TREE, {"config": {"User": "a"}}), Built(TREE, {"config": {}}), None,
     ["config.User: buildkit 'a' != dockyard None"]),
    (Built(TREE, {"history": [1]}), Built(TREE, {"history": [1, 2]}), None,
     ["history: buildkit has 1 entries, dockyard 2"]),
    (Failed("x: exit code: 3"), Failed("exit code: 3"), {"buildkit": "exit code: 3",
                                                         "dockyard": "exit code: 3"}, []),
    (Failed("boom"), Built(TREE, {}), {"buildkit": "boom", "dockyard": "boom"},
     ["dockyard built an image, but the case must fail"]),
    (Built(TREE, {}), Failed("no"), None, ["dockyard failed: no"]),
]


@pytest.mark.parametrize("expected,actual,failure,differences", COMPARISONS)
def test_compare(expected: Built | Failed, actual: Built | Failed,
                 failure: dict[str, str] | None, differences: list[str]) -> None:
    assert compare(expected, actual, failure) == differences


def test_corpus_is_complete() -> None:
    names = case_names()
    assert len(names) >= 60
    for name in names:
        case = load_case(name)
        assert case.settings.get("about"), name
        assert (case.recorded / "error.txt").exists() == (case.expect_failure is not None), name
