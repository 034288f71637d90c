"""The build context on the client: which ignore file applies, and which files are sent.

This is the client side of context transfer (it reads the user's filesystem); the
matching rules themselves are pure and live in ``scheduler.dockerfile._dockerignore``.

BuildKit's rules, kept here:

- the ignore file is ``<Dockerfile's directory>/<Dockerfile's name>.dockerignore`` when it
  exists (``build/app.Dockerfile`` -> ``build/app.Dockerfile.dockerignore``), and then it
  replaces the context's ``.dockerignore``; otherwise ``<context>/.dockerignore``;
- the walk lists entries depth first, each directory's entries in byte order of their
  names (the order fsutil sends them), never follows a symlink, and matches each path as
  ``PatternMatcher.matches`` does (what Docker 20.10's BuildKit does; current fsutil
  differs in one corner, see ``PatternMatcher.match_in_walk``);
- an excluded directory is skipped whole unless an exception could re-include something
  under it (current fsutil's rule: any exception with a glob character, or a literal one
  under the directory; Docker 20.10 ignored glob exceptions there, a bug since fixed);
  it is listed only when something under it is, just before that entry.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scheduler._errors import DockyardError, UsageError
from scheduler.dockerfile._dockerignore import MatchInfo, PatternMatcher, parse_ignore_lines

__all__ = ["ContextEntry", "ignore_file_for", "load_ignore_patterns", "walk_context"]

DOCKERIGNORE = ".dockerignore"


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One entry of the build context.

    ``path`` is relative to the context, slash-separated (``src/main.py``); ``mode`` is the
    full ``st_mode`` (file type bits included); ``size`` is the byte size of a regular file
    and 0 for anything else; ``linkname`` is a symlink's target as written, else None.
    """

    path: str
    mode: int
    size: int
    linkname: str | None = None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


def ignore_file_for(context_dir: Path, dockerfile: Path) -> Path | None:
    """The ignore file that applies to a build of ``dockerfile`` with ``context_dir``.

    ``<dockerfile>.dockerignore`` next to the Dockerfile wins over the context's
    ``.dockerignore``; None when neither exists.
    """
    specific = dockerfile.with_name(dockerfile.name + DOCKERIGNORE)
    if specific.is_file():
        return specific
    shared = context_dir / DOCKERIGNORE
    return shared if shared.is_file() else None


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as error:
        raise DockyardError(f"cannot read {path}: {error.strerror or error}") from error


def load_ignore_patterns(context_dir: Path, dockerfile: Path
                         ) -> tuple[list[str], Path | None]:
    """The patterns of the ignore file that applies (see ``ignore_file_for``) and its path.

    The patterns are checked here, so a malformed one raises ``DockerfileError`` naming
    the ignore file, the line and the column.  No ignore file: ``([], None)``.
    """
    path = ignore_file_for(context_dir, dockerfile)
    if path is None:
        return [], None
    lines = parse_ignore_lines(_read_text(path))
    PatternMatcher(lines, filename=str(path))
    return [entry.pattern for entry in lines], path


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
    walker = _Walker(_context_root(context_dir), _matcher(patterns))
    return walker.walk(context_dir, "", None)


@dataclass(slots=True)
class _Walker:
    """One walk of a context directory."""

    root: Path
    matcher: PatternMatcher
    # Excluded directories on the current branch that have not been listed yet, outermost
    # first; listed (and emptied) as soon as an entry under them is included.
    pending: list[ContextEntry] = field(default_factory=list)

    def walk(self, directory: Path, prefix: str, info: MatchInfo | None
             ) -> Iterator[ContextEntry]:
        for entry in self._scan(directory, prefix):
            path = prefix + entry.name
            excluded, child_info = self.matcher.match_in_walk(path, info)
            yield from self._visit(entry, path, excluded, child_info)

    def _visit(self, entry: os.DirEntry[str], path: str, excluded: bool, info: MatchInfo
               ) -> Iterator[ContextEntry]:
        is_dir = entry.is_dir(follow_symlinks=False)
        if excluded and not is_dir:
            return
        if excluded and self.matcher.may_skip_dir(path):
            return
        item = _entry(entry, path)
        if item is None:
            return
        if excluded:
            yield from self._excluded_dir(entry, item, info)
            return
        yield from self._flush_pending()
        yield item
        if is_dir:
            yield from self.walk(Path(entry.path), path + "/", info)

    def _excluded_dir(self, entry: os.DirEntry[str], item: ContextEntry, info: MatchInfo
                      ) -> Iterator[ContextEntry]:
        self.pending.append(item)
        # fsutil too ignores what it cannot read under an excluded directory
        with contextlib.suppress(_Unreadable):
            yield from self.walk(Path(entry.path), item.path + "/", info)
        if self.pending and self.pending[-1] is item:
            self.pending.pop()

    def _flush_pending(self) -> Iterator[ContextEntry]:
        yield from self.pending
        self.pending.clear()

    def _scan(self, directory: Path, prefix: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as entries:
                return sorted(entries, key=lambda entry: os.fsencode(entry.name))
        except OSError as error:
            if self.pending:
                raise _Unreadable from error
            where = prefix.rstrip("/") or "."
            raise DockyardError(
                f"cannot read the build context at {where!r}: {error.strerror or error}",
                hint="fix its permissions, or exclude it in .dockerignore") from error


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
    return ContextEntry(path, info.st_mode, size, link)
