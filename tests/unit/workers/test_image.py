"""workers/_image.py: config merging, history, timestamps, manifests and indexes (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dockyard.cache_backends._records import GZIP_LAYER, LayerDescriptor
from dockyard.scheduler._errors import ExportError, UsageError
from dockyard.scheduler._graph import DEFAULT_PATH, Healthcheck, HistoryEntry, ImageConfig
from dockyard.scheduler._platform import Platform
from dockyard.workers._image import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    build_image,
    build_index,
    build_metadata,
    check_single,
    export_metadata,
    sha256_digest,
)

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")
ARMV7 = Platform("linux", "arm", "v7")
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
T0_TEXT = "2023-11-14T22:13:20Z"
BUILDKIT = "buildkit.dockerfile.v0"


def layer(n: int) -> LayerDescriptor:
    return LayerDescriptor(digest=f"sha256:{n:064x}", size=100 + n,
                           diff_id=f"sha256:{n + 1000:064x}")


BASE = json.dumps({
    "architecture": "amd64", "os": "linux", "created": "2020-01-01T00:00:00.123456789Z",
    "container": "abc", "docker_version": "20.10",
    "config": {"Env": ["PATH=/base/bin", "LANG=C"], "Cmd": ["sh"], "WorkingDir": "/srv",
               "Labels": {"a": "base", "b": "base"}, "ExposedPorts": {"22/tcp": {}},
               "OnBuild": ["RUN base-trigger"], "User": "app"},
    "rootfs": {"type": "layers", "diff_ids": [layer(0).diff_id]},
    "history": [{"created": "2020-01-01T00:00:00Z", "created_by": "ADD rootfs"},
                {"created": "2020-01-01T00:00:01Z", "created_by": "CMD sh",
                 "empty_layer": True}],
}).encode()

ENTRYPOINT_BASE = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/base/bin"], "Entrypoint": ["/init"], "Cmd": ["--help"]},
    "rootfs": {"type": "layers", "diff_ids": [layer(0).diff_id]},
}).encode()

BASE_HISTORY = (HistoryEntry("ADD rootfs"), HistoryEntry("CMD sh", empty_layer=True))


def config_of(base: bytes | None, config: ImageConfig, layers: int = 1,
              epoch: int | None = None, created: int = T0) -> dict[str, Any]:
    chain = tuple(layer(n) for n in range(layers))
    image = build_image(base, config, chain, AMD64, created=created, epoch=epoch)
    data: dict[str, Any] = json.loads(image.config)
    return data


# --- the runtime config: (name, base, frontend config, expected "config" object) ------------
MERGE_CASES: list[tuple[str, bytes | None, ImageConfig, dict[str, Any]]] = [
    ("scratch, defaults", None, ImageConfig(), {"Env": [DEFAULT_PATH]}),
    ("base inherited when the frontend did not see it", BASE, ImageConfig(),
     {"Env": ["PATH=/base/bin", "LANG=C"], "Cmd": ["sh"], "WorkingDir": "/srv",
      "Labels": {"a": "base", "b": "base"}, "ExposedPorts": {"22/tcp": {}}, "User": "app"}),
    ("frontend wins where set", BASE,
     ImageConfig(env=(DEFAULT_PATH, "LANG=en", "X=1"), cmd=("run",), entrypoint=(),
                 user="root", working_dir="/app", labels=(("b", "mine"), ("c", "mine")),
                 exposed_ports=("80/tcp",), volumes=("/data",), stop_signal="SIGINT",
                 shell=("/bin/bash", "-c"), on_build=("RUN mine",)),
     {"Env": ["PATH=/base/bin", "LANG=en", "X=1"], "Cmd": ["run"], "Entrypoint": [],
      "WorkingDir": "/app", "User": "root", "Labels": {"a": "base", "b": "mine", "c": "mine"},
      "ExposedPorts": {"22/tcp": {}, "80/tcp": {}}, "Volumes": {"/data": {}},
      "StopSignal": "SIGINT", "Shell": ["/bin/bash", "-c"], "OnBuild": ["RUN mine"]}),
    ("an explicit PATH replaces the base's", BASE, ImageConfig(env=("PATH=/opt",)),
     {"Env": ["PATH=/opt", "LANG=C"], "Cmd": ["sh"], "WorkingDir": "/srv",
      "Labels": {"a": "base", "b": "base"}, "ExposedPorts": {"22/tcp": {}}, "User": "app"}),
    ("an entrypoint without cmd drops the base's Cmd (ENTRYPOINT resets it)", BASE,
     ImageConfig(entrypoint=("/bin/true",)),
     {"Env": ["PATH=/base/bin", "LANG=C"], "Entrypoint": ["/bin/true"], "WorkingDir": "/srv",
      "Labels": {"a": "base", "b": "base"}, "ExposedPorts": {"22/tcp": {}}, "User": "app"}),
    ("an empty entrypoint drops the base's Cmd too", BASE,
     ImageConfig(entrypoint=()),
     {"Env": ["PATH=/base/bin", "LANG=C"], "Entrypoint": [], "WorkingDir": "/srv",
      "Labels": {"a": "base", "b": "base"}, "ExposedPorts": {"22/tcp": {}}, "User": "app"}),
    ("a cmd alone keeps the base's Entrypoint", ENTRYPOINT_BASE, ImageConfig(cmd=("-v",)),
     {"Env": ["PATH=/base/bin"], "Entrypoint": ["/init"], "Cmd": ["-v"]}),
    ("the base's pair, resolved, is kept", ENTRYPOINT_BASE,
     ImageConfig(env=("PATH=/base/bin",), entrypoint=("/init",), cmd=("--help",)),
     {"Env": ["PATH=/base/bin"], "Entrypoint": ["/init"], "Cmd": ["--help"]}),
    ("nothing set inherits the base's pair", ENTRYPOINT_BASE, ImageConfig(env=()),
     {"Env": ["PATH=/base/bin"], "Entrypoint": ["/init"], "Cmd": ["--help"]}),
    ("healthcheck with zero durations left out", None,
     ImageConfig(env=(), healthcheck=Healthcheck(("CMD-SHELL", "true"), interval=5, retries=3)),
     {"Env": [], "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 5, "Retries": 3}}),
]


@pytest.mark.parametrize(("name", "base", "config", "expected"), MERGE_CASES,
                         ids=[case[0] for case in MERGE_CASES])
def test_runtime_config_merge(name: str, base: bytes | None, config: ImageConfig,
                              expected: dict[str, Any]) -> None:
    assert config_of(base, config)["config"] == expected


# --- history: (name, base, frontend history, layers, epoch, expected history) -----------
def h(created: str, by: str, empty: bool = False, comment: str = "") -> dict[str, Any]:
    entry: dict[str, Any] = {"created": created, "created_by": by}
    if comment:
        entry["comment"] = comment
    if empty:
        entry["empty_layer"] = True
    return entry


RUN = HistoryEntry("RUN make # buildkit", comment=BUILDKIT)
ENV = HistoryEntry("ENV A=1", empty_layer=True, comment=BUILDKIT)
BASE_ROWS = [h("2020-01-01T00:00:00Z", "ADD rootfs"),
             h("2020-01-01T00:00:01Z", "CMD sh", empty=True)]
EPOCH = 1_600_000_000  # 2020-09-13T12:26:40Z, after the base's entries
HISTORY_CASES: list[tuple[str, bytes | None, tuple[HistoryEntry, ...], int, int | None,
                          list[dict[str, Any]]]] = [
    ("scratch build", None, (ENV, RUN), 1, None,
     [h(T0_TEXT, "ENV A=1", True, BUILDKIT), h(T0_TEXT, "RUN make # buildkit", False, BUILDKIT)]),
    ("base history first", BASE, (ENV, RUN), 2, None,
     [*BASE_ROWS, h(T0_TEXT, "ENV A=1", True, BUILDKIT),
      h(T0_TEXT, "RUN make # buildkit", False, BUILDKIT)]),
    ("resolver already merged the base's history", BASE, (*BASE_HISTORY, RUN), 2, None,
     [*BASE_ROWS, h(T0_TEXT, "RUN make # buildkit", False, BUILDKIT)]),
    ("a layer without an entry gets one", None, (), 1, None,
     [h(T0_TEXT, "created by dockyard", False, "dockyard.exporter.image.v0")]),
    ("surplus entries become empty", None, (RUN, RUN), 1, None,
     [h(T0_TEXT, "RUN make # buildkit", False, BUILDKIT),
      h(T0_TEXT, "RUN make # buildkit", True, BUILDKIT)]),
    ("epoch clamps new entries, keeps older base ones", BASE, (RUN,), 2, EPOCH,
     [*BASE_ROWS, h("2020-09-13T12:26:40Z", "RUN make # buildkit", False, BUILDKIT)]),
    ("epoch before the base clamps the base too", BASE, (RUN,), 2, 0,
     [h("1970-01-01T00:00:00Z", "ADD rootfs"), h("1970-01-01T00:00:00Z", "CMD sh", True),
      h("1970-01-01T00:00:00Z", "RUN make # buildkit", False, BUILDKIT)]),
]


@pytest.mark.parametrize(("name", "base", "history", "layers", "epoch", "expected"),
                         HISTORY_CASES, ids=[case[0] for case in HISTORY_CASES])
def test_history(name: str, base: bytes | None, history: tuple[HistoryEntry, ...],
                 layers: int, epoch: int | None, expected: list[dict[str, Any]]) -> None:
    config = config_of(base, ImageConfig(history=history), layers=layers, epoch=epoch)
    assert config["history"] == expected


def test_config_top_level_fields() -> None:
    config = config_of(BASE, ImageConfig(author="me"), layers=2)
    assert set(config) == {"architecture", "os", "created", "config", "rootfs", "history",
                           "author"}
    assert config["created"] == T0_TEXT
    assert config["rootfs"] == {"type": "layers",
                                "diff_ids": [layer(0).diff_id, layer(1).diff_id]}


@pytest.mark.parametrize(("created", "epoch", "expected"), [
    (T0, None, T0_TEXT), (T0, EPOCH, "2020-09-13T12:26:40Z"), (EPOCH, T0, "2020-09-13T12:26:40Z"),
])
def test_created_clamped(created: int, epoch: int | None, expected: str) -> None:
    assert config_of(None, ImageConfig(), created=created, epoch=epoch)["created"] == expected


def test_variant_in_config_and_descriptor() -> None:
    image = build_image(None, ImageConfig(), (), ARMV7, created=T0, epoch=None)
    assert json.loads(image.config)["variant"] == "v7"
    assert image.descriptor.to_json()["platform"] == {"architecture": "arm", "os": "linux",
                                                       "variant": "v7"}


@pytest.mark.parametrize(("oci", "manifest_type", "config_type", "layer_type"), [
    (True, OCI_MANIFEST, OCI_CONFIG, GZIP_LAYER),
    (False, DOCKER_MANIFEST, DOCKER_CONFIG, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
])
def test_manifest(oci: bool, manifest_type: str, config_type: str, layer_type: str) -> None:
    image = build_image(BASE, ImageConfig(), (layer(0), layer(1)), AMD64, created=T0,
                        epoch=None, oci=oci)
    manifest = json.loads(image.manifest)
    assert manifest == {
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": sha256_digest(image.config),
                   "size": len(image.config)},
        "layers": [{"mediaType": layer_type, "digest": item.digest, "size": item.size}
                   for item in (layer(0), layer(1))]}
    assert image.manifest_digest == sha256_digest(image.manifest)
    assert image.config_digest == sha256_digest(image.config)
    assert image.descriptor.size == len(image.manifest)
    assert image.config_descriptor.media_type == config_type
    assert [item.media_type for item in image.layers] == [layer_type, layer_type]


def test_deterministic_bytes() -> None:
    config = ImageConfig(labels=(("z", "1"), ("a", "2")), history=(RUN,))
    first = build_image(BASE, config, (layer(0), layer(1)), AMD64, created=T0, epoch=None)
    again = build_image(BASE, config, (layer(0), layer(1)), AMD64, created=T0, epoch=None)
    assert first == again
    assert b" " not in first.manifest
    assert first.config.index(b'"architecture"') < first.config.index(b'"config"')


def test_index() -> None:
    images = [build_image(None, ImageConfig(), (layer(n),), platform, created=T0, epoch=None)
              for n, platform in enumerate((AMD64, ARM64))]
    index = build_index(images)
    data = json.loads(index.index)
    assert data["mediaType"] == OCI_INDEX
    assert [item["platform"]["architecture"] for item in data["manifests"]] == ["amd64", "arm64"]
    assert [item["digest"] for item in data["manifests"]] == [i.manifest_digest for i in images]
    assert index.digest == sha256_digest(index.index)
    assert build_metadata(index) == {"containerimage.digest": index.digest,
                                     "containerimage.descriptor": {
                                         "mediaType": OCI_INDEX, "digest": index.digest,
                                         "size": len(index.index),
                                         "annotations": {CREATED: "2023-11-14T22:13:20Z"}}}


def test_docker_manifest_list() -> None:
    images = [build_image(None, ImageConfig(), (), platform, created=T0, epoch=None, oci=False)
              for platform in (AMD64, ARM64)]
    assert json.loads(build_index(images).index)["mediaType"] == DOCKER_MANIFEST_LIST


#: BuildKit's exporters date the descriptor they answer with.
CREATED = "org.opencontainers.image.created"


def test_metadata_single() -> None:
    """The descriptor names the platform of a single-platform image, as BuildKit's image
    writer sets it, and is dated as its exporter's response is (here: the config's
    ``created``, the epoch's when one is given)."""
    image = build_image(None, ImageConfig(), (), AMD64, created=T0, epoch=None)
    assert build_metadata(image) == {
        "containerimage.digest": image.manifest_digest,
        "containerimage.config.digest": image.config_digest,
        "containerimage.descriptor": {"mediaType": OCI_MANIFEST, "digest": image.manifest_digest,
                                      "size": len(image.manifest),
                                      "platform": {"architecture": "amd64", "os": "linux"},
                                      "annotations": {CREATED: "2023-11-14T22:13:20Z"}}}
    epoch = build_image(None, ImageConfig(), (), AMD64, created=T0, epoch=T0 - 60)
    assert build_metadata(epoch)["containerimage.descriptor"]["annotations"] == {
        CREATED: "2023-11-14T22:12:20Z"}
    mine = build_image(None, ImageConfig(), (), AMD64, created=T0, epoch=None,
                       annotations=[("manifest-descriptor", "", CREATED, "by hand")])
    assert build_metadata(mine)["containerimage.descriptor"]["annotations"] == {
        CREATED: "by hand"}  # an annotation set by the user stays


# --annotation (type, platform, key, value) -> where each lands
ANNOTATIONS = [
    ("manifest", "", "m.all", "1"), ("manifest", "linux/arm64", "m.arm", "2"),
    ("manifest-descriptor", "", "d.all", "3"), ("manifest-descriptor", "linux/amd64", "d.amd", "4"),
    ("index", "", "i", "5"), ("index-descriptor", "", "id", "6"),
]


def test_annotations_go_where_their_type_says() -> None:
    images = [build_image(None, ImageConfig(), (), platform, created=T0, epoch=None,
                          annotations=ANNOTATIONS) for platform in (AMD64, ARM64)]
    index = build_index(images, annotations=ANNOTATIONS)
    amd, arm = (json.loads(image.manifest) for image in images)
    assert amd["annotations"] == {"m.all": "1"}
    assert arm["annotations"] == {"m.all": "1", "m.arm": "2"}
    entries = json.loads(index.index)["manifests"]
    assert [entry["annotations"] for entry in entries] == [{"d.all": "3", "d.amd": "4"},
                                                           {"d.all": "3"}]
    assert json.loads(index.index)["annotations"] == {"i": "5"}
    assert index.descriptor.to_json()["annotations"] == {"id": "6"}
    assert build_metadata(index)["containerimage.descriptor"]["annotations"] == {
        "id": "6", CREATED: "2023-11-14T22:13:20Z"}


def test_no_annotations_change_nothing() -> None:
    plain = build_image(None, ImageConfig(), (), AMD64, created=T0, epoch=None)
    assert "annotations" not in json.loads(plain.manifest)
    assert plain == build_image(None, ImageConfig(), (), AMD64, created=T0, epoch=None,
                                annotations=[("manifest", "linux/arm64", "k", "v")])


def test_index_annotations_refused_for_one_image() -> None:
    check_single([("manifest", "", "k", "v"), ("manifest-descriptor", "", "k", "v")])
    for kind in ("index", "index-descriptor"):
        with pytest.raises(UsageError, match="index annotations not supported for single "
                                             "platform export"):
            check_single([(kind, "", "k", "v")])


@pytest.mark.parametrize(("kinds", "keys"), [
    ((), {"containerimage.config.digest"}),
    (("local",), set()), (("tar", "local"), set()),
    (("oci",), {"containerimage.digest", "containerimage.config.digest",
                "containerimage.descriptor", "image.name"}),
    (("local", "image"), {"containerimage.digest", "containerimage.config.digest",
                          "containerimage.descriptor", "image.name"}),
])
def test_image_keys_only_for_image_outputs(kinds: tuple[str, ...], keys: set[str]) -> None:
    image = build_image(None, ImageConfig(), (), AMD64, created=T0, epoch=None)
    assert set(export_metadata(image, kinds, ["a:1"])) == keys


ERROR_CASES: list[tuple[str, bytes | None, str]] = [
    ("not json", b"{nope", "the base image's config is not JSON: Expecting property name "
     "enclosed in double quotes: line 1 column 2 (char 1)\n"
     "hint: the cached base image is corrupt; rebuild with --no-cache"),
    ("not an object", b"[]", "the base image's config is not a JSON object\n"
     "hint: the cached base image is corrupt; rebuild with --no-cache"),
]


@pytest.mark.parametrize(("name", "base", "message"), ERROR_CASES,
                         ids=[case[0] for case in ERROR_CASES])
def test_bad_base_config(name: str, base: bytes | None, message: str) -> None:
    with pytest.raises(ExportError) as caught:
        build_image(base, ImageConfig(), (), AMD64, created=T0, epoch=None)
    assert str(caught.value) == message


@pytest.mark.parametrize(("platforms", "message"), [
    ((), "an image index needs at least one image"),
    ((AMD64, AMD64), "an image index lists each platform once; got linux/amd64, linux/amd64"),
])
def test_bad_index(platforms: tuple[Platform, ...], message: str) -> None:
    images = [build_image(None, ImageConfig(), (), p, created=T0, epoch=None) for p in platforms]
    with pytest.raises(ExportError) as caught:
        build_index(images)
    assert str(caught.value) == message
