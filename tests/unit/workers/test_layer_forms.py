"""The forms an output asks of a layer (issue 11): ``WorkerRuntime.compressed`` with a
``Compression`` (zstd, levels, uncompressed, force) and ``rewritten`` (rewrite-timestamp),
each made once and kept under its ``variant_key`` record; ``clamp_tar_times`` itself."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from dockyard.cache_backends._records import GZIP_LAYER, ZSTD_LAYER, LayerDescriptor
from dockyard.scheduler._build_request import Compression
from dockyard.scheduler._errors import LayerError
from dockyard.workers._build import _base_diff_ids, _rewritten
from dockyard.workers._layer_stream import TAR_LAYER, LayerSink
from dockyard.workers._layers import write_layer
from dockyard.workers._runtime import WorkerRuntime, variant_key
from dockyard.workers._tar_clamp import clamp_tar_times

EPOCH = 1000


def _tar(entries: list[tuple[str, int, bytes | None]], pax: dict[str, str] | None = None
         ) -> bytes:
    """A tar of (name, mtime, data: None for a directory), PAX format."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mtime, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size = len(data)
                info.pax_headers = dict(pax or {})
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return out.getvalue()


def _members(data: bytes) -> dict[str, tuple[float, bytes | None, dict[str, str]]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (m.mtime, tar.extractfile(m).read() if m.isfile() else None,  # type: ignore[union-attr]
                         dict(m.pax_headers)) for m in tar.getmembers()}


def test_clamp_sets_later_times_to_the_epoch() -> None:
    source = _tar([("d", 5000, None), ("d/new", 2000, b"new"), ("old", 10, b"old")],
                  pax={"atime": "3000.5"})
    out = io.BytesIO()
    assert clamp_tar_times(io.BytesIO(source), out, EPOCH) is True
    members = _members(out.getvalue())
    assert {name: m[0] for name, m in members.items()} == {"d": EPOCH, "d/new": EPOCH,
                                                           "old": 10}
    assert members["d/new"][1] == b"new" and members["old"][1] == b"old"
    assert members["d/new"][2]["atime"] == str(EPOCH)


def test_clamp_says_when_nothing_was_later() -> None:
    assert clamp_tar_times(io.BytesIO(_tar([("a", EPOCH, b"a")])), io.BytesIO(),
                           EPOCH) is False


def test_clamp_of_a_broken_tar_is_a_layer_error() -> None:
    with pytest.raises(LayerError):
        clamp_tar_times(io.BytesIO(b"not a tar" * 100), io.BytesIO(), EPOCH)


@pytest.mark.parametrize(("kind", "level"), [("gzip", 10), ("gzip", -1), ("zstd", 23)])
def test_sink_refuses_levels_out_of_range(kind: str, level: int) -> None:
    with pytest.raises(LayerError, match="level"):
        LayerSink(io.BytesIO(), kind, level)


def _plain(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


class Forms:
    """A runtime whose cache holds one uncompressed layer (``plain``) and the gzip form
    of another (``zipped``, as a base image's layer comes)."""

    def __init__(self, root: Path) -> None:
        self.runtime = WorkerRuntime(root)
        tree = root / "tree"
        tree.mkdir()
        (tree / "file").write_bytes(b"x" * 100_000)
        self.plain = self._store(tree, "none")
        (tree / "other").write_bytes(b"y" * 1000)
        self.zipped = self._store(tree, "gzip")

    def _store(self, tree: Path, compression: str) -> LayerDescriptor:
        out = io.BytesIO()
        layer = write_layer(tree, out, compression=compression)
        asyncio.run(self.runtime.cache.put_blob(layer.digest, out.getvalue()))
        return layer

    def blob(self, layer: LayerDescriptor) -> bytes:
        path = self.runtime.blob_source().blob_path(layer.digest)
        assert path is not None
        data = path.read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
        assert "sha256:" + hashlib.sha256(_plain(data)).hexdigest() == layer.diff_id
        return data

    def compressed(self, layer: LayerDescriptor,
                   compression: Compression | None) -> LayerDescriptor:
        return asyncio.run(self.runtime.compressed([layer], compression))[0]


@pytest.fixture
def forms(tmp_path: Path) -> Forms:
    return Forms(tmp_path)


def test_default_is_gzip_under_its_old_key(forms: Forms) -> None:
    made = forms.compressed(forms.plain, None)
    assert made.media_type == GZIP_LAYER and made.diff_id == forms.plain.diff_id
    forms.blob(made)
    record = asyncio.run(forms.runtime.cache.get_record(variant_key(made.diff_id, "gzip")))
    assert record is not None and record.result.layers == (made,)
    assert forms.compressed(forms.plain, Compression("gzip")) == made
    assert forms.compressed(forms.plain, Compression("gzip", 6)) == made  # the default level


def test_zstd_and_levels_are_kept_each(forms: Forms) -> None:
    fast = forms.compressed(forms.plain, Compression("zstd", 1))
    best = forms.compressed(forms.plain, Compression("zstd", 19))
    assert fast.media_type == best.media_type == ZSTD_LAYER
    assert fast.digest != best.digest and fast.diff_id == best.diff_id == forms.plain.diff_id
    forms.blob(fast)
    forms.blob(best)
    record = asyncio.run(forms.runtime.cache.get_record(variant_key(best.diff_id, "zstd-19")))
    assert record is not None and record.result.layers == (best,)


def test_compressed_layers_stay_unless_forced(forms: Forms) -> None:
    assert forms.compressed(forms.zipped, Compression("zstd")) == forms.zipped
    assert forms.compressed(forms.zipped, Compression("uncompressed")) == forms.zipped
    assert forms.compressed(forms.plain, Compression("uncompressed")) == forms.plain
    zstd = forms.compressed(forms.zipped, Compression("zstd", None, True))
    assert zstd.media_type == ZSTD_LAYER and zstd.diff_id == forms.zipped.diff_id
    forms.blob(zstd)
    tar = forms.compressed(forms.zipped, Compression("uncompressed", None, True))
    assert tar.media_type == TAR_LAYER and tar.digest == tar.diff_id == forms.zipped.diff_id
    forms.blob(tar)


def test_rewritten_clamps_once_and_keeps_an_unchanged_layer(forms: Forms) -> None:
    later = asyncio.run(forms.runtime.rewritten(forms.zipped, EPOCH))
    assert later.media_type == TAR_LAYER and later.diff_id != forms.zipped.diff_id
    assert max(m[0] for m in _members(forms.blob(later)).values()) <= EPOCH
    assert asyncio.run(forms.runtime.rewritten(forms.zipped, EPOCH)) == later
    assert asyncio.run(forms.runtime.rewritten(later, EPOCH)) == later
    far = 1 << 40  # no entry is later: the layer as it is
    assert asyncio.run(forms.runtime.rewritten(forms.plain, far)) == forms.plain


def test_rewrite_leaves_the_layers_shared_with_the_base(forms: Forms) -> None:
    """As BuildKit: the leading layers with the base image's diff_ids stay as they are
    (the image still shares them with its base), every layer after them is clamped."""
    layers = [forms.zipped, forms.plain]
    kept, clamped = asyncio.run(_rewritten(forms.runtime, layers, [forms.zipped.diff_id],
                                           EPOCH))
    assert kept == forms.zipped and clamped.diff_id != forms.plain.diff_id
    diverged = asyncio.run(_rewritten(forms.runtime, layers, ["sha256:" + "0" * 64], EPOCH))
    assert [layer.diff_id != old.diff_id for layer, old in zip(diverged, layers,
                                                                strict=True)] == [True, True]
    assert _base_diff_ids(b'{"rootfs":{"diff_ids":["sha256:a"]}}') == ["sha256:a"]
    assert _base_diff_ids(None) == _base_diff_ids(b"[1]") == _base_diff_ids(b"{") == []
