"""The build context as a source: what the client's directory holds once the ignore
patterns are applied, its content checksums, and its files materialised as one layer.

Two kinds, one behaviour (the checksums and matching are shared, ``_TreeContext``):
``LocalContext`` reads a directory on this machine; ``ManifestContext`` knows a client's
context by its manifest (workers/_context_manifest.py) and the worker's ``ContextStore``,
and gives byte for byte the checksums ``LocalContext`` gives on the client's directory.

- ``LocalContext(root, exclude, digests)`` lists the included entries once
  (``_context_walk``'s walk, BuildKit's rules) and hashes file contents lazily, each file
  at most once, through ``digests`` (``ContextDigests``, workers/_context_digest.py): the
  context directory's stat index, loaded by the runtime before the walk and saved after
  the build, so a file whose stat is unchanged since an earlier build is not read again
  (git's "racily clean" rule kept; see there).
- ``checksum()`` is the context's pinned identity: sha256 over every included entry's path,
  type, permission bits, size and content (or symlink target).  Never mtimes, owners or
  host paths, so the same files give the same identity on any machine.
- ``selector_checksum(selector)`` is what one copy reads: the entries a ``Selector`` names
  (a path, or a wildcard matched component by component, as Go's ``filepath.Match``),
  with everything under them.  A wildcard matching nothing reads nothing (one fixed
  checksum), as BuildKit's content hash: whether that is allowed is the copy's
  ``allow_empty_wildcard``, checked when the op runs.  A plain path matching nothing
  fails here, at key time, as BuildKit's ``"/missing.txt": not found``.
- ``materialise(dest, previous)`` copies the included entries into ``dest`` owned by 0:0
  (as BuildKit's client sends them), keeping modes (setuid, setgid and sticky bits
  included) and mtimes (a symlink's own).  ``previous`` is what an earlier build
  materialised of the same context (``Materialised``: its layers and each entry's
  ``EntryKey`` and layer dir): a file with the same content, mode and mtime is
  hardlinked from it instead of copied.  A layer dir is never written after it is
  published (overlayfs copies a file up before a RUN changes it), so the shared inode is
  as good as a copy; a link that fails (the layer was pruned) is a copy.
- ``materialise_delta(dest, previous)`` writes only what changed since ``previous``, in
  overlay form: changed and new entries (with their directories), a whiteout for each
  removed one.  ``previous``'s layers with that one on top show exactly the tree
  ``materialise`` would write, so a one-file change writes one file and its directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import os
import posixpath
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.cache_backends._records import LayerDescriptor
from dockyard.scheduler._cachekey import Selector
from dockyard.scheduler._errors import CacheError, DockyardError, LayerError, SolveError
from dockyard.scheduler.dockerfile._dockerignore import PatternMatcher

from ._context_digest import ContextDigests
from ._context_fetch import ContextReader, fetch_contents
from ._context_manifest import ContextManifest, ManifestEntry
from ._context_store import ContextStore
from ._context_walk import (
    ContextEntry,
    name_from_wire,
    name_to_wire,
    walk_context,
    walk_entries,
)
from ._filecopy import copy_new_file
from ._metrics import WORKER_METRICS

__all__ = ["ContextTree", "EntryKey", "LocalContext", "ManifestContext", "Materialised"]

_GLOB = frozenset("*?[")
_MAX_HOPS = 40
#: What a wildcard matching nothing reads (BuildKit: the digest of no bytes).
_NOTHING = "sha256:" + hashlib.sha256(b"").hexdigest()

#: The version of ``Materialised``'s wire form.
TREE_VERSION = 1
#: What an entry of a materialised tree is: its ``st_mode`` as listed, its mtime in ns,
#: and its content (a regular file's sha256 hex, a symlink's target, else "").  Equal
#: keys give equal entries: the owner is always 0:0.
EntryKey = tuple[int, int, str]


@dataclass(frozen=True)
class Materialised:
    """What ``materialise`` or ``materialise_delta`` made of a context, as the source's
    ``layers`` (base first) show it: each entry's key and the layer dir holding it."""

    layers: tuple[LayerDescriptor, ...]
    entries: Mapping[str, tuple[EntryKey, Path]]

    def to_wire(self) -> dict[str, Any]:
        """``{"v": 1, "layers": [layer...], "entries": [[path, mode, mtime_ns, content,
        index of the layer holding it], ...]}``; paths and contents as a manifest's."""
        dirs = {layer.diff_id.removeprefix("sha256:"): number
                for number, layer in enumerate(self.layers)}
        return {"v": TREE_VERSION, "layers": [layer.to_wire() for layer in self.layers],
                "entries": [[name_to_wire(path), key[0], key[1], name_to_wire(key[2]),
                             dirs[where.name]]
                            for path, (key, where) in self.entries.items()]}

    @classmethod
    def from_wire(cls, data: Any, layer_dir: Callable[[str], Path]) -> Materialised | None:
        """The tree of ``to_wire``'s form, its layer dirs from ``layer_dir(diff_id)``;
        None when ``data`` is not that form (another version, damaged)."""
        try:
            if data["v"] != TREE_VERSION:
                return None
            layers = tuple(LayerDescriptor.from_wire(item) for item in data["layers"])
            dirs = [layer_dir(layer.diff_id) for layer in layers]
            entries: dict[str, tuple[EntryKey, Path]] = {}
            for path, mode, mtime, content, number in data["entries"]:
                name, body = name_from_wire(path), name_from_wire(content)
                if name is None or body is None or not isinstance(mode, int) \
                        or not isinstance(mtime, int) or not 0 <= number < len(dirs):
                    return None
                entries[name] = ((mode, mtime, body), dirs[number])
        except (KeyError, TypeError, ValueError, CacheError, LayerError):
            return None
        return cls(layers, entries) if layers else None

    def link(self, path: str, key: EntryKey, target: Path) -> bool:
        """Hardlink the regular file ``path`` to ``target`` when this tree holds it with
        ``key``; False (nothing made) when it does not, or it is gone."""
        known = self.entries.get(path)
        if known is None or known[0] != key or not stat.S_ISREG(key[0]):
            return False
        try:
            os.link(known[1] / path, target, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True


class _TreeContext:
    """The checksums and path matching of a context, over its ``entries``: shared by
    ``LocalContext`` (a directory here) and ``ManifestContext`` (a client's manifest),
    which differ only in how they list entries, hash a file and materialise."""

    def __init__(self) -> None:
        # Relative path -> entry, in walk order; filled on first use, never changes after.
        self._entries: dict[str, ContextEntry] | None = None
        # Held while the entries are listed: threads asking at once (a source's identity
        # and a copy's checksum are computed together) list them once.
        self._listing = threading.Lock()

    @property
    def entries(self) -> dict[str, ContextEntry]:
        if self._entries is None:
            with self._listing:
                if self._entries is None:
                    self._entries = {entry.path: entry for entry in self._list_entries()}
        return self._entries

    def _list_entries(self) -> Iterable[ContextEntry]:
        raise NotImplementedError

    def _file_hash(self, path: str) -> str:
        """The sha256 hex of the regular file ``path``'s content."""
        raise NotImplementedError

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
        self._require_literal_includes(roots, selector)
        digest = hashlib.sha256()
        for root in roots:
            digest.update(b"root\0" + root.encode() + b"\0")
            for path, shown in self._under(root, selector):
                digest.update(self._entry_material(path, shown))
        return "sha256:" + digest.hexdigest()

    def _require_literal_includes(self, roots: list[str], selector: Selector) -> None:
        """An include pattern without a wildcard names a path that must exist under the
        source (the frontend makes include patterns only of ``COPY --parents`` sources:
        BuildKit's RequiredPaths, ``"/a/missing": not found`` at key time)."""
        for pattern in selector.include:
            if _GLOB & set(pattern):
                continue
            wanted = [posixpath.join(root, pattern) for root in roots]
            if not any(self._follow_parents(path) in self.entries for path in wanted):
                shown = posixpath.normpath(posixpath.join("/" + selector.path.lstrip("/"), pattern))
                raise SolveError(f'"{shown}": not found',
                                 hint="check the path exists in the build context and is "
                                      "not excluded by .dockerignore")

    def match(self, selector: Selector) -> list[str]:
        """The relative paths ``selector`` names ("" is the context's root)."""
        wanted = posixpath.normpath("/" + selector.path).lstrip("/")
        if wanted in ("", "."):
            return [""]
        if _is_pattern(selector):
            found = self._glob(wanted)
        else:
            resolved = self._follow_parents(wanted)
            found = [resolved] if resolved in self.entries else []
        if selector.follow_symlinks:
            found = [self._follow(p) for p in found]
        return sorted(p for p in dict.fromkeys(found) if p == "" or p in self.entries)

    # -- materialising --

    def entry_key(self, path: str) -> EntryKey:
        """The ``EntryKey`` of the included entry ``path``."""
        raise NotImplementedError

    def _put(self, path: str, target: Path, entry: ContextEntry) -> None:
        """Make the entry ``path`` at ``target`` (a directory's mode and times come
        later, from ``_finish``)."""
        raise NotImplementedError

    def _finish(self, path: str, target: Path) -> None:
        """Give the directory ``target`` the mode and times of the entry ``path``."""
        raise NotImplementedError

    def materialise(self, dest: Path, previous: Materialised | None = None
                    ) -> dict[str, EntryKey]:
        """The included entries in the existing directory ``dest``, owned by 0:0, files
        unchanged since ``previous`` linked from it; every entry's key."""
        keys: dict[str, EntryKey] = {}
        with self._writing():
            for path, entry in self.entries.items():
                keys[path] = key = self.entry_key(path)
                if previous is None or not previous.link(path, key, dest / path):
                    self._put(path, dest / path, entry)
            for path, entry in reversed(self.entries.items()):
                if entry.is_dir:
                    self._finish(path, dest / path)
        return keys

    def materialise_delta(self, dest: Path, previous: Materialised
                          ) -> tuple[dict[str, EntryKey], set[str]] | None:
        """What changed since ``previous`` in the existing directory ``dest``, in overlay
        form (see the module docstring): every entry's key and the paths written there
        (whiteouts aside).  None, and nothing written, when more than half the entries
        changed: a whole tree is then the better layer."""
        keys = {path: self.entry_key(path) for path in self.entries}
        changed = [path for path, key in keys.items()
                   if (known := previous.entries.get(path)) is None or known[0] != key]
        gone = [path for path in previous.entries if path not in keys]
        if 2 * (len(changed) + len(gone)) > len(keys):
            return None
        written: set[str] = set()
        with self._writing():
            for path in changed:
                self._put_with_parents(path, dest, written)
            for path in gone:
                parent = posixpath.dirname(path)
                if parent and (parent not in keys or not self.entries[parent].is_dir):
                    continue  # what is at its directory's place now hides it
                self._put_with_parents(parent, dest, written)
                os.mknod(dest / path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            for path in sorted(written, reverse=True):
                if self.entries[path].is_dir:
                    self._finish(path, dest / path)
        return keys, written

    def _put_with_parents(self, path: str, dest: Path, written: set[str]) -> None:
        """``path`` in ``dest`` with each of its directories not written yet ("" is the
        root, always there)."""
        if not path or path in written:
            return
        self._put_with_parents(posixpath.dirname(path), dest, written)
        self._put(path, dest / path, self.entries[path])
        written.add(path)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            raise SolveError(f"cannot write {err.filename} of the build context "
                             f"{self.title}: {err.strerror}",
                             hint="check the free space and permissions of the worker's "
                                  "root") from None

    @property
    def title(self) -> str:
        """How an error names this context."""
        raise NotImplementedError

    # -- helpers --

    def _glob(self, wanted: str) -> list[str]:
        """The entries the wildcard path ``wanted`` matches; its literal leading
        directories are resolved first, symlinks followed (fsutil's ResolveWildcards)."""
        parts = wanted.split("/")
        first = next(i for i, part in enumerate(parts) if _GLOB & set(part))
        head = self._follow_parents("/".join(parts[:first]), follow_last=True)
        prefix = head + "/" if head else ""
        tail = "/".join(parts[first:])
        return [p for p in self.entries
                if p.startswith(prefix) and _glob_match(tail, p[len(prefix):])]

    def _follow_parents(self, path: str, follow_last: bool = False) -> str:
        """``path`` with every symlink among its directories followed inside the context
        (an absolute target starts at its root; ``..`` stops there), as BuildKit resolves
        a source path in the context's tree; the last component is followed only when
        ``follow_last``."""
        pending = [part for part in reversed(path.split("/")) if part not in ("", ".")]
        resolved: list[str] = []
        hops = 0
        while pending:
            name = pending.pop()
            if name == "..":
                resolved = resolved[:-1]
                continue
            entry = self.entries.get("/".join([*resolved, name]))
            if (not pending and not follow_last) or entry is None or not entry.is_symlink:
                resolved.append(name)
                continue
            hops += 1
            if hops > _MAX_HOPS:
                raise SolveError(f'"/{path}": too many levels of symbolic links in the '
                                 "build context")
            target = entry.linkname or ""
            resolved = [] if target.startswith("/") else resolved
            pending += [part for part in reversed(target.split("/")) if part not in ("", ".")]
        return "/".join(resolved)

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


class LocalContext(_TreeContext):
    """The included entries of one context directory, by slash-separated relative path."""

    def __init__(self, root: Path, exclude: Sequence[str] = (),
                 digests: ContextDigests | None = None) -> None:
        super().__init__()
        self.root = root
        self.exclude = tuple(exclude)
        # The directory's digests (its stat index, or this object's own), made before
        # the walk; several contexts of one directory may share them.
        self.digests = ContextDigests(root) if digests is None else digests
        # Relative path -> sha256 of the file's content; grows as files are hashed.
        self._hashes: dict[str, str] = {}

    def __repr__(self) -> str:
        count = "?" if self._entries is None else len(self._entries)
        return f"<LocalContext {self.root} entries={count} hashed={len(self._hashes)}>"

    def _list_entries(self) -> Iterable[ContextEntry]:
        try:
            entries = list(walk_context(self.root, self.exclude))
        except OSError as err:
            raise SolveError(f"cannot read the build context {self.root}: "
                             f"{err.strerror}") from None
        self.digests.listed(entry.path for entry in entries if entry.is_file)
        return entries

    @property
    def title(self) -> str:
        return str(self.root)

    def entry_key(self, path: str) -> EntryKey:
        entry = self.entries[path]
        assert entry.info is not None  # a walked entry has its lstat
        return (entry.mode, entry.info.st_mtime_ns,
                self._file_hash(path) if entry.is_file else entry.linkname or "")

    def _put(self, path: str, target: Path, entry: ContextEntry) -> None:
        _place(self.root / path, target, entry)

    def _finish(self, path: str, target: Path) -> None:
        _finish_dir(self.root / path, target)

    def _file_hash(self, path: str) -> str:
        known = self._hashes.get(path)
        if known is None:
            entry = self.entries[path]
            known = self._hashes[path] = self.digests.digest(path, entry.info)
        return known


class ManifestContext(_TreeContext):
    """A client's context known by its manifest: entries and digests from the manifest,
    contents from the worker's ``ContextStore`` (``ensure_local`` fetches what it lacks).

    ``exclude`` are the op's patterns.  When they equal the manifest's, its entries are
    used as listed.  When they are the manifest's followed by more patterns without a
    ``!`` exception, they can only exclude more, so the walk's rules applied to the
    listed entries (``walk_entries``) give exactly the directory's walk.  Anything else
    could include what the client left out: refused with a ``SolveError``.
    """

    def __init__(self, name: str, manifest: ContextManifest, store: ContextStore,
                 exclude: Sequence[str] = ()) -> None:
        super().__init__()
        self.name = name
        self.manifest = manifest
        self.store = store
        self.exclude = tuple(exclude)
        # Relative path -> the manifest's entry (its mtime and digest); never changes.
        self.listed: dict[str, ManifestEntry] = {e.path: e for e in manifest.entries}
        # Held by ``ensure_local`` (one fetch at a time for this context).
        self._fetching = asyncio.Lock()

    def __repr__(self) -> str:
        count = "?" if self._entries is None else len(self._entries)
        return f"<ManifestContext {self.name!r} entries={count} listed={len(self.listed)}>"

    def _list_entries(self) -> Iterable[ContextEntry]:
        listed = (entry.entry for entry in self.manifest.entries)
        sent = self.manifest.patterns
        if self.exclude == sent:
            return listed
        added = self.exclude[len(sent):]
        if self.exclude[:len(sent)] == sent and not _exclusions(added):
            return list(walk_entries(listed, self.exclude))
        raise SolveError(
            f"the build context {self.name!r} was sent without what the ignore patterns "
            f"{list(sent)!r} exclude, and a source asks for it with {list(self.exclude)!r}",
            hint="the client must send the context walked with the same ignore patterns")

    def _file_hash(self, path: str) -> str:
        return self.listed[path].sha256 or ""

    def files(self) -> list[ManifestEntry]:
        """One included regular file per distinct content, in walk order."""
        chosen: dict[str, ManifestEntry] = {}
        for path, entry in self.entries.items():
            if entry.is_file:
                listed = self.listed[path]
                chosen.setdefault(listed.sha256 or "", listed)
        return list(chosen.values())

    async def ensure_local(self, reader: ContextReader) -> int:
        """Fetch through ``reader`` the contents of included files the store lacks; the
        bytes read."""
        async with self._fetching:
            files = self.files()
            missing = await asyncio.to_thread(self.store.missing,
                                              (entry.sha256 or "" for entry in files))
            wanted = [entry for entry in files if entry.sha256 in missing]
            if not wanted:
                return 0
            received = await fetch_contents(self.store, self.name, wanted, reader)
            WORKER_METRICS.received(received)
            return received

    @property
    def title(self) -> str:
        return repr(self.name)

    def entry_key(self, path: str) -> EntryKey:
        entry, listed = self.entries[path], self.listed[path]
        return (entry.mode, listed.mtime_ns,
                listed.sha256 or "" if entry.is_file else entry.linkname or "")

    def _put(self, path: str, target: Path, entry: ContextEntry) -> None:
        """Every file's content must be in the store (``ensure_local``)."""
        self._place(path, target, entry)

    def _finish(self, path: str, target: Path) -> None:
        os.chmod(target, stat.S_IMODE(self.entries[path].mode))
        _set_mtime(target, self.listed[path].mtime_ns)

    def _place(self, path: str, target: Path, entry: ContextEntry) -> None:
        if entry.is_file:
            source = self.store.path(self.listed[path].sha256 or "")
            if not source.is_file():
                raise SolveError(f"the content of {path!r} (build context {self.name!r}) "
                                 "is not on this worker", hint="fetch it first "
                                 "(ensure_local); this is a bug in dockyard")
            _place(source, target, entry, times=False)
        elif entry.is_dir or entry.is_symlink or stat.S_ISFIFO(entry.mode):
            _place(target, target, entry, times=False)
        else:
            return
        if not entry.is_dir:
            _set_mtime(target, self.listed[path].mtime_ns)


#: A context as a source reads it: a directory here, or a client's manifest.
ContextTree = LocalContext | ManifestContext


def _exclusions(patterns: Sequence[str]) -> bool:
    try:
        return PatternMatcher(patterns).exclusions()
    except DockyardError as err:
        raise SolveError(f"malformed exclude pattern in a context source: "
                         f"{err.message}") from None


def _set_mtime(target: Path, mtime_ns: int) -> None:
    os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


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


def _place(source: Path, target: Path, entry: ContextEntry, times: bool = True) -> None:
    """One entry at ``target``: owner 0:0 first, then the mode (a chown clears setuid and
    setgid), then the times (``source``'s, unless not ``times``).  A directory's mode and
    times are set by ``_finish_dir`` once its contents are in."""
    if entry.is_dir:
        target.mkdir(exist_ok=True)
        os.lchown(target, 0, 0)
    elif entry.is_symlink:
        os.symlink(entry.linkname or "", target)
        os.lchown(target, 0, 0)
        if times:
            _same_times(source, target)  # the link's own times (utime without following)
    elif stat.S_ISFIFO(entry.mode):
        os.mkfifo(target)  # listed and made, as BuildKit's receiver does; COPY skips it
        os.lchown(target, 0, 0)
        os.chmod(target, stat.S_IMODE(entry.mode))
        if times:
            _same_times(source, target)
    elif stat.S_ISREG(entry.mode) and entry.size:
        copy_new_file(source, target, mode=entry.mode, owner=(0, 0), times=times)
    elif stat.S_ISREG(entry.mode):  # never opened: it may be a socket or a device, sent
        target.touch(exist_ok=False)  # empty (as_sent)
        os.lchown(target, 0, 0)
        os.chmod(target, stat.S_IMODE(entry.mode))
        if times:
            _same_times(source, target)
    # sockets and devices come as empty files (_context_walk.as_sent)


def _finish_dir(source: Path, target: Path) -> None:
    os.chmod(target, stat.S_IMODE(os.lstat(source).st_mode))
    _same_times(source, target)


def _same_times(source: Path, target: Path) -> None:
    info = os.lstat(source)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
