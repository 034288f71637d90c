"""A vertex's result stays a snapshot (issue 10): the upper dir of a RUN or a file op, and
the staged tree of a context, are moved into the snapshot store as their layer; no layer a
build made is ever unpacked from its blob on the machine that made it.  What the next
step sees is what the blob unpacks to: for every layer of the build, its snapshot and a
fresh unpack of its blob hold the same entries (types, modes, owners, whole-second
mtimes, contents, link targets, whiteouts, opaque directories).  Mtimes past
SOURCE_DATE_EPOCH are clamped in the blob only: the build's own steps see the times its
files got, as BuildKit's do (it rewrites timestamps when it exports)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

import dockyard.workers._runtime as runtime_module
from dockyard.cluster._local_build import LocalBuildOptions, LocalBuildResult, Output, build_local
from dockyard.scheduler._platform import parse_platform
from dockyard.workers._context_source import Materialised
from dockyard.workers._image import ImageArtifacts
from dockyard.workers._layers import unpack_layer, write_layer
from dockyard.workers._runtime import WorkerRuntime

EPOCH = 1_700_000_000
DOCKERFILE = """\
FROM {base}
COPY . /ctx/
RUN mkdir -p /data/keep /data/gone && echo one > /data/keep/a && echo two > /data/gone/b \\
 && ln -s keep/a /data/link && ln /data/keep/a /data/hard && chmod 4755 /data/keep/a \\
 && mkfifo /data/fifo && chown 12:34 /data/keep
RUN rm -rf /data/gone /ctx/sub && rm /data/link && mkdir /data/gone \\
 && echo three > /data/gone/c && rm /bin/true
"""


def _unpacks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The diff_ids the runtime unpacks from blobs from now on."""
    seen: list[str] = []

    def counting(blob: Any, dest: Path, **kwargs: Any) -> str:
        diff_id = unpack_layer(blob, dest, **kwargs)
        seen.append(diff_id)
        return diff_id

    monkeypatch.setattr(runtime_module, "unpack_layer", counting)
    return seen


def _build(context: Path, root: Path, base: str, out: Path) -> LocalBuildResult:
    options = LocalBuildOptions(root=root, platforms=(parse_platform("linux/amd64"),),
                                outputs=(Output("oci", out),), epoch=EPOCH)
    return asyncio.run(build_local(DOCKERFILE.format(base=base).encode(), context, options))


def _describe(root: Path, epoch: int = EPOCH) -> list[str]:
    """One line per entry below ``root``: what a layer records of it (mtimes clamped
    to ``epoch``)."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            line = (f"{path.relative_to(root)} {kind:o} {stat.S_IMODE(info.st_mode):o} "
                    f"{info.st_uid}:{info.st_gid} {min(int(info.st_mtime), epoch)}")
            if stat.S_ISREG(info.st_mode):
                line += " " + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            elif stat.S_ISLNK(info.st_mode):
                line += " -> " + os.readlink(path)
            elif stat.S_ISCHR(info.st_mode):
                line += f" rdev={info.st_rdev}"
            elif stat.S_ISDIR(info.st_mode):
                names = os.listxattr(path, follow_symlinks=False)
                if "trusted.overlay.opaque" in names:
                    line += " opaque=" + os.getxattr(path, "trusted.overlay.opaque").decode()
            lines.append(line)
    return sorted(lines)


def _small_context(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    (context / "sub").mkdir(parents=True)
    (context / "sub" / "f.txt").write_text("in a directory\n")
    (context / "top.txt").write_text("top\n")
    return context


def test_a_build_unpacks_only_its_base_and_each_snapshot_is_its_blob(
        tmp_path: Path, busybox_image: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    context = _small_context(tmp_path)
    root = tmp_path / "root"
    unpacked = _unpacks(monkeypatch)

    result = _build(context, root, busybox_image.reference, tmp_path / "first.tar")
    assert isinstance(result.exported, ImageArtifacts)
    base_layers = {image.diff_id for image in busybox_image.platforms.values()}
    assert unpacked and set(unpacked) <= base_layers  # the base's layers, nothing else

    # each layer's snapshot is what its blob unpacks to
    runtime = WorkerRuntime(root)
    try:
        made = [layer for layer in result.exported.layers
                if layer.diff_id not in base_layers]
        assert len(made) == 3  # COPY, RUN, RUN
        for layer in made:
            fresh = tmp_path / ("fresh-" + layer.diff_id[7:19])
            with runtime.blob_source().open_blob(layer.digest) as blob:
                assert unpack_layer(blob, fresh, media_type=layer.media_type,
                                    expected_digest=layer.digest) == layer.diff_id
            kept = runtime.snapshots.layer_dir(layer.diff_id)
            assert _describe(kept) == _describe(fresh)
    finally:
        asyncio.run(runtime.aclose())

    # the second build is all cached: it unpacks nothing and gives the same image
    unpacked.clear()
    again = _build(context, root, busybox_image.reference, tmp_path / "again.tar")
    assert isinstance(again.exported, ImageArtifacts)
    assert unpacked == []
    assert again.exported.manifest_digest == result.exported.manifest_digest

    # a root of its own builds the same image
    other = _build(context, tmp_path / "other-root", busybox_image.reference,
                   tmp_path / "other.tar")
    assert isinstance(other.exported, ImageArtifacts)
    assert other.exported.manifest_digest == result.exported.manifest_digest


def _context_image(context: Path, root: Path, out: Path,
                   runtime: WorkerRuntime | None = None) -> str:
    options = LocalBuildOptions(root=root, platforms=(parse_platform("linux/amd64"),),
                                outputs=(Output("oci", out),), epoch=EPOCH)
    built = asyncio.run(build_local(b"FROM scratch\nCOPY . /ctx/\n", context, options,
                                    runtime=runtime))
    assert isinstance(built.exported, ImageArtifacts)
    return built.exported.manifest_digest


def test_a_context_change_is_a_layer_of_what_changed_on_the_last_tree(
        tmp_path: Path) -> None:
    context = tmp_path / "context"
    for d in range(5):
        (context / f"d{d}").mkdir(parents=True)
        for f in range(10):
            (context / f"d{d}" / f"f{f}").write_text(f"{d}/{f}\n")
    root = tmp_path / "root"

    async def open_runtime() -> WorkerRuntime:
        return WorkerRuntime(root)
    runtime = asyncio.run(open_runtime())
    try:
        _context_image(context, root, tmp_path / "one.tar", runtime)
        (context / "d3" / "f7").write_text("changed\n")
        (context / "d1" / "f1").unlink()
        image = _context_image(context, root, tmp_path / "two.tar", runtime)
        tree = runtime.context_trees["local://context"]
        assert len(tree.layers) == 2
        top = runtime.snapshots.layer_dir(tree.layers[-1].diff_id)
        assert sorted(p.relative_to(top).as_posix() for p in top.rglob("*")) == [
            "d1", "d1/f1", "d3", "d3/f7"]  # d1/f1: its whiteout
        assert stat.S_ISCHR(os.lstat(top / "d1" / "f1").st_mode)
        # the same image as a root that never saw the first context
        assert _context_image(context, tmp_path / "fresh", tmp_path / "fresh.tar") == image

        # the last tree's layers pruned meanwhile: the next change is a whole tree again
        for layer in tree.layers:
            shutil.rmtree(runtime.snapshots.layer_dir(layer.diff_id))
            (root / "cache" / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")).unlink()
        (context / "d0" / "f0").write_text("again\n")
        image = _context_image(context, root, tmp_path / "three.tar", runtime)
        assert len(runtime.context_trees["local://context"].layers) == 1
        assert _context_image(context, tmp_path / "fresh2", tmp_path / "f2.tar") == image
    finally:
        asyncio.run(runtime.aclose())


def test_a_restarted_worker_starts_from_the_tree_the_last_one_made(tmp_path: Path) -> None:
    context = tmp_path / "context"
    (context / "d").mkdir(parents=True)
    for f in range(10):
        (context / "d" / f"f{f}").write_text(f"{f}\n")
    (context / "d" / "caf\udce9").write_text("a name that is not UTF-8\n")
    root = tmp_path / "root"
    _context_image(context, root, tmp_path / "one.tar")  # its own runtime, closed after
    (context / "d" / "f1").write_text("changed\n")

    async def second() -> Materialised:
        runtime = WorkerRuntime(root)
        try:
            await build_local(b"FROM scratch\nCOPY . /ctx/\n", context,
                              LocalBuildOptions(root=root, epoch=EPOCH), runtime=runtime)
            tree = runtime.context_trees["local://context"]
            assert Materialised.from_wire(tree.to_wire(), runtime.snapshots.layer_dir) == tree
            return tree
        finally:
            await runtime.aclose()
    tree = asyncio.run(second())
    assert len(tree.layers) == 2  # the first tree, and what changed on it
    assert "d/caf\udce9" in tree.entries

    for damaged in ({"v": 2}, {"v": 1, "layers": [], "entries": []}, [], {"v": 1}):
        assert Materialised.from_wire(damaged, lambda diff_id: tmp_path) is None


def _compressions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The diff_ids the runtime compresses from now on."""
    made: list[str] = []
    original = WorkerRuntime._compress

    def counting(self: WorkerRuntime, layer: Any, out: Any, *args: Any) -> Any:
        made.append(layer.diff_id)
        return original(self, layer, out, *args)

    monkeypatch.setattr(WorkerRuntime, "_compress", counting)
    return made


def test_a_layer_is_compressed_when_an_output_needs_it_once_as_at_its_step(
        tmp_path: Path, busybox_image: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build without outputs compresses nothing (its layers stay uncompressed blobs);
    the first image output gzips each layer the build made, to the bytes gzip of its
    snapshot at the step gives (the digests before this change); the next reuses them."""
    context = _small_context(tmp_path)
    root = tmp_path / "root"
    compressed = _compressions(monkeypatch)
    options = LocalBuildOptions(root=root, platforms=(parse_platform("linux/amd64"),),
                                epoch=EPOCH)
    dockerfile = DOCKERFILE.format(base=busybox_image.reference).encode()
    quiet = asyncio.run(build_local(dockerfile, context, options))
    assert compressed == []
    assert set(quiet.metadata) - {"dockyard.context.bytes-hashed"} == {
        "containerimage.config.digest"}  # no manifest: nothing was written
    made = [layer for record in quiet.records.values() for layer in record.result.layers
            if layer.media_type == "application/vnd.oci.image.layer.v1.tar"]
    assert len(made) == 3

    result = _build(context, root, busybox_image.reference, tmp_path / "out.tar")
    assert isinstance(result.exported, ImageArtifacts)
    assert sorted(compressed) == sorted(layer.diff_id for layer in made)
    assert result.metadata["containerimage.config.digest"] == \
        quiet.metadata["containerimage.config.digest"]
    runtime = WorkerRuntime(root)
    try:
        for layer in result.exported.layers[-3:]:
            assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
            with open(tmp_path / "again.gz", "wb") as out:
                at_step = write_layer(runtime.snapshots.layer_dir(layer.diff_id), out,
                                      compression="gzip", epoch=EPOCH)
            assert at_step == layer
    finally:
        asyncio.run(runtime.aclose())

    compressed.clear()
    again = _build(context, root, busybox_image.reference, tmp_path / "again.tar")
    assert isinstance(again.exported, ImageArtifacts)
    assert compressed == []  # kept from the first output
    assert again.exported.manifest_digest == result.exported.manifest_digest
