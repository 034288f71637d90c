"""COPY's copier: BuildKit's file backend and tonistiigi/fsutil's ``copy`` on real trees.

Every path a user names is resolved with ``resolve_in_root``, as inside a chroot: ``..``
stops at the root and a symlink (absolute or relative) is followed within the root, so
no path ever reaches the host.  Below the resolved top the copier only ``lstat``s, lists
and joins names, never following a symlink it meets in a tree.

Behaviour, as fsutil does it:

- the source top is followed when ``follow_symlinks`` (else only its parent directory);
  inside a tree symlinks are copied as symlinks, hardlinks within one source as
  hardlinks, xattrs copied (errors ignored, as BuildKit logs them); a device node
  becomes an empty regular file with its permission bits (fsutil's copyDevice hands
  mknod a Go FileMode, whose type bits are not S_IFCHR/S_IFBLK); fifos and sockets are
  skipped, an existing file in their place removed (fsutil's "unsupported mode" with a
  nil error) -- all three checked with the BuildKit 20.10 oracle;
- a directory source with ``copy_dir_contents`` copies its entries into the destination,
  else the directory itself when the destination exists; a file source lands inside an
  existing destination directory (``stat``, so a symlink to a directory counts);
- the destination's missing parents are created 0755, or with an octal ``--chmod``'s mode
  (owned by ``owner`` when set);
- each copied entry keeps its owner (or gets ``owner``), its mode (or ``mode`` applied,
  symlinks excepted) and its atime/mtime (nanoseconds, symlinks included);
- ``include``/``exclude`` patterns (moby patternmatcher, a pattern matching a directory
  matches what is under it) filter the entries below the source top; a directory that is
  not itself included is created only when something under it is.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dockyard.scheduler._errors import DockerfileError, SolveError
from dockyard.scheduler.dockerfile._dockerignore import PatternMatcher, syntax_error_at

from ._filecopy import copy_bytes

__all__ = ["CopyOptions", "absolute", "copy_tree", "has_wildcard", "make_dirs",
           "resolve_in_root", "resolve_wildcards", "split_wildcards"]

_MAX_LINKS = 255

ModeFn = Callable[[int], int]
"""Maps a source ``st_mode`` to the permission bits (``0o7777``) a copy gets."""


def _clean_parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def resolve_in_root(root: Path, path: str, *, follow_final: bool = True) -> Path:
    """``path`` (absolute or relative to ``root``) resolved as a chroot at ``root`` would:
    ``..`` never climbs above ``root`` and symlinks are followed inside it (an absolute
    target restarts at ``root``).  Missing components are kept as written.  With
    ``follow_final=False`` a symlink in the last component is not followed."""
    pending = _clean_parts(path)
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        name = pending.pop()
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        here = root.joinpath(*resolved, name)
        if not pending and not follow_final:
            resolved.append(name)
            break
        target = _link_target(here)
        if target is None:
            resolved.append(name)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise SolveError(f'"{path}": too many levels of symbolic links',
                             hint="a symlink loop in the filesystem; fix the links")
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed(_clean_parts(target)))
    return root.joinpath(*resolved)


def _link_target(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # missing, not a symlink, or under a non-directory
        return None


# --- wildcards (Go's filepath.Match, as fsutil's ResolveWildcards walks them) ----------

def has_wildcard(name: str) -> bool:
    """fsutil's containsWildcards: ``*``, ``?`` or ``[`` not escaped by a backslash."""
    skip = False
    for char in name:
        if skip:
            skip = False
        elif char == "\\":
            skip = True
        elif char in "*?[":
            return True
    return False


def split_wildcards(path: str) -> tuple[str, str]:
    """``/a/b*/c`` -> ``("/a", "b*/c")``: the literal leading directories and the rest."""
    parts = path.split("/")
    first = next((i for i, part in enumerate(parts) if has_wildcard(part)), len(parts))
    head = "/".join(parts[:first]) or ("/" if path.startswith("/") else "")
    tail = "/".join(p for p in parts[first:] if p)
    return os.path.normpath(head) if head else "", tail


def _go_match_regex(pattern: str) -> re.Pattern[str] | None:
    """A regex equal to Go's ``filepath.Match(pattern, name)``; None for a bad pattern
    (Go reports ErrBadPattern, which fsutil treats as no match)."""
    if syntax_error_at(pattern) is not None:
        return None
    out, at = [], 0
    while at < len(pattern):
        char = pattern[at]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\":
            at += 1
            out.append(re.escape(pattern[at]))
        elif char == "[":
            end = _class_close(pattern, at)
            out.append(_go_class(pattern[at + 1:end]))
            at = end
        else:
            out.append(re.escape(char))
        at += 1
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error:
        return None


def _class_close(pattern: str, start: int) -> int:
    """The index of the ``]`` closing the (validated) class opened at ``start``."""
    at = start + 1
    at += pattern[at] == "^"
    while pattern[at] != "]":
        at += 2 if pattern[at] == "\\" else 1
    return at


def _go_class(body: str) -> str:
    negate = body.startswith("^")
    items, at = [], 1 if negate else 0
    while at < len(body):
        escaped = body[at] == "\\"
        at += escaped
        items.append("-" if body[at] == "-" and not escaped else re.escape(body[at]))
        at += 1
    return ("[^" if negate else "[") + "".join(items) + "]"


def resolve_wildcards(root: Path, src: str, *, follow_symlinks: bool) -> list[str]:
    """The paths under ``root`` that ``src`` matches, relative to ``root``, in walk order
    (lexical, depth first); a path without wildcards is returned as it is (cleaned)."""
    head, tail = split_wildcards(src)
    if not tail:
        return [head or "/"]
    base = _source_path(root, head, follow_symlinks)
    regex = _go_match_regex(tail)
    if regex is None:
        return []
    depth = tail.count("/") + 1
    found: list[Path] = []
    _walk_matches(base, "", regex, depth, found)
    return [os.path.relpath(path, root) for path in found]


def _walk_matches(directory: Path, rel: str, regex: re.Pattern[str], depth: int,
                  found: list[Path]) -> None:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return
    for name in names:
        path, sub = directory / name, f"{rel}/{name}" if rel else name
        if regex.fullmatch(sub):
            found.append(path)
        elif depth > 1 and stat.S_ISDIR(os.lstat(path).st_mode):
            _walk_matches(path, sub, regex, depth - 1, found)


def _source_path(root: Path, path: str, follow: bool) -> Path:
    """fsutil's rootPath: the top followed when ``follow``, else only its parent."""
    parts = _clean_parts(path)
    if not parts:
        return root
    if follow:
        return resolve_in_root(root, path)
    return resolve_in_root(root, "/".join(parts[:-1])) / parts[-1]


# --- the copier -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CopyOptions:
    """How one source is copied.  ``owner``: (uid, gid) for every copied entry and every
    directory created, None to keep the source's; ``mode``: the new permission bits;
    ``parents_mode``: the exact mode of the directories the copy creates to hold its
    destination (an octal ``--chmod``), None for 0755."""

    owner: tuple[int, int] | None = None
    mode: ModeFn | None = None
    parents_mode: int | None = None
    copy_dir_contents: bool = True
    follow_symlinks: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    always_replace_existing: bool = False


@dataclass(slots=True)
class _Parent:
    src: Path
    dst: Path
    copied: bool


@dataclass(slots=True)
class _Copier:
    root: Path  # the destination root, for messages
    options: CopyOptions
    include: PatternMatcher | None
    exclude: PatternMatcher | None
    # (st_dev, st_ino) of a multiply-linked source file -> the first copy made of it.
    inodes: dict[tuple[int, int], Path] = field(default_factory=dict)
    # The directories being walked whose creation waits for an included entry (outermost
    # first); ``copied`` once created.
    parents: list[_Parent] = field(default_factory=list)

    def copy(self, src: Path, rel: str, dst: Path, overwrite_meta: bool) -> None:
        info = os.lstat(src)
        include = self._included(rel)
        if include:
            self._replace_if_needed(dst, info)
            self._create_parents(overwrite_meta)
        if not stat.S_ISDIR(info.st_mode):
            if not include:
                return
            _ensure_file_target(dst, self.root)
            if stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):
                return  # fsutil copies neither (its "unsupported mode" error is nil)
        copy_info = include
        if stat.S_ISDIR(info.st_mode):
            created = self._copy_directory(src, rel, dst, info, overwrite_meta, include)
            copy_info = copy_info and (created or overwrite_meta)
        else:
            self._copy_entry(src, dst, info)
        if copy_info:
            self._copy_metadata(src, dst, info)

    def _included(self, rel: str) -> bool:
        if not rel:
            return True
        if self.include is not None and not self.include.matches(rel):
            return False
        return self.exclude is None or not self._excluded(rel)

    def _excluded(self, rel: str) -> bool:
        assert self.exclude is not None
        return self.exclude.matches(rel)

    def _replace_if_needed(self, dst: Path, info: os.stat_result) -> None:
        if not self.options.always_replace_existing:
            return
        try:
            existing = os.lstat(dst)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode) and stat.S_ISDIR(existing.st_mode):
            return
        _remove_all(dst)

    def _create_parents(self, overwrite_meta: bool) -> None:
        for parent in self.parents:
            if parent.copied:
                continue
            info = os.stat(parent.src)
            if _make_directory(parent.dst, info, overwrite_meta, self.root):
                self._copy_metadata(parent.src, parent.dst, info)
            parent.copied = True

    def _copy_directory(self, src: Path, rel: str, dst: Path, info: os.stat_result,
                        overwrite_meta: bool, include: bool) -> bool:
        created = _make_directory(dst, info, overwrite_meta, self.root) if include else False
        self.parents.append(_Parent(src, dst, include))
        try:
            for name in sorted(os.listdir(src)):
                self.copy(src / name, f"{rel}/{name}" if rel else name, dst / name, True)
        finally:
            self.parents.pop()
        return created

    def _copy_entry(self, src: Path, dst: Path, info: os.stat_result) -> None:
        mode = info.st_mode
        if stat.S_ISREG(mode):
            self._copy_regular(src, dst, info)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            # fsutil's copyDevice passes Go's FileMode to mknod: no S_IFMT type bits, so
            # the kernel makes an empty regular file (BuildKit 20.10, oracle-recorded)
            os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    def _copy_regular(self, src: Path, dst: Path, info: os.stat_result) -> None:
        key = (info.st_dev, info.st_ino)
        if info.st_nlink > 1 and key in self.inodes:
            os.link(self.inodes[key], dst)
            return
        if info.st_nlink > 1:
            self.inodes[key] = dst
        with open(src, "rb") as reader, open(dst, "xb") as writer:
            copy_bytes(reader.fileno(), writer.fileno())

    def _copy_metadata(self, src: Path, dst: Path, info: os.stat_result) -> None:
        owner = self.options.owner or (info.st_uid, info.st_gid)
        os.chown(dst, *owner, follow_symlinks=False)
        if not stat.S_ISLNK(info.st_mode):
            bits = stat.S_IMODE(info.st_mode)
            os.chmod(dst, self.options.mode(info.st_mode) if self.options.mode else bits)
        _copy_xattrs(src, dst)
        os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _copy_xattrs(src: Path, dst: Path) -> None:
    with contextlib.suppress(OSError):
        for key in os.listxattr(src, follow_symlinks=False):
            if key.startswith("trusted.overlay."):
                continue  # overlayfs' own bookkeeping, never content
            with contextlib.suppress(OSError):
                value = os.getxattr(src, key, follow_symlinks=False)
                os.setxattr(dst, key, value, follow_symlinks=False)


def _make_directory(dst: Path, info: os.stat_result, overwrite_meta: bool,
                    root: Path) -> bool:
    """fsutil's copyDirectoryOnly: True when ``dst`` had to be created."""
    try:
        existing = os.lstat(dst)
    except FileNotFoundError:
        os.mkdir(dst, stat.S_IMODE(info.st_mode))
        return True
    if not stat.S_ISDIR(existing.st_mode):
        raise SolveError(f"cannot copy to non-directory: {_inside(dst, root)}")
    if overwrite_meta:
        os.chmod(dst, stat.S_IMODE(info.st_mode))
    return False


def _ensure_file_target(dst: Path, root: Path) -> None:
    try:
        existing = os.lstat(dst)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(existing.st_mode):
        raise SolveError(f"cannot replace to directory {_inside(dst, root)} with file")
    os.unlink(dst)


def _remove_all(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove_all(child)
        path.rmdir()
    else:
        path.unlink()


def make_dirs(path: Path, root: Path, mode: int, owner: tuple[int, int] | None, *,
              exact: bool = False) -> None:
    """fsutil's MkdirAll below ``root`` (``path`` already resolved in it): the missing
    directories are created with ``mode`` (less the 022 umask, unless ``exact``) and
    chowned to ``owner``; an existing non-directory on the way is an error."""
    missing: list[Path] = []
    here = path
    while here != root and not os.path.lexists(here):
        missing.append(here)
        here = here.parent
    if os.path.lexists(here) and not here.is_dir():
        raise SolveError(f"{_inside(here, root)}: not a directory",
                         hint="a file stands where a directory is needed")
    for directory in reversed(missing):
        os.mkdir(directory)
        if owner is not None:
            os.chown(directory, *owner)  # before the mode: a chown clears setuid/setgid
        os.chmod(directory, mode if exact else mode & 0o755)


def _inside(path: Path, root: Path) -> str:
    return absolute(os.path.relpath(path, root))


def absolute(path: str) -> str:
    """``path`` made absolute and clean (``a/../b`` -> ``/b``, ``//x`` -> ``/x``)."""
    return "/" + "/".join(_clean_parts(os.path.normpath("/" + path)))


def copy_tree(src_root: Path, src: str, dst_root: Path, dest: str,
              options: CopyOptions) -> None:
    """fsutil's ``Copy`` of one (wildcard-resolved) source ``src`` of ``src_root`` to
    ``dest`` in ``dst_root``; ``dest`` keeps its trailing ``/`` or ``/.``."""
    head, _, tail = dest.rpartition("/")
    ensure = dest if tail in ("", ".") else (head + "/" if "/" in dest else "")
    if ensure:
        _make_parents(resolve_in_root(dst_root, ensure), dst_root, options)
    dst = resolve_in_root(dst_root, os.path.normpath("/" + dest))
    source = _source_path(src_root, src, options.follow_symlinks)
    try:
        info = os.lstat(source)
    except OSError:
        raise _not_found(src) from None
    dst = _target(dst_root, dst, src, info, options)
    _copier(dst_root, options).copy(source, "", dst, False)


def _target(dst_root: Path, dst: Path, src: str, info: os.stat_result,
            options: CopyOptions) -> Path:
    """fsutil's prepareTargetDir: where the source lands, its parent created."""
    try:
        dest_is_dir: bool | None = stat.S_ISDIR(os.stat(dst).st_mode)
    except OSError:
        dest_is_dir = None
    src_is_dir = stat.S_ISDIR(info.st_mode)
    name = _clean_parts(src)[-1] if _clean_parts(src) else ""
    if dest_is_dir is not None and name and (
            (src_is_dir and not options.copy_dir_contents) or (not src_is_dir and dest_is_dir)):
        dst = dst / name
    parent = dst if options.copy_dir_contents and src_is_dir and dest_is_dir is None \
        else dst.parent
    if dst != dst_root:
        _make_parents(parent, dst_root, options)
    return dst


def _make_parents(path: Path, dst_root: Path, options: CopyOptions) -> None:
    """The directories a copy creates to hold its destination: 0755, or exactly an octal
    ``--chmod`` mode (current BuildKit, fsutil#228: ``COPY --chmod=770 f /new/dir/f``
    makes ``/new`` and ``/new/dir`` 0770; directories already there keep theirs)."""
    if options.parents_mode is None:
        make_dirs(path, dst_root, 0o755, options.owner)
    else:
        make_dirs(path, dst_root, options.parents_mode, options.owner, exact=True)


def _copier(root: Path, options: CopyOptions) -> _Copier:
    return _Copier(root, options, _matcher(options.include, "include"),
                   _matcher(options.exclude, "exclude"))


def _matcher(patterns: Sequence[str], which: str) -> PatternMatcher | None:
    if not patterns:
        return None
    try:
        return PatternMatcher(patterns, filename=f"--{which}")
    except DockerfileError as err:
        raise SolveError(f"invalid {which} patterns {list(patterns)}: {err.message}") from None


def _not_found(src: str) -> SolveError:
    return SolveError(f'"{absolute(src)}": not found',
                      hint="check the path exists in the source (the build context: "
                           "is it excluded by .dockerignore?)")
