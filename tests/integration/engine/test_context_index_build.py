"""A build that reads its context directory itself (``build_local``: the worker's
``LocalContext``) keeps the directory's stat index under its root: after a one-file
change in a 10,000-file context it reads that one file, and the index never changes a
checksum (a fresh root, without an index, builds the same image)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from dockyard.cluster._context import CONTEXT_HASHED_KEY
from dockyard.cluster._local_build import LocalBuildOptions, LocalBuildResult, Output, build_local
from dockyard.workers._context_digest import RACY_NS
from dockyard.workers._image import ImageArtifacts

EPOCH = 1_700_000_000
DOCKERFILE = b"FROM scratch\nCOPY d42/ /d42/\n"


def _many_files(context: Path, dirs: int = 100, files: int = 100) -> int:
    """``dirs`` x ``files`` small files in ``context``; their bytes."""
    for d in range(dirs):
        (context / f"d{d:02d}").mkdir(parents=True)
        for f in range(files):
            (context / f"d{d:02d}" / f"f{f:02d}.txt").write_text(f"file {d}/{f}\n")
    return sum(p.stat().st_size for p in context.rglob("*") if p.is_file())


def _build(context: Path, root: Path, name: str) -> tuple[LocalBuildResult, str]:
    out = root.parent / f"{name}.tar"
    options = LocalBuildOptions(root=root, outputs=(Output("oci", out),), epoch=EPOCH)
    result = asyncio.run(build_local(DOCKERFILE, context, options))
    assert isinstance(result.exported, ImageArtifacts)
    return result, result.exported.manifest_digest


def test_a_one_file_change_is_the_only_file_hashed(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    total = _many_files(context)
    time.sleep(RACY_NS / 1e9 + 0.1)  # past the racy window: the first build remembers all
    first, _ = _build(context, tmp_path / "root", "first")
    assert first.metadata[CONTEXT_HASHED_KEY] == total

    (context / "d42" / "f42.txt").write_text("changed\n")
    second, image = _build(context, tmp_path / "root", "second")
    assert second.metadata[CONTEXT_HASHED_KEY] == len("changed\n")
    assert second.statistics.executed > 0

    fresh, fresh_image = _build(context, tmp_path / "fresh-root", "fresh")
    assert fresh.metadata[CONTEXT_HASHED_KEY] == total - len("file 42/42\n") + len("changed\n")
    assert fresh_image == image
