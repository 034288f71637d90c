"""The walk of a build context: which entries the ignore patterns leave in, in which order.

Pure rules over a directory (``walk_context``, on the client or on a worker that has the
files) or over a list of entries already walked (``walk_entries``, on a worker that has
only a manifest).  Both walks are the same code; only how a directory's children are found
differs.

BuildKit's rules, kept here:

- the walk lists entries depth first, each directory's entries in byte order of their
  names (the order fsutil sends them), never follows a symlink, and matches each path as
  ``PatternMatcher.matches`` does (what Docker 20.10's BuildKit does; current fsutil
  differs in one corner, see ``PatternMatcher.match_in_walk``);
- an excluded directory is skipped whole unless an exception could re-include something
  under it (current fsutil's rule: any exception with a glob character, or a literal one
  under the directory; Docker 20.10 ignored glob exceptions there, a bug since fixed);
  it is listed only when something under it is, just before that entry;
- a socket or a device node is listed as an empty regular file with its permission
  bits (``as_sent``); a fifo is listed and made as it is, and COPY skips it.  What COPY
  makes of them is BuildKit's (the 20.10 oracle, recorded in the conformance case
  context-specials): BuildKit's receiver makes the socket an empty file too, and keeps a
  device as a device, which its COPY turns into an empty file (workers/_copy.py).  So
  only a ``RUN --mount=type=bind`` of the context tells the difference: there BuildKit
  shows the device node, dockyard an empty file (a manifest carries no device numbers).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from dockyard.scheduler._errors import DockyardError, UsageError
from dockyard.scheduler.dockerfile._dockerignore import MatchInfo, PatternMatcher

__all__ = ["ContextEntry", "as_sent", "name_from_wire", "name_to_wire", "walk_context",
           "walk_entries"]

_Child = TypeVar("_Child")


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One entry of the build context.

    ``path`` is relative to the context, slash-separated (``src/main.py``); ``mode`` is the
    full ``st_mode`` (file type bits included); ``size`` is the byte size of a regular file
    and 0 for anything else; ``linkname`` is a symlink's target as written, else None.
    ``info`` is the ``lstat`` the walk of a directory took of it (None for an entry that
    was not walked here); it is not part of the entry's value.
    """

    path: str
    mode: int
    size: int
    linkname: str | None = None
    info: os.stat_result | None = field(default=None, compare=False, repr=False)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


def _matcher(patterns: Sequence[str] | PatternMatcher) -> PatternMatcher:
    return patterns if isinstance(patterns, PatternMatcher) else PatternMatcher(patterns)


def _context_root(context_dir: Path) -> Path:
    if not context_dir.is_dir():
        raise UsageError(f"build context {str(context_dir)!r} is not a directory",
                         hint="give the path of a directory as the build context")
    return context_dir


def walk_context(context_dir: Path, patterns: Sequence[str] | PatternMatcher
                 ) -> Iterator[ContextEntry]:
    """The entries of the context that the ignore ``patterns`` leave in, in walk order.

    Returns a generator: entries come as the walk finds them.  The context directory
    itself is not listed.  Raises at once ``UsageError`` when ``context_dir`` is not a
    directory and ``DockerfileError`` for a malformed pattern; the generator raises
    ``DockyardError`` when an included directory cannot be read.
    """
    walker = _DirWalker(_matcher(patterns), _context_root(context_dir))
    return walker.walk("", None)


def walk_entries(entries: Iterable[ContextEntry], patterns: Sequence[str] | PatternMatcher
                 ) -> Iterator[ContextEntry]:
    """The walk of ``walk_context`` over a tree that holds exactly ``entries`` (each
    entry's parent directory among them): the entries ``patterns`` leave in, in walk order.

    Equal to walking the directory the entries were listed from only when the entries
    hold everything ``patterns`` would include there (e.g. when they were walked with
    patterns that exclude no more than ``patterns``); the caller decides that.
    """
    return _ListWalker(_matcher(patterns), entries).walk("", None)


class _Walker(Generic[_Child]):
    """One walk; subclasses say how a directory's children are found and described."""

    def __init__(self, matcher: PatternMatcher) -> None:
        self.matcher = matcher
        # Excluded directories on the current branch that have not been listed yet,
        # outermost first; listed (and emptied) as soon as an entry under them is included.
        self.pending: list[ContextEntry] = []

    def walk(self, prefix: str, info: MatchInfo | None) -> Iterator[ContextEntry]:
        for child in self._children(prefix):
            path = prefix + self._name(child)
            excluded, child_info = self.matcher.match_in_walk(path, info)
            yield from self._visit(child, path, excluded, child_info)

    def _visit(self, child: _Child, path: str, excluded: bool, info: MatchInfo
               ) -> Iterator[ContextEntry]:
        is_dir = self._is_dir(child)
        if excluded and not is_dir:
            return
        if excluded and self.matcher.may_skip_dir(path):
            return
        item = self._describe(child, path)
        if item is None:
            return
        if excluded:
            yield from self._excluded_dir(item, info)
            return
        yield from self._flush_pending()
        yield item
        if is_dir:
            yield from self.walk(path + "/", info)

    def _excluded_dir(self, item: ContextEntry, info: MatchInfo) -> Iterator[ContextEntry]:
        self.pending.append(item)
        # fsutil too ignores what it cannot read under an excluded directory
        with contextlib.suppress(_Unreadable):
            yield from self.walk(item.path + "/", info)
        if self.pending and self.pending[-1] is item:
            self.pending.pop()

    def _flush_pending(self) -> Iterator[ContextEntry]:
        yield from self.pending
        self.pending.clear()

    # -- what a subclass says --

    def _children(self, prefix: str) -> list[_Child]:
        raise NotImplementedError

    def _name(self, child: _Child) -> str:
        raise NotImplementedError

    def _is_dir(self, child: _Child) -> bool:
        raise NotImplementedError

    def _describe(self, child: _Child, path: str) -> ContextEntry | None:
        raise NotImplementedError


class _DirWalker(_Walker[os.DirEntry[str]]):
    """The walk of a directory on this machine."""

    def __init__(self, matcher: PatternMatcher, root: Path) -> None:
        super().__init__(matcher)
        self.root = root

    def _children(self, prefix: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.root / prefix) as entries:
                return sorted(entries, key=lambda entry: os.fsencode(entry.name))
        except OSError as error:
            if self.pending:
                raise _Unreadable from error
            where = prefix.rstrip("/") or "."
            raise DockyardError(
                f"cannot read the build context at {where!r}: {error.strerror or error}",
                hint="fix its permissions, or exclude it in .dockerignore") from error

    def _name(self, child: os.DirEntry[str]) -> str:
        return child.name

    def _is_dir(self, child: os.DirEntry[str]) -> bool:
        return child.is_dir(follow_symlinks=False)

    def _describe(self, child: os.DirEntry[str], path: str) -> ContextEntry | None:
        return _entry(child, path)


class _ListWalker(_Walker[ContextEntry]):
    """The walk of the tree a list of entries describes."""

    def __init__(self, matcher: PatternMatcher, entries: Iterable[ContextEntry]) -> None:
        super().__init__(matcher)
        # directory prefix ("" or "a/b/") -> its entries, in byte order of their names
        self.children: dict[str, list[ContextEntry]] = {}
        for entry in entries:
            parent = posixpath.dirname(entry.path)
            self.children.setdefault(parent + "/" if parent else "", []).append(entry)
        for listed in self.children.values():
            listed.sort(key=lambda entry: os.fsencode(self._name(entry)))

    def _children(self, prefix: str) -> list[ContextEntry]:
        return self.children.get(prefix, [])

    def _name(self, child: ContextEntry) -> str:
        return posixpath.basename(child.path)

    def _is_dir(self, child: ContextEntry) -> bool:
        return child.is_dir

    def _describe(self, child: ContextEntry, path: str) -> ContextEntry | None:
        return child


class _Unreadable(Exception):
    """An excluded directory could not be read (internal to the walk)."""


def _entry(entry: os.DirEntry[str], path: str) -> ContextEntry | None:
    """The entry's description; None when it vanished while the walk ran."""
    try:
        info = entry.stat(follow_symlinks=False)
        link = os.readlink(entry.path) if stat.S_ISLNK(info.st_mode) else None
    except FileNotFoundError:
        return None
    except OSError as error:
        raise DockyardError(f"cannot read the build context at {path!r}: "
                            f"{error.strerror or error}") from error
    size = info.st_size if stat.S_ISREG(info.st_mode) else 0
    return ContextEntry(path, as_sent(info.st_mode), size, link, info)


def as_sent(mode: int) -> int:
    """The ``st_mode`` a context entry is listed with: a socket or a device becomes an
    empty regular file with the same permission bits (its content is never read)."""
    if stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return stat.S_IFREG | stat.S_IMODE(mode)
    return mode


# -- names on the wire (a manifest, a stat index) --


def name_to_wire(name: str) -> str | bytes:
    """``name`` for msgpack: a str, or its bytes when it is not UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a name that is not UTF-8 (surrogate escapes)
        return os.fsencode(name)
    return name


def name_from_wire(value: Any) -> str | None:
    """A path or link target of the wire form (str, or bytes when not UTF-8); None when
    it is neither."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return None
