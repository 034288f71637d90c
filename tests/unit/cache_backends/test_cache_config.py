"""BuildKit's cache manifest format as dockyard writes and reads it
(cache_backends/_cache_config.py): round trips, BuildKit's own spelling (a parent 0 left
out, records keyed by its ops), the artifact forms, and malformed configs refused."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from dockyard.cache_backends._cache_config import (
    CACHE_CONFIG_MEDIA,
    INLINE_CACHE_KEY,
    cache_artifact,
    decode_cache_config,
    encode_cache_config,
    inline_value,
    layer_descriptors,
    read_inline,
)
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.scheduler._errors import CacheError


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


BASE = LayerDescriptor(_digest("base.gz"), 100, _digest("base.tar"))
COPY = LayerDescriptor(_digest("copy.gz"), 20, _digest("copy.tar"))
RUN = LayerDescriptor(_digest("run.gz"), 30, _digest("run.tar"),
                      "application/vnd.oci.image.layer.v1.tar+zstd")
SOURCE = CacheRecord(_digest("k-from"), StateResult((BASE,), b'{"os":"linux"}'), 1000,
                     {"name": "[1/3] FROM busybox"})
COPIED = CacheRecord(_digest("k-copy"), StateResult((BASE, COPY)), 2000, {"name": "COPY"})
RAN = CacheRecord(_digest("k-run"), StateResult((BASE, COPY, RUN)), 3000)
EMPTY = CacheRecord(_digest("k-scratch"), StateResult(()), 4000)


def test_records_round_trip_sharing_their_chain() -> None:
    records = [SOURCE, COPIED, RAN, EMPTY]
    data, blobs = encode_cache_config(records)
    raw = json.loads(data)
    assert len(raw["layers"]) == 3  # one entry per (blob, parent): the chain is shared
    assert [layer.digest for layer in blobs] == [BASE.digest, COPY.digest, RUN.digest]
    found = decode_cache_config(data, {}, "test")
    assert found.records == {record.key: record for record in records}
    assert found.foreign == 0


def test_buildkit_spelling_is_read_and_its_records_counted_as_foreign() -> None:
    """A parent 0 is left out (Go's omitempty); BuildKit's records have no ``dockyard``."""
    config = {
        "layers": [{"blob": BASE.digest, "parent": -1},
                   {"blob": COPY.digest}],  # parent 0
        "records": [
            {"digest": _digest("buildkit-op"), "layers": [{"layer": 1}]},
            {"digest": COPIED.key, "layers": [{"layer": 1, "createdAt": "x"}],
             "dockyard": {"created": 5, "layers": 2}},
        ],
    }
    known = {BASE.digest: BASE, COPY.digest: COPY}
    found = decode_cache_config(json.dumps(config).encode(), known, "test")
    assert found.foreign == 1
    assert found.records[COPIED.key].result.layers == (BASE, COPY)
    assert found.records[COPIED.key].created == 5


def test_a_record_naming_an_undescribed_blob_is_left_out() -> None:
    data, _ = encode_cache_config([COPIED])
    raw = json.loads(data)
    for layer in raw["layers"]:
        del layer["annotations"]
    found = decode_cache_config(json.dumps(raw).encode(), {BASE.digest: BASE}, "test")
    assert found.records == {}


@pytest.mark.parametrize("config", [
    b"not json", b'{"layers": 5}', b'[1]',
    b'{"layers": [{"blob": "sha256:a", "parent": 0, "annotations": {"diffID": "d", '
    b'"size": 1, "mediaType": "m"}}], "records": [{"digest": "k", "layers": [{"layer": 0}],'
    b' "dockyard": {"created": 1, "layers": 1}}]}',  # a chain that loops
    b'{"records": [{"digest": "k", "layers": [{"layer": 3}], "dockyard": {"created": 1, '
    b'"layers": 1}}]}',  # a layer index out of the table
])
def test_malformed_configs_are_a_cache_error(config: bytes) -> None:
    with pytest.raises(CacheError, match="the cache config in here is malformed"):
        decode_cache_config(config, {}, "here")


@pytest.mark.parametrize(("image_manifest", "oci", "media_type"), [
    (True, True, "application/vnd.oci.image.manifest.v1+json"),
    (False, True, "application/vnd.oci.image.index.v1+json"),
    (False, False, "application/vnd.docker.distribution.manifest.list.v2+json"),
])
def test_artifact_forms(image_manifest: bool, oci: bool, media_type: str) -> None:
    data, blobs = encode_cache_config([RAN])
    body, kind = cache_artifact(data, _digest("config"), blobs, image_manifest=image_manifest,
                                oci=oci)
    raw = json.loads(body)
    assert kind == raw["mediaType"] == media_type
    if image_manifest:
        assert raw["config"]["mediaType"] == CACHE_CONFIG_MEDIA
        entries = raw["layers"]
    else:
        assert raw["manifests"][-1]["mediaType"] == CACHE_CONFIG_MEDIA
        entries = raw["manifests"][:-1]
    described = layer_descriptors(entries)
    assert [described[blob.digest].diff_id for blob in blobs] == [
        BASE.diff_id, COPY.diff_id, RUN.diff_id]
    assert (entries[0]["mediaType"] == BASE.media_type) is oci


def test_inline_value_is_read_back_from_an_image_config() -> None:
    image = [BASE, COPY, RUN]
    config = json.dumps({"os": "linux", INLINE_CACHE_KEY: inline_value([COPIED, RAN], image)})
    found = read_inline(config.encode(), image, "img")
    assert found is not None and found.records == {COPIED.key: COPIED, RAN.key: RAN}
    assert read_inline(b'{"os": "linux"}', [], "img") is None
    with pytest.raises(CacheError, match="the inline cache of img is malformed"):
        read_inline(json.dumps({INLINE_CACHE_KEY: "%%%"}).encode(), [], "img")
    with pytest.raises(ValueError, match="not in the image's layer chain"):
        inline_value([RAN], [BASE, RUN])


def test_inline_value_is_buildkits_records_table() -> None:
    """BuildKit's inline cache is the records array alone, layers indexing the image's."""
    entries = json.loads(base64.b64decode(inline_value([COPIED, RAN], [BASE, COPY, RUN])))
    assert isinstance(entries, list)
    assert {entry["digest"]: entry["layers"][0]["layer"] for entry in entries} == {
        COPIED.key: 1, RAN.key: 2}


def test_a_buildkit_inline_cache_is_read_and_none_of_it_is_used() -> None:
    """What BuildKit 20.10 wrote with BUILDKIT_INLINE_CACHE=1 (its shape, keys made up):
    roots without results, records linked to their inputs, no ``dockyard`` part."""
    entries = [{"digest": _digest("root")},
               {"digest": _digest("copy"), "layers": [{"layer": 1, "createdAt": "t"}],
                "inputs": [[{"link": 0}]]},
               {"digest": _digest("run"), "layers": [{"layer": 2}], "inputs": [[{"link": 1}]]}]
    value = base64.b64encode(json.dumps(entries).encode()).decode()
    found = read_inline(json.dumps({INLINE_CACHE_KEY: value}).encode(), [BASE, COPY, RUN],
                        "img")
    assert found is not None and found.records == {} and found.foreign == 3
