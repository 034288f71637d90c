"""A build whose context comes as a manifest, its files read through a reader (as a worker
on another machine gets it: cluster/_context_server.py on the client's side, msgpack in
between), gives the image the path-based build gives: same cache keys (a rebuild in the
same root runs nothing), same layers and digests in a fresh root (the context's modes and
mtimes included)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from dockyard.cluster._context import load_ignore_patterns
from dockyard.cluster._context_server import ContextServer
from dockyard.cluster._local_build import (
    LocalBuildOptions,
    LocalBuildResult,
    Output,
    build_local,
    build_session,
    prepared,
)
from dockyard.workers._context_fetch import ReadItem
from dockyard.workers._context_manifest import ContextManifest, build_manifest
from dockyard.workers._image import ImageArtifacts
from dockyard.workers._runtime import BuildSession

EPOCH = 1_700_000_000
DOCKERFILE = """\
FROM {base}
COPY . /ctx/
COPY *.txt /txt/
COPY --chmod=700 src/run.sh /bin/run
COPY link /via-link
"""


class Reader:
    """The client's ContextServer across msgpack; counts the bytes read."""

    def __init__(self, server: ContextServer) -> None:
        self.server = server
        self.bytes = 0

    async def read(self, name: str, items: Sequence[ReadItem]) -> list[bytes]:
        params = msgpack.unpackb(msgpack.packb({"name": name, "items": list(items)}))
        chunks: list[bytes] = msgpack.unpackb(msgpack.packb(self.server.read(params)))
        self.bytes += sum(len(chunk) for chunk in chunks)
        return chunks


def _context(root: Path) -> Path:
    (root / "src" / "deep").mkdir(parents=True)
    (root / "hello.txt").write_text("hello\n")
    (root / "other.txt").write_text("other\n")
    (root / "secret.key").write_text("not sent\n")
    (root / "src" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "src" / "deep" / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "src" / "setuid").write_text("s")
    (root / "src" / "setuid").chmod(0o4755)
    (root / "link").symlink_to("hello.txt")
    (root / "dangling").symlink_to("nowhere")
    (root / ".dockerignore").write_text("secret.key\n")
    for index, path in enumerate(sorted(root.rglob("*"))):
        os.utime(path, ns=(0, (1_600_000_000 + index) * 10**9), follow_symlinks=False)
    return root


def _options(root: Path, out: Path) -> LocalBuildOptions:
    out.mkdir(parents=True)
    # SOURCE_DATE_EPOCH: what a copy creates gets the epoch, not the time it ran (two
    # roots then agree); the context's own mtimes are older, so they are kept
    return LocalBuildOptions(root=root, outputs=(Output("oci", out / "image.tar"),),
                             epoch=EPOCH)


def _build(dockerfile: str, context: Path, options: LocalBuildOptions,
           session: BuildSession | None = None) -> LocalBuildResult:
    return asyncio.run(build_local(dockerfile.encode(), context, options, session=session))


def _manifest_session(context: Path, options: LocalBuildOptions
                      ) -> tuple[BuildSession, Reader]:
    """The worker's session with the context as a manifest, and no directory."""
    patterns, _ = load_ignore_patterns(context, context / "Dockerfile")
    wire = msgpack.packb(build_manifest(context, patterns).to_wire())
    manifest = ContextManifest.from_wire(msgpack.unpackb(wire))  # as the worker gets it
    reader = Reader(ContextServer(context, manifest))
    session = dataclasses.replace(build_session(context, prepared(options)), contexts={},
                                  manifests={"context": manifest}, context_reader=reader)
    return session, reader


def _manifest_build(dockerfile: str, context: Path, options: LocalBuildOptions
                    ) -> tuple[LocalBuildResult, Reader]:
    session, reader = _manifest_session(context, options)
    return _build(dockerfile, context, options, session), reader


def _image(result: LocalBuildResult) -> ImageArtifacts:
    assert isinstance(result.exported, ImageArtifacts)
    return result.exported


def test_a_manifest_context_builds_the_same_image(tmp_path: Path,
                                                  busybox_image: Any) -> None:
    context = _context(tmp_path / "context")
    dockerfile = DOCKERFILE.format(base=busybox_image.reference)
    by_path = _image(_build(dockerfile, context, _options(tmp_path / "a", tmp_path / "o1")))

    fresh, reader = _manifest_build(dockerfile, context,
                                    _options(tmp_path / "b", tmp_path / "o2"))
    assert fresh.statistics.executed > 0
    assert _image(fresh).layers == by_path.layers
    sent = sum(p.stat().st_size for p in context.rglob("*")
               if p.is_file() and not p.is_symlink() and p.name != "secret.key")
    assert reader.bytes == sent

    again, reader = _manifest_build(dockerfile, context,
                                    _options(tmp_path / "a", tmp_path / "o3"))
    assert again.statistics.executed == 0  # the same cache keys as the path-based build
    assert _image(again).manifest_digest == by_path.manifest_digest
    assert reader.bytes == 0  # nothing was materialised: nothing read

    (context / "hello.txt").write_text("changed\n")
    changed, reader = _manifest_build(dockerfile, context,
                                      _options(tmp_path / "b", tmp_path / "o4"))
    assert reader.bytes == len("changed\n")  # the store kept the rest
    assert _image(changed).manifest_digest != _image(fresh).manifest_digest
