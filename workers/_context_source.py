"""The build context as a source: what the client's directory holds once the ignore
patterns are applied, its content checksums, and its files materialised as one layer.

- ``LocalContext(root, exclude)`` lists the included entries once (``_context_walk``'s
  walk, BuildKit's rules) and hashes file contents lazily, each file at most once.  The
  worker process remembers file digests across builds (``_DigestCache``), keyed by all
  that stat says of the file (device, inode, size, mtime and ctime in ns): any write
  changes the ctime, so a changed file misses and is hashed again.  A file changed in the
  last ``_RACY_NS`` is never remembered (an edit within one timestamp tick of the hash
  would keep its stat: git's "racily clean" rule).
- ``checksum()`` is the context's pinned identity: sha256 over every included entry's path,
  type, permission bits, size and content (or symlink target).  Never mtimes, owners or
  host paths, so the same files give the same identity on any machine.
- ``selector_checksum(selector)`` is what one copy reads: the entries a ``Selector`` names
  (a path, or a wildcard matched component by component, as Go's ``filepath.Match``),
  with everything under them.  A wildcard matching nothing reads nothing (one fixed
  checksum), as BuildKit's content hash: whether that is allowed is the copy's
  ``allow_empty_wildcard``, checked when the op runs.  A plain path matching nothing
  fails here, at key time, as BuildKit's ``"/missing.txt": not found``.
- ``materialise(dest)`` copies the included entries into ``dest`` owned by 0:0 (as
  BuildKit's client sends them), keeping modes (setuid, setgid and sticky bits included)
  and mtimes (a symlink's own).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from scheduler._cachekey import Selector
from scheduler._errors import DockyardError, SolveError
from scheduler.dockerfile._dockerignore import PatternMatcher

from ._context_walk import ContextEntry, walk_context

__all__ = ["LocalContext"]

_GLOB = frozenset("*?[")
_MAX_HOPS = 40
#: What a wildcard matching nothing reads (BuildKit: the digest of no bytes).
_NOTHING = "sha256:" + hashlib.sha256(b"").hexdigest()
#: A file whose mtime or ctime is this recent is hashed every time (timestamps advance in
#: ticks: an edit within the tick of an earlier hash could leave the stat unchanged).
_RACY_NS = 2_000_000_000

_StatKey = tuple[str, int, int, int, int, int]  # path, dev, inode, size, mtime_ns, ctime_ns


def _stat_key(path: Path, info: os.stat_result) -> _StatKey:
    return (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
            info.st_ctime_ns)


class _DigestCache:
    """File content digests by ``_StatKey``, least recently used dropped past ``limit``;
    shared by the builds of one worker process (their hashing threads included)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._digests: OrderedDict[_StatKey, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _StatKey) -> str | None:
        with self._lock:
            digest = self._digests.get(key)
            if digest is not None:
                self._digests.move_to_end(key)
            return digest

    def put(self, key: _StatKey, digest: str, now_ns: int) -> None:
        """Remember ``digest`` unless the file changed within ``_RACY_NS`` of ``now_ns``."""
        if now_ns - max(key[4], key[5]) <= _RACY_NS:
            return
        with self._lock:
            self._digests[key] = digest
            self._digests.move_to_end(key)
            while len(self._digests) > self.limit:
                self._digests.popitem(last=False)

    def __len__(self) -> int:
        return len(self._digests)


_DIGESTS = _DigestCache()


class LocalContext:
    """The included entries of one context directory, by slash-separated relative path."""

    def __init__(self, root: Path, exclude: Sequence[str] = ()) -> None:
        self.root = root
        self.exclude = tuple(exclude)
        # Relative path -> entry, in walk order; filled on first use, never changes after.
        self._entries: dict[str, ContextEntry] | None = None
        # Relative path -> sha256 of the file's content; grows as files are hashed.
        self._hashes: dict[str, str] = {}

    def __repr__(self) -> str:
        count = "?" if self._entries is None else len(self._entries)
        return f"<LocalContext {self.root} entries={count} hashed={len(self._hashes)}>"

    @property
    def entries(self) -> dict[str, ContextEntry]:
        if self._entries is None:
            try:
                self._entries = {e.path: e for e in walk_context(self.root, self.exclude)}
            except OSError as err:
                raise SolveError(f"cannot read the build context {self.root}: "
                                 f"{err.strerror}") from None
        return self._entries

    def checksum(self) -> str:
        """The identity of the whole context (every included entry)."""
        digest = hashlib.sha256()
        for path in self.entries:
            digest.update(self._entry_material(path, path))
        return "sha256:" + digest.hexdigest()

    def selector_checksum(self, selector: Selector) -> str:
        """The checksum of what a copy with ``selector`` reads."""
        roots = self.match(selector)
        if not roots and _is_pattern(selector):
            return _NOTHING  # the copy may allow it (allow_empty_wildcard); its op decides
        if not roots:
            raise SolveError(f'"{selector.path}": not found',
                             hint="check the path exists in the build context and is not "
                                  "excluded by .dockerignore")
        digest = hashlib.sha256()
        for root in roots:
            digest.update(b"root\0" + root.encode() + b"\0")
            for path, shown in self._under(root, selector):
                digest.update(self._entry_material(path, shown))
        return "sha256:" + digest.hexdigest()

    def match(self, selector: Selector) -> list[str]:
        """The relative paths ``selector`` names ("" is the context's root)."""
        wanted = posixpath.normpath("/" + selector.path).lstrip("/")
        if wanted in ("", "."):
            return [""]
        if _is_pattern(selector):
            found = [p for p in self.entries if _glob_match(wanted, p)]
        else:
            found = [wanted] if wanted in self.entries else []
        if selector.follow_symlinks:
            found = [self._follow(p) for p in found]
        return sorted(p for p in dict.fromkeys(found) if p == "" or p in self.entries)

    def materialise(self, dest: Path) -> None:
        """Copy the included entries into the existing directory ``dest``, owned by 0:0."""
        try:
            for path, entry in self.entries.items():
                _place(self.root / path, dest / path, entry)
            for path, entry in reversed(self.entries.items()):
                if entry.is_dir:
                    _finish_dir(self.root / path, dest / path)
        except OSError as err:
            raise SolveError(f"cannot copy {err.filename} from the build context: "
                             f"{err.strerror}") from None

    # -- helpers --

    def _follow(self, path: str) -> str:
        for _ in range(_MAX_HOPS):
            entry = self.entries.get(path)
            if entry is None or not entry.is_symlink or entry.linkname is None:
                return path
            base = posixpath.dirname(path)
            target = posixpath.join("/" + base, entry.linkname)
            path = posixpath.normpath(target).lstrip("/")
        raise SolveError(f'"/{path}": too many levels of symbolic links in the build context')

    def _under(self, root: str, selector: Selector) -> Iterable[tuple[str, str]]:
        """``(path, path shown relative to root)`` for root and every entry under it."""
        filters = _Filters(selector.include, selector.exclude)
        prefix = root + "/" if root else ""
        if root:
            yield root, ""
        for path in self.entries:
            if path.startswith(prefix) and path != root:
                relative = path[len(prefix):]
                if filters.keeps(relative):
                    yield path, relative

    def _entry_material(self, path: str, shown: str) -> bytes:
        entry = self.entries.get(path)
        if entry is None:  # the root of the context
            return b"dir\0\0"
        kind = stat.S_IFMT(entry.mode)
        if entry.is_symlink:
            body = entry.linkname or ""
        elif stat.S_ISREG(entry.mode):
            body = self._file_hash(path)
        else:
            body = ""
        fields = (shown, str(kind), oct(stat.S_IMODE(entry.mode)), str(entry.size), body)
        return "\0".join(fields).encode("utf-8", "surrogateescape") + b"\n"

    def _file_hash(self, path: str) -> str:
        known = self._hashes.get(path)
        if known is None:
            known = self._hashes[path] = _hash_file(self.root, path)
        return known


def _hash_file(root: Path, path: str, cache: _DigestCache = _DIGESTS,
               clock: Callable[[], int] = time.time_ns) -> str:
    """The sha256 of ``root/path``'s content, from ``cache`` while its stat is unchanged
    (``clock``: now, in the file timestamps' ns)."""
    full = root / path
    try:
        before = _stat_key(full, os.lstat(full))
        known = cache.get(before)
        if known is not None:
            return known
        digest = hashlib.sha256()
        with open(full, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
            after = _stat_key(full, os.fstat(stream.fileno()))
    except OSError as err:
        raise SolveError(f"cannot read {path!r} in the build context {root}: "
                         f"{err.strerror}") from None
    if after == before:  # not changed while it was read
        cache.put(before, digest.hexdigest(), clock())
    return digest.hexdigest()


class _Filters:
    """A copy's ``--include``/``--exclude`` patterns over paths relative to its source."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        try:
            self._include = PatternMatcher(include) if include else None
            self._exclude = PatternMatcher(exclude) if exclude else None
        except DockyardError as err:
            raise SolveError(f"invalid copy pattern: {err.message}") from None

    def keeps(self, relative: str) -> bool:
        if self._exclude is not None and self._exclude.matches(relative):
            return False
        if self._include is None:
            return True
        return self._include.matches(relative) or _has_included_below(relative,
                                                                     self._include)


def _has_included_below(relative: str, include: PatternMatcher) -> bool:
    """A directory stays when one of the include patterns may match under it."""
    return any(p.startswith(relative + "/") or _GLOB & set(p) for p in include.patterns)


def _is_pattern(selector: Selector) -> bool:
    """A wildcard selector whose path holds a glob character (``*``, ``?``, ``[``)."""
    return selector.wildcard and bool(_GLOB & set(selector.path))


def _glob_match(pattern: str, path: str) -> bool:
    """Go's ``filepath.Match`` on slash-separated paths: ``*`` never crosses a ``/``."""
    wanted = pattern.split("/")
    parts = path.split("/")
    if len(wanted) != len(parts):
        return False
    return all(fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts, wanted,
                                                                     strict=True))


def _place(source: Path, target: Path, entry: ContextEntry) -> None:
    """One entry at ``target``: owner 0:0 first, then the mode (a chown clears setuid and
    setgid), then the times.  A directory's mode and times are set by ``_finish_dir``
    once its contents are in."""
    if entry.is_dir:
        target.mkdir(exist_ok=True)
        os.lchown(target, 0, 0)
    elif entry.is_symlink:
        os.symlink(entry.linkname or "", target)
        os.lchown(target, 0, 0)
        _same_times(source, target)  # the link's own times (utime without following)
    elif stat.S_ISREG(entry.mode):
        shutil.copyfile(source, target, follow_symlinks=False)
        os.lchown(target, 0, 0)
        os.chmod(target, stat.S_IMODE(entry.mode))
        _same_times(source, target)
    # sockets, fifos and devices are not sent, as BuildKit's client does


def _finish_dir(source: Path, target: Path) -> None:
    os.chmod(target, stat.S_IMODE(os.lstat(source).st_mode))
    _same_times(source, target)


def _same_times(source: Path, target: Path) -> None:
    info = os.lstat(source)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
