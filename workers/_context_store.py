"""Context file contents on a worker, by sha256: what a worker keeps of its clients'
contexts between builds, so a rebuild after a one-file change fetches one file.

Layout, under the worker's root::

    <root>/contexts/sha256/<hex>      a file's content, named by its sha256 (read only)
    <root>/contexts/tmp/<random>      contents being written (same filesystem)

A content is written to ``tmp``, hashed on the way, checked against the digest it was
announced with (a mismatch removes it and raises ``SolveError`` naming the context path),
fsynced and renamed into place: a reader sees all of it or nothing, and two writers of one
digest each publish identical bytes.  Nothing here knows which build or client a content
came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from dockyard.scheduler._errors import CacheError, SolveError

__all__ = ["ContextStore", "PendingContent"]

_HEX = re.compile(r"[0-9a-f]{64}")
#: ``missing`` lists the store instead of stating each content from this many digests.
_LISTING_FROM = 256


class ContextStore:
    """File contents by sha256 hex under ``<root>/contexts`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root / "contexts"
        self.contents = self.root / "sha256"
        self.tmp = self.root / "tmp"
        for path in (self.contents, self.tmp):
            path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"<ContextStore {self.root}>"

    def path(self, digest: str) -> Path:
        """Where the content of ``digest`` is (or would be) kept."""
        if not _HEX.fullmatch(digest):
            raise CacheError(f"{digest!r} is not a sha256 hex digest of a context file")
        return self.contents / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def missing(self, digests: Iterable[str]) -> set[str]:
        """The digests of ``digests`` whose content is not here.  Many are answered from
        one listing of the store (a 100,000-file context's stats took 1 s a build)."""
        wanted = set(digests)
        if len(wanted) <= _LISTING_FROM:
            return {digest for digest in wanted if not self.has(digest)}
        for digest in wanted:
            self.path(digest)  # each checked, as ``has`` checks it
        return wanted - set(os.listdir(self.contents))

    def add(self, digest: str, chunks: Iterable[bytes], name: str = "") -> Path:
        """Keep ``chunks`` (all of a content) as ``digest``; see ``PendingContent``."""
        with self.pending(digest, name) as pending:
            for chunk in chunks:
                pending.write(chunk)
            return pending.publish()

    def pending(self, digest: str, name: str = "") -> PendingContent:
        """A content being written, to ``publish`` once complete; ``name`` (the context
        path) is what an error names.  As a context manager, it is discarded unless
        published."""
        return PendingContent(self, self.path(digest), name or digest)

    def usage(self) -> int:
        """Bytes the kept contents take (their sizes)."""
        total = 0
        with os.scandir(self.contents) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat(follow_symlinks=False).st_size
        return total


class PendingContent:
    """A content being written to the store's ``tmp``, hashed on the way."""

    def __init__(self, store: ContextStore, target: Path, name: str) -> None:
        self.target = target
        self.name = name
        fd, tmp = tempfile.mkstemp(prefix="content-", dir=store.tmp)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def __enter__(self) -> PendingContent:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.discard()

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def publish(self) -> Path:
        """Check the digest, then rename into place; a mismatch raises ``SolveError``."""
        self.file.flush()
        if self.digest.hexdigest() != self.target.name:
            self.discard()
            raise SolveError(
                f"the build context's {self.name!r} changed on the client during the build "
                f"(its content is not the sha256 {self.target.name} listed for it)",
                hint="build again once the files stop changing")
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.tmp, 0o444)
        os.replace(self.tmp, self.target)
        return self.target

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
