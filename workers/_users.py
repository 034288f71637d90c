"""Who a RUN runs as: ``user[:group]`` resolved through the root filesystem's /etc/passwd and
/etc/group, the way BuildKit (executor/oci/user.go) and runc (libcontainer/user,
``GetExecUser``) do it.

- Only ``uid:gid``, both numeric, needs no file (BuildKit's fast path); its home is still
  looked up by uid, as runc does when it sets ``HOME``.
- Otherwise the user part matches a passwd entry: a number always as a uid, anything else
  as a name; the first match wins.  An unknown name is an error; an unknown number is used
  as is (gid 0, home ``/``).  ``""`` (no USER) is uid 0, looked up the same way.
- An explicit group matches a group entry: a number always as a gid, anything else as a
  name (unknown number: used as is; unknown name: an error).  Without an explicit group,
  the gid is the passwd entry's, and the supplementary groups are every group whose
  member list names the matched user.
- The process's additional gids are its primary gid followed by those supplementary
  groups, without repeats: ``id -G`` of root in busybox is ``0 10``, of ``1001:1001`` just
  ``1001``.  BuildKit adds the primary gid since CVE-2023-25173 (GHSA-hmfx-3pcx-653p), so
  that groups an image gives its user's primary group are not dropped.

Paths inside the root are resolved with ``path_in_root``: symlinks are followed as if the
root were ``/``, so a hostile image can never make us read or write outside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from dockyard.scheduler._errors import ExecError, SolveError

from ._copy import resolve_in_root

__all__ = ["ResolvedUser", "UserError", "path_in_root", "resolve_user"]

_MAX_ID = 2**31 - 1


class UserError(ExecError):
    """A RUN's user or group that cannot be resolved in its image."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, exit_code=-1, hint=hint)


@dataclass(frozen=True, slots=True)
class ResolvedUser:
    """Numeric identity of a process: ``home`` is only used for ``HOME`` when unset."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


@dataclass(frozen=True, slots=True)
class _Entry:
    """One line of /etc/passwd (``members`` empty) or /etc/group (``home`` empty)."""

    name: str
    number: int
    gid: int = 0
    home: str = ""
    members: tuple[str, ...] = ()


def path_in_root(root: Path, path: str) -> Path:
    """``path`` (absolute or relative to ``/``) inside ``root``, symlinks resolved within it
    (``_copy.resolve_in_root``).

    Missing components are kept as they are; a symlink loop raises ``UserError``."""
    try:
        return resolve_in_root(root, path)
    except SolveError as err:  # resolve_in_root's only error: a symlink loop
        raise UserError(f"too many levels of symbolic links in {path!r} under {root}") from err


def _numeric(text: str) -> int | None:
    if not text.isdigit() or not text.isascii():
        return None
    value = int(text)
    if value > _MAX_ID:
        raise UserError(f"user or group id {text} is out of range (0..{_MAX_ID})")
    return value


def _fast_path(spec: str) -> ResolvedUser | None:
    """BuildKit's ``ParseUIDGID``: ``uid:gid``, both numeric."""
    user, has_group, group = spec.partition(":")
    if not has_group:
        return None
    uid, gid = _numeric(user), _numeric(group)
    if uid is None or gid is None:
        return None
    return ResolvedUser(uid=uid, gid=gid, additional_gids=(gid,))


def _read_entries(path: Path, *, passwd: bool) -> Iterator[_Entry]:
    """Parse one file; missing or unreadable -> no entries (runc treats it as empty)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        entry = _parse_line(line.strip(), passwd=passwd)
        if entry is not None:
            yield entry


def _parse_line(line: str, *, passwd: bool) -> _Entry | None:
    if not line or line.startswith("#"):
        return None
    fields = line.split(":")
    fields += [""] * (7 - len(fields))
    number = _lenient_int(fields[2])
    if passwd:
        return _Entry(name=fields[0], number=number, gid=_lenient_int(fields[3]),
                      home=fields[5])
    members = tuple(m for m in fields[3].split(",") if m)
    return _Entry(name=fields[0], number=number, members=members)


def _lenient_int(text: str) -> int:
    """runc parses id fields with Atoi and ignores failures (the field stays 0)."""
    try:
        return int(text)
    except ValueError:
        return 0


def _find(entries: Iterator[_Entry], wanted: str) -> _Entry | None:
    """runc's match: a number is always an id, anything else a name."""
    number = _numeric(wanted)
    for entry in entries:
        if (entry.number == number) if number is not None else (entry.name == wanted):
            return entry
    return None


def resolve_user(root: Path, spec: str) -> ResolvedUser:
    """Resolve ``spec`` (``user``, ``user:group``, names or ids) against the rootfs ``root``."""
    passwd_path = path_in_root(root, "/etc/passwd")
    fast = _fast_path(spec)
    if fast is not None:
        entry = _find(_read_entries(passwd_path, passwd=True), str(fast.uid))
        return fast if entry is None else replace(fast, home=entry.home or "/")
    user_arg, _, group_arg = spec.partition(":")
    group_path = path_in_root(root, "/etc/group")
    user = _resolve_passwd(passwd_path, user_arg or "0")
    if group_arg:
        gid = _resolve_group(group_path, group_arg)
        return ResolvedUser(uid=user.number, gid=gid, additional_gids=(gid,),
                            home=user.home or "/")
    extra = _member_gids(group_path, user.name) if user.name else ()
    return ResolvedUser(uid=user.number, gid=user.gid,
                        additional_gids=tuple(dict.fromkeys((user.gid, *extra))),
                        home=user.home or "/")


def _resolve_passwd(path: Path, user_arg: str) -> _Entry:
    found = _find(_read_entries(path, passwd=True), user_arg)
    if found is not None:
        return found
    uid = _numeric(user_arg)
    if uid is None:
        raise UserError(f"unable to find user {user_arg}: no matching entries in "
                        f"/etc/passwd ({path})",
                        hint="create the user in an earlier RUN, or use a numeric uid")
    return _Entry(name="", number=uid, home="/")


def _resolve_group(path: Path, group_arg: str) -> int:
    found = _find(_read_entries(path, passwd=False), group_arg)
    if found is not None:
        return found.number
    gid = _numeric(group_arg)
    if gid is None:
        raise UserError(f"unable to find group {group_arg}: no matching entries in "
                        f"/etc/group ({path})",
                        hint="create the group in an earlier RUN, or use a numeric gid")
    return gid


def _member_gids(path: Path, user_name: str) -> tuple[int, ...]:
    return tuple(entry.number for entry in _read_entries(path, passwd=False)
                 if user_name in entry.members)
