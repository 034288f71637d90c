"""File ops on real directories: a ``FileOp``'s actions (COPY/ADD, WORKDIR's mkdir, heredoc
files, rm, symlink) applied to a mounted writable rootfs, as BuildKit's file backend
(solver/llbsolver/file/backend.go) applies them.

``apply_file_actions(actions, target, inputs, user_db=...)``: ``target`` is the state
being changed; ``inputs[i]`` the root of input ``i`` (a copy's ``src``), None for an empty
state.  Every path is resolved inside its root as a chroot would (``resolve_in_root``).

- ``chown`` (``user[:group]``): ``root`` and numbers are ids (a lone uid is also the
  gid); names are looked up in the TARGET's /etc/passwd and /etc/group.  As BuildKit's
  readUser does, a name missing there (or a missing file) gives id 0.  Without ``chown``
  a copy keeps the source's owners and created directories belong to root.
- ``chmod``: octal (``755``, setuid/setgid/sticky honoured) or symbolic (``u=rwX,go=rX``,
  chmod(1) clauses with a zero umask; ``X`` tests the entry's original mode, and works
  with ``=`` as BuildKit's testFileOpCopyChmodText expects of it) on every copied entry,
  symlinks excepted.
- Errors are ``SolveError``s naming the path (``"/x": not found``), ``LayerError`` for an
  archive that escapes its destination; the caller adds the vertex.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dockyard.scheduler._errors import DockyardError, SolveError
from dockyard.scheduler._graph import Copy, FileAction, Mkdir, Mkfile, Rm, Symlink

from ._archive import ArchiveBudget, ArchiveLimits, unpack_archive
from ._copy import (
    CopyOptions,
    ModeFn,
    absolute,
    copy_tree,
    has_wildcard,
    make_dirs,
    resolve_in_root,
    resolve_wildcards,
)
from ._disk import DISK_FULL_HINT, is_disk_full

__all__ = ["UserDb", "apply_file_actions", "parse_chmod", "resolve_in_root"]


# --- users and groups -------------------------------------------------------------------

def _read_table(root: Path, path: str) -> list[list[str]]:
    try:
        text = resolve_in_root(root, path).read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and line[0] != "#"]


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) < 2**32 else None


@dataclass(frozen=True, slots=True)
class UserDb:
    """Names to ids, from a rootfs' /etc/passwd (name -> (uid, gid)) and /etc/group."""

    users: dict[str, tuple[int, int]] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_root(cls, root: Path) -> UserDb:
        users: dict[str, tuple[int, int]] = {}
        for row in _read_table(root, "/etc/passwd"):
            ids = [_number(v) for v in row[2:4]] if len(row) >= 4 else []
            if len(ids) == 2 and ids[0] is not None and ids[1] is not None:
                users.setdefault(row[0], (ids[0], ids[1]))
        groups: dict[str, int] = {}
        for row in _read_table(root, "/etc/group"):
            gid = _number(row[2]) if len(row) >= 3 else None
            if gid is not None:
                groups.setdefault(row[0], gid)
        return cls(users, groups)

    def owner(self, chown: str) -> tuple[int, int] | None:
        """``user[:group]`` -> (uid, gid); None for ``""`` (keep the owners)."""
        if not chown:
            return None
        user, has_group, group = chown.partition(":")
        uid = _id(user)
        ids = (uid, uid) if uid is not None else self.users.get(user, (0, 0))
        if not has_group:
            return ids
        gid = _id(group)
        if gid is None:
            gid = self.groups.get(group, ids[1])
        return ids[0], gid


def _id(text: str) -> int | None:
    return 0 if text == "root" else _number(text)


# --- chmod ------------------------------------------------------------------------------

_CLASS = {"u": 0o4700, "g": 0o2070, "o": 0o0007, "a": 0o6777}
_SHIFT = {"u": 6, "g": 3, "o": 0}


def octal_chmod(text: str) -> int | None:
    """``--chmod``'s value when it is an octal mode (checked by ``parse_chmod``)."""
    return int(text, 8) if text.isdigit() and set(text) <= set("01234567") else None


def parse_chmod(text: str) -> ModeFn | None:
    """``--chmod``'s value as a function of the source ``st_mode``; None for ``""``."""
    if not text:
        return None
    if text.isdigit():
        value = int(text, 8) if set(text) <= set("01234567") else -1
        if not 0 <= value <= 0o7777:
            raise _bad_chmod(text)
        return lambda _mode: value
    clauses = [_parse_clause(text, clause) for clause in text.split(",")]
    return lambda mode: _apply_symbolic(clauses, mode)


def _bad_chmod(text: str) -> SolveError:
    return SolveError(f"invalid chmod parameter: '{text}'. it should be octal string and "
                      "between 0 and 07777")


_Clause = tuple[int, list[tuple[str, str]]]


def _parse_clause(text: str, clause: str) -> _Clause:
    """``go=u-w`` -> (who bits, [("=", "u"), ("-", "w")])."""
    at, who = 0, 0
    while at < len(clause) and clause[at] in _CLASS:
        who |= _CLASS[clause[at]]
        at += 1
    ops: list[tuple[str, str]] = []
    while at < len(clause):
        if clause[at] not in "+-=":
            raise _bad_chmod(text)
        end = at + 1
        while end < len(clause) and clause[end] not in "+-=":
            if clause[end] not in "rwxXstugo":
                raise _bad_chmod(text)
            end += 1
        ops.append((clause[at], clause[at + 1:end]))
        at = end
    if not ops:
        raise _bad_chmod(text)
    return who, ops


def _apply_symbolic(clauses: list[_Clause], st_mode: int) -> int:
    original = st_mode & 0o7777
    is_dir = (st_mode & 0o170000) == 0o040000
    mode = original
    for who, ops in clauses:
        for op, perms in ops:
            mode = _apply_op(mode, original, is_dir, who, op, perms)
    return mode


def _apply_op(mode: int, original: int, is_dir: bool, who: int, op: str, perms: str) -> int:
    mask = who or 0o6777
    bits = 0
    for char in perms:
        bits |= _perm_bits(char, who, op, original, is_dir)
    if "t" in perms and (who == 0 or who & ~0o007):
        mask |= 0o1000
    copied = [c for c in perms if c in _SHIFT]
    if op == "=":
        mode &= ~mask
    for source in copied:
        value = (mode >> _SHIFT[source]) & 0o7
        mode = _copy_class(mode, who, op, value)
    return mode | (bits & mask) if op != "-" else mode & ~(bits & mask)


def _perm_bits(char: str, who: int, op: str, original: int, is_dir: bool) -> int:
    if char in "rwx":
        return {"r": 0o444, "w": 0o222, "x": 0o111}[char]
    if char == "X":
        return 0o111 if is_dir or original & 0o111 else 0
    special = who == 0 or who & ~0o007
    if char == "s" and special:
        return 0o6000
    if char == "t" and special:
        return 0o1000
    return 0


def _copy_class(mode: int, who: int, op: str, value: int) -> int:
    for shift in _SHIFT.values():
        if who and not who & (0o7 << shift):
            continue
        if op in "-=":
            mode &= ~((value if op == "-" else 0o7) << shift)
        if op in "+=":
            mode |= value << shift
    return mode


# --- the actions ------------------------------------------------------------------------

def _clean_path(path: str) -> str:
    """BuildKit's cleanPath: absolute and clean, a trailing ``/`` or ``/.`` kept."""
    cleaned = posixpath.normpath("/" + path).replace("//", "/")
    if path.endswith("/.") and cleaned != "/":
        return cleaned + "/."
    if path.endswith("/") and cleaned != "/":
        return cleaned + "/"
    return cleaned


@dataclass(slots=True)
class _Context:
    target: Path
    inputs: Sequence[Path | None]
    user_db: UserDb | None
    archive_limits: ArchiveLimits | None  # None: from the environment, when first needed
    # What the archives ADD extracts expand to, over all of the op's actions (one ADD);
    # made when the first archive is.
    budget: ArchiveBudget | None = None

    def archive_budget(self) -> ArchiveBudget:
        if self.budget is None:
            self.budget = ArchiveBudget(self.archive_limits or ArchiveLimits.from_env())
        return self.budget

    def owner(self, chown: str) -> tuple[int, int] | None:
        if not chown:
            return None
        if self.user_db is None:
            self.user_db = UserDb.from_root(self.target)
        return self.user_db.owner(chown)


def _mkdir(ctx: _Context, action: Mkdir) -> None:
    path = resolve_in_root(ctx.target, action.path)
    owner = ctx.owner(action.chown)
    if action.make_parents:
        make_dirs(path, ctx.target, action.mode, owner)
        return
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    os.chmod(path, action.mode & 0o755)
    if owner is not None:
        os.chown(path, *owner)


def _mkfile(ctx: _Context, action: Mkfile) -> None:
    path = resolve_in_root(ctx.target, "/" + action.path)
    if path == ctx.target:
        raise SolveError(f"mkfile {action.path}: is a directory")
    owner = ctx.owner(action.chown)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-mkfile")
    try:
        with os.fdopen(handle, "wb") as writer:
            writer.write(action.data.encode("utf-8", "surrogateescape"))
        os.chmod(temp, action.mode & 0o777)
        if owner is not None:
            os.chown(temp, *owner)
        os.rename(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _rm(ctx: _Context, action: Rm) -> None:
    if not action.allow_wildcard:
        _rm_path(ctx.target, action.path, action.allow_not_found)
        return
    for match in resolve_wildcards(ctx.target, _clean_path(action.path),
                                   follow_symlinks=False):
        _rm_path(ctx.target, match, action.allow_not_found)


def _rm_path(root: Path, path: str, allow_not_found: bool) -> None:
    parent, _, base = absolute(path).rpartition("/")
    if not base:
        raise SolveError(f"rm {path}: cannot remove the root directory")
    victim = resolve_in_root(root, parent) / base
    if not allow_not_found and not victim.exists():
        raise SolveError(f'rm "{absolute(path)}": not found',
                         hint="the path does not exist in this stage")
    if victim.is_dir() and not victim.is_symlink():
        shutil.rmtree(victim)
    elif os.path.lexists(victim):
        victim.unlink()



def _symlink(ctx: _Context, action: Symlink) -> None:
    os.symlink(action.old, resolve_in_root(ctx.target, "/" + action.new))


def _copy(ctx: _Context, action: Copy) -> None:
    src_root = ctx.inputs[action.src] if 0 <= action.src < len(ctx.inputs) else None
    if src_root is None:
        raise SolveError(f"copy {action.src_path}: input {action.src} is an empty state "
                         "or missing", hint="copy from a stage or context that has files")
    src, dest = _clean_path(action.src_path), _clean_path(action.dest_path)
    if not action.create_dest_path:
        _require_parent(ctx.target, dest)
    if action.parents:
        _require_literal_includes(src_root, src, action.include)
    matches = [src]
    if action.allow_wildcard:
        matches = resolve_wildcards(src_root, src, follow_symlinks=action.follow_symlinks)
    if not matches and not action.allow_empty_wildcard:
        raise SolveError(f"{src} not found", hint="no file matches the wildcard")
    options = _copy_options(ctx, action)
    for match in matches:
        if action.attempt_unpack and unpack_archive(src_root, match, ctx.target, dest,
                                                    options.owner, ctx.archive_budget()):
            continue
        copy_tree(src_root, match, ctx.target, dest, options)


def _require_literal_includes(src_root: Path, src: str, include: Sequence[str]) -> None:
    """``--parents``: a source path without a wildcard must exist (BuildKit's
    RequiredPaths; testCopyParentsMissingDirectory), where one with a wildcard may match
    nothing.  The include patterns are the source paths below the pivot."""
    for pattern in include:
        if has_wildcard(pattern):
            continue
        full = posixpath.join(src, pattern)
        if not os.path.lexists(resolve_in_root(src_root, full, follow_final=False)):
            raise SolveError(f'"{absolute(full)}": not found',
                             hint="check the path exists in the source stage or image")


def _require_parent(root: Path, dest: str) -> None:
    parent = resolve_in_root(root, dest).parent
    if not os.path.lexists(parent):
        raise SolveError(f"failed to stat {dest}: no such file or directory",
                         hint="create the destination's parent directory first")


def _copy_options(ctx: _Context, action: Copy) -> CopyOptions:
    return CopyOptions(
        owner=ctx.owner(action.chown), mode=parse_chmod(action.chmod),
        parents_mode=octal_chmod(action.chmod),
        copy_dir_contents=action.copy_dir_contents, follow_symlinks=action.follow_symlinks,
        include=action.include, exclude=action.exclude,
        always_replace_existing=action.always_replace_existing)


_HANDLERS: dict[type[object], Callable[[_Context, object], None]] = {
    Copy: _copy,  # type: ignore[dict-item]
    Mkdir: _mkdir,  # type: ignore[dict-item]
    Mkfile: _mkfile,  # type: ignore[dict-item]
    Rm: _rm,  # type: ignore[dict-item]
    Symlink: _symlink,  # type: ignore[dict-item]
}


def _describe(action: FileAction) -> str:
    if isinstance(action, Copy):
        return f"copy {action.src_path} -> {action.dest_path}"
    if isinstance(action, Symlink):
        return f"symlink {action.new} -> {action.old}"
    return f"{action.kind} {action.path}"


def apply_file_actions(actions: Sequence[FileAction], target: Path,
                       inputs: Sequence[Path | None], *,
                       user_db: UserDb | None = None,
                       archive_limits: ArchiveLimits | None = None) -> None:
    """Apply ``actions`` in order to the rootfs ``target``, reading copies' sources from
    ``inputs``.  ``user_db`` resolves ``chown`` names (default: the target's own
    /etc/passwd and /etc/group, read when first needed); ``archive_limits`` bound what
    ADD's archives expand to (default: from the environment, ``DOCKYARD_ADD_MAX``)."""
    ctx = _Context(target, inputs, user_db, archive_limits)
    for action in actions:
        try:
            _HANDLERS[type(action)](ctx, action)
        except DockyardError:
            raise
        except OSError as err:
            where = _strip_roots(str(err.filename2 or err.filename or ""), target, inputs)
            raise SolveError(f"{_describe(action)}: {where + ': ' if where else ''}"
                             f"{err.strerror or err}",
                             hint=DISK_FULL_HINT if is_disk_full(err) else None) from None


def _strip_roots(path: str, target: Path, inputs: Sequence[Path | None]) -> str:
    """A host path shown as the path inside its rootfs."""
    for root in (target, *(i for i in inputs if i is not None)):
        prefix = str(root)
        if path == prefix or path.startswith(prefix + "/"):
            return "/" + path[len(prefix):].lstrip("/")
    return path
