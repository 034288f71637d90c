"""A build context as a manifest: what a worker without the client's disk knows of it.

The client walks its context (``walk_context``, after the ignore patterns) and hashes its
regular files (``build_manifest``); the manifest travels in the build request as plain
msgpack data (``to_wire``/``from_wire``), and the worker computes every context checksum
from it exactly as from the directory (``ManifestContext``), fetching only the file
contents its ``ContextStore`` lacks.

Wire form, version 1 (a map)::

    {"v": 1,
     "patterns": [ignore pattern, ...],          # the patterns the walk applied
     "entries": [[path, mode, size, linkname, mtime_ns, sha256], ...]}   # walk order

``path`` is relative and slash-separated; ``mode`` the full ``st_mode``; ``size`` the byte
size of a regular file (0 otherwise); ``linkname`` a symlink's target (None otherwise);
``mtime_ns`` the entry's own modification time; ``sha256`` the hex digest of a regular
file's content (None otherwise).  A path or link target that is not UTF-8 travels as
bytes (``os.fsencode``), any other as a string.

A manifest is client data: ``from_wire`` checks every field, and refuses a path that is
absolute, holds ``.``/``..``/empty components, repeats, or lies under an entry that is not
a directory listed before it (so materialising it can never write outside its
destination, nor through a symlink).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.scheduler._errors import SolveError

from ._context_digest import ContextDigests
from ._context_walk import ContextEntry, name_from_wire, name_to_wire, walk_context

__all__ = ["MANIFEST_VERSION", "ContextManifest", "ManifestEntry", "build_manifest",
           "name_from_wire", "name_to_wire"]

MANIFEST_VERSION = 1
#: Threads hashing the files of one manifest (hashlib releases the GIL on large reads).
HASH_THREADS = 4
_HEX = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("path", "mode", "size", "linkname", "mtime_ns", "sha256")


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One entry of a manifest: a ``ContextEntry`` with its mtime and content digest."""

    path: str
    mode: int
    size: int
    linkname: str | None
    mtime_ns: int
    sha256: str | None  # hex, regular files only

    @property
    def entry(self) -> ContextEntry:
        return ContextEntry(self.path, self.mode, self.size, self.linkname)


@dataclass(frozen=True, slots=True)
class ContextManifest:
    """The included entries of a context in walk order, and the patterns of that walk."""

    entries: tuple[ManifestEntry, ...]
    patterns: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (f"<ContextManifest entries={len(self.entries)} files={len(self.digests())} "
                f"bytes={self.total_size()}>")

    def digests(self) -> set[str]:
        """The content digests of the regular files (hex)."""
        return {entry.sha256 for entry in self.entries if entry.sha256 is not None}

    def total_size(self) -> int:
        return sum(entry.size for entry in self.entries)

    def to_wire(self) -> dict[str, Any]:
        return {"v": MANIFEST_VERSION, "patterns": list(self.patterns),
                "entries": [[name_to_wire(e.path), e.mode, e.size,
                             None if e.linkname is None else name_to_wire(e.linkname),
                             e.mtime_ns, e.sha256] for e in self.entries]}

    @classmethod
    def from_wire(cls, data: Any) -> ContextManifest:
        """The manifest ``data`` holds; anything else raises ``SolveError`` saying what."""
        if not isinstance(data, dict):
            raise _malformed(f"a {type(data).__name__}, not a map")
        if data.get("v") != MANIFEST_VERSION:
            raise _malformed(f"version {data.get('v')!r} (this dockyard reads "
                             f"{MANIFEST_VERSION})", hint="use the same dockyard version "
                             "on the client and the cluster")
        patterns = data.get("patterns")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise _malformed("'patterns' is not a list of strings")
        raw = data.get("entries")
        if not isinstance(raw, list):
            raise _malformed("'entries' is not a list")
        return cls(tuple(_checked_entries(raw)), tuple(patterns))


def build_manifest(context_dir: Path, patterns: Sequence[str], *,
                   digests: ContextDigests | None = None,
                   threads: int = HASH_THREADS) -> ContextManifest:
    """The manifest of ``context_dir`` after the ignore ``patterns`` (on the client).

    File digests come from ``digests`` (the context's stat index, made before this walk)
    when a file's stat is unchanged; only the other files are read, in ``threads``.
    Raises what ``walk_context`` raises, and ``SolveError`` naming a file that cannot be
    read or vanished during the walk.
    """
    digests = ContextDigests(context_dir) if digests is None else digests
    entries = list(walk_context(context_dir, patterns))
    files = [entry for entry in entries if entry.is_file]
    found = {entry.path: digests.known(entry.path, entry.info) for entry in files}
    missing = [entry for entry in files if found[entry.path] is None]
    if missing:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(missing))),
                                thread_name_prefix="dockyard-hash") as pool:
            hashed = pool.map(lambda e: digests.digest(e.path, e.info), missing)
            found.update(zip((entry.path for entry in missing), hashed, strict=True))
    return ContextManifest(tuple(_describe(context_dir, entry, found.get(entry.path))
                                 for entry in entries), tuple(patterns))


def _describe(root: Path, entry: ContextEntry, digest: str | None) -> ManifestEntry:
    try:
        info = os.lstat(root / entry.path) if entry.info is None else entry.info
    except OSError as err:
        raise SolveError(f"cannot read {entry.path!r} in the build context {root}: "
                         f"{err.strerror}") from None
    return ManifestEntry(entry.path, entry.mode, entry.size, entry.linkname,
                         info.st_mtime_ns, digest)


# -- the wire form --


def _malformed(what: str, hint: str | None = None) -> SolveError:
    return SolveError(f"malformed build context manifest: {what}",
                      hint=hint or "the client sent a context manifest this dockyard "
                      "cannot read; use the same dockyard version on both sides")


def _checked_entries(raw: list[Any]) -> Iterator[ManifestEntry]:
    dirs: set[str] = {""}
    seen: set[str] = set()
    for index, item in enumerate(raw):
        entry = _checked_entry(index, item)
        parent = entry.path.rpartition("/")[0]
        if entry.path in seen:
            raise _malformed(f"entry {index} repeats the path {entry.path!r}")
        if parent not in dirs:
            raise _malformed(f"entry {index} ({entry.path!r}) is not under a directory "
                             "listed before it")
        seen.add(entry.path)
        if stat.S_ISDIR(entry.mode):
            dirs.add(entry.path)
        yield entry


def _checked_entry(index: int, item: Any) -> ManifestEntry:
    if not isinstance(item, list | tuple) or len(item) != len(_FIELDS):
        raise _malformed(f"entry {index} is not a list of {len(_FIELDS)} fields "
                         f"({', '.join(_FIELDS)})")
    path, mode, size, linkname, mtime_ns, digest = item
    name = name_from_wire(path)
    if name is None or not _clean_path(name):
        raise _malformed(f"entry {index} has the path {path!r} (a relative path without "
                         "'.', '..' or empty parts is expected)")
    if not (type(mode) is int and type(size) is int and type(mtime_ns) is int
            and mode >= 0 and size >= 0 and mtime_ns >= 0):  # one test per entry, and bool
        for field, value in (("mode", mode), ("size", size), ("mtime_ns", mtime_ns)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _malformed(f"entry {index} ({name!r}) has the {field} {value!r}")
    return _typed_entry(index, ManifestEntry(name, mode, size, _link(index, name, linkname),
                                             mtime_ns, digest))


def _link(index: int, name: str, linkname: Any) -> str | None:
    if linkname is None:
        return None
    target = name_from_wire(linkname)
    if target is None or "\0" in target:
        raise _malformed(f"entry {index} ({name!r}) has the link target {linkname!r}")
    return target


def _typed_entry(index: int, entry: ManifestEntry) -> ManifestEntry:
    """``entry`` when its fields agree with its type (size, digest, link target)."""
    regular, link = stat.S_ISREG(entry.mode), stat.S_ISLNK(entry.mode)
    if regular != isinstance(entry.sha256, str) or (
            regular and not _HEX.fullmatch(str(entry.sha256))):
        raise _malformed(f"entry {index} ({entry.path!r}) has the sha256 {entry.sha256!r}")
    if not regular and entry.size:
        raise _malformed(f"entry {index} ({entry.path!r}) is not a regular file but has "
                         f"the size {entry.size}")
    if link != (entry.linkname is not None):
        raise _malformed(f"entry {index} ({entry.path!r}) has the link target "
                         f"{entry.linkname!r} for the mode {entry.mode:o}")
    return entry


def _clean_path(path: str) -> bool:
    parts = path.split("/")  # list scans in C: the walk of 100,000 entries checks each
    return bool(path) and "\0" not in path and "" not in parts and "." not in parts \
        and ".." not in parts
