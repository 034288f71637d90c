"""RUN's own flags: ``--mount`` (bind, cache, tmpfs, secret, ssh), ``--network``, ``--security``.

Part of the instruction layer.  ``parse_mounts`` reads the ``--mount`` values as BuildKit's
commands_runmount.go does: a CSV record of ``key=value`` options, BuildKit's defaults
applied.  With no expander, a value holding ``$`` is kept as written for the converter's
second pass (``RunCommand.expand``).  Errors are ``Invalid`` (see ``_flags``).
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._flags import (
    STRING,
    STRINGS,
    Flags,
    Invalid,
    go_bool,
    go_quote,
    go_uint,
    ram_in_bytes,
    suggest,
)

__all__ = ["RUN_FLAGS", "Mount", "parse_mounts", "run_network", "run_security"]

Expander = Callable[[str], str]
RUN_FLAGS = {"mount": STRINGS, "network": STRING, "security": STRING, "device": STRINGS}


@dataclass(frozen=True, slots=True)
class Mount:
    """One ``RUN --mount=...`` (BuildKit's defaults applied by the parser).

    ``type``: bind|cache|tmpfs|secret|ssh.  ``target`` is required except for secret (default
    ``/run/secrets/<id>``, none when ``env`` is set) and ssh (default
    ``/run/buildkit/ssh_agent.<n>``, n counting the ssh mounts of the RUN from 0); BuildKit
    itself only rejects a target resolving to ``/`` (the converter's check).  ``from_``:
    stage name/index or image for bind/cache.  ``read_only``: bind/secret/ssh default True
    (``rw`` flips it), cache/tmpfs default False.  ``id``: cache id (default: the target),
    secret id (default: ``source``, else basename of target), ssh id (default
    ``"default"``).  ``sharing``: shared|private|locked (cache only).
    ``mode``/``uid``/``gid``: ints, None when unset.  ``size``: tmpfs size limit in bytes.
    ``env``: secret exposed as an environment variable.

    Before ``RunCommand.expand`` the values are as written (a value holding ``$`` is not
    validated yet); after it, fully checked.
    """

    type: str
    target: str | None = None
    source: str | None = None
    from_: str | None = None
    read_only: bool = False
    id: str | None = None
    sharing: str = "shared"
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    env: str | None = None



def run_network(flags: Flags) -> str:
    """``--network``: default|none|host (``default`` when absent)."""
    network = flags.string("network")
    if not network:  # absent or empty
        return "default"
    if network not in ("default", "none", "host"):
        raise Invalid(f"invalid network mode {go_quote(network)}", flags.used["network"])
    return network


def run_security(flags: Flags) -> str:
    """``--security``: sandbox|insecure (``sandbox`` when absent)."""
    security = flags.string("security")
    if security is None:
        return "sandbox"
    if security not in ("sandbox", "insecure"):
        raise Invalid(f"security {go_quote(security)} is not valid", flags.used["security"])
    return security


# --------------------------------------------------------------------------- --mount

_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_SHARING = ("shared", "private", "locked")
_MOUNT_KEYS = ("type", "from", "source", "target", "readonly", "id", "sharing", "required",
               "size", "mode", "uid", "gid", "src", "dst", "destination", "ro", "rw",
               "readwrite", "env")


def _csv_fields(text: str) -> list[str]:
    """One CSV record as Go's encoding/csv reads it (``"`` quoting, ``""`` escapes)."""
    fields: list[str] = []
    index = 0
    while True:
        if text.startswith('"', index):
            field, index = _csv_quoted(text, index + 1)
        else:
            end = text.find(",", index)
            field = text[index:] if end < 0 else text[index:end]
            if '"' in field:
                raise Invalid('failed to parse csv mounts: bare " in non-quoted field')
            index = len(text) if end < 0 else end
        fields.append(field)
        if index >= len(text):
            return fields
        index += 1  # the comma


def _csv_quoted(text: str, index: int) -> tuple[str, int]:
    out: list[str] = []
    while True:
        end = text.find('"', index)
        if end < 0:
            raise Invalid('failed to parse csv mounts: extraneous or missing " in quoted-field')
        out.append(text[index:end])
        if text.startswith('"', end + 1):
            out.append('"')
            index = end + 2
            continue
        if end + 1 < len(text) and text[end + 1] != ",":
            raise Invalid('failed to parse csv mounts: extraneous or missing " in quoted-field')
        return "".join(out), end + 1


@dataclass(slots=True)
class _MountDraft:
    """A mount being read; ``read_only`` None until a ro/rw option decides it."""

    type: str = "bind"
    values: dict[str, object] = dataclasses.field(default_factory=dict)
    read_only: bool | None = None
    sharing: str | None = None


def parse_mounts(specs: Sequence[str], expander: Expander | None) -> tuple[Mount, ...]:
    mounts: list[Mount] = []
    for spec in specs:
        draft = _read_mount(spec, expander)
        ssh_index = sum(1 for m in mounts if m.type == "ssh")
        mounts.append(_finish_mount(draft, ssh_index, spec))
    return tuple(mounts)


def _read_mount(spec: str, expander: Expander | None) -> _MountDraft:
    draft = _MountDraft()
    for field in _csv_fields(spec):
        key, has_value, value = field.partition("=")
        key = key.lower()
        if not has_value:
            _mount_bare_key(draft, key, field, spec)
            continue
        if expander is not None:
            value = expander(value)
        elif "$" in value[:-1] and key == "from":
            raise Invalid(f"'{key}' doesn't support variable expansion, define alias stage "
                           "instead", spec)
        elif "$" in value:
            _mount_deferred(draft, key, value)
            continue
        _mount_option(draft, key, value, field, spec)
    return draft


def _mount_bare_key(draft: _MountDraft, key: str, field: str, spec: str) -> None:
    if key in ("readonly", "ro", "readwrite", "rw"):
        draft.read_only = key in ("readonly", "ro")
    elif key == "required" and draft.type in ("secret", "ssh"):
        draft.values["required"] = True
    elif key == "required":
        raise Invalid(f"unexpected key '{key}' for mount type '{draft.type}'", spec)
    else:
        raise Invalid(f"invalid field '{field}' must be a key=value pair", spec)


_MOUNT_ALIASES = {"src": "source", "dst": "target", "destination": "target"}
_MOUNT_STRINGS = {"from": "from_", "source": "source", "target": "target", "id": "id",
                  "env": "env"}


def _mount_deferred(draft: _MountDraft, key: str, value: str) -> None:
    """An unexpanded value: kept as written when it is a plain string option."""
    name = _MOUNT_ALIASES.get(key, key)
    if name in _MOUNT_STRINGS:
        draft.values[_MOUNT_STRINGS[name]] = value


def _mount_option(draft: _MountDraft, key: str, value: str, field: str, spec: str) -> None:
    name = _MOUNT_ALIASES.get(key, key)
    if name in _MOUNT_STRINGS:
        draft.values[_MOUNT_STRINGS[name]] = value
    elif name == "type":
        if value.lower() not in _MOUNT_TYPES:
            raise Invalid(suggest(f"unsupported mount type {go_quote(value)}", value,
                                    _MOUNT_TYPES), spec)
        draft.type = value.lower()
    elif name in ("readonly", "ro", "readwrite", "rw"):
        draft.read_only = _mount_bool(key, value, spec) == (name in ("readonly", "ro"))
    elif name == "required":
        _mount_required(draft, key, value, spec)
    elif name == "size":
        _mount_size(draft, key, value, spec)
    elif name == "sharing":
        if value.lower() not in _SHARING:
            raise Invalid(suggest(f"unsupported sharing value {go_quote(value)}", value,
                                    _SHARING), spec)
        draft.sharing = value.lower()
    elif name in ("mode", "uid", "gid"):
        number = go_uint(value, 8 if name == "mode" else 10)
        if number is None:
            raise Invalid(f"invalid value {value} for {name}", spec)
        draft.values[name] = number
    else:
        raise Invalid(suggest(f"unexpected key '{key}' in '{field}'", key, _MOUNT_KEYS), spec)


def _mount_bool(key: str, value: str, spec: str) -> bool:
    parsed = go_bool(value)
    if parsed is None:
        raise Invalid(f"invalid value for {key}: {value}", spec)
    return parsed


def _mount_required(draft: _MountDraft, key: str, value: str, spec: str) -> None:
    if draft.type not in ("secret", "ssh"):
        raise Invalid(f"unexpected key '{key}' for mount type '{draft.type}'", spec)
    draft.values["required"] = _mount_bool(key, value, spec)


def _mount_size(draft: _MountDraft, key: str, value: str, spec: str) -> None:
    if draft.type != "tmpfs":
        raise Invalid(f"unexpected key '{key}' for mount type '{draft.type}'", spec)
    size = ram_in_bytes(value)
    if size is None:
        raise Invalid(f"invalid value for {key}: {value}", spec)
    draft.values["size"] = size


def _finish_mount(draft: _MountDraft, ssh_index: int, spec: str) -> Mount:
    _check_mount(draft, spec)
    values = draft.values
    read_only = draft.read_only
    if read_only is None:
        read_only = draft.type not in ("cache", "tmpfs")
    mount = Mount(type=draft.type, read_only=read_only, sharing=draft.sharing or "shared",
                  **values)  # type: ignore[arg-type]
    return _mount_defaults(mount, ssh_index)


def _check_mount(draft: _MountDraft, spec: str) -> None:
    values = draft.values
    if draft.type not in ("secret", "ssh", "cache"):
        for name in ("mode", "uid", "gid"):
            if name in values:
                raise Invalid(f"{name} not allowed for {go_quote(draft.type)} type mounts", spec)
    if draft.type == "secret":
        _check_secret(draft, spec)
    if draft.sharing is not None and draft.type != "cache":
        raise Invalid(f"invalid cache sharing set for {draft.type} mount", spec)


def _check_secret(draft: _MountDraft, spec: str) -> None:
    values = draft.values
    if values.get("from_"):
        raise Invalid("secret mount should not have a from", spec)
    if draft.sharing is not None:
        raise Invalid("secret mount should not define sharing", spec)
    if not values.get("source") and not values.get("target") and not values.get("id"):
        raise Invalid("invalid secret mount. one of source, target required", spec)
    if values.get("source") and values.get("id"):
        raise Invalid("both source and id can't be set", spec)


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) or "/"


def _mount_defaults(mount: Mount, ssh_index: int) -> Mount:
    if mount.type == "cache" and not mount.id:
        return dataclasses.replace(mount, id=mount.target)
    if mount.type == "secret":
        ident = mount.id or mount.source or _basename(mount.target or "")
        target = mount.target
        if not target and mount.env is None:
            target = "/run/secrets/" + _basename(ident)
        return dataclasses.replace(mount, id=ident, target=target)
    if mount.type == "ssh":
        return dataclasses.replace(mount, id=mount.id or "default",
                                   target=mount.target or f"/run/buildkit/ssh_agent.{ssh_index}")
    return mount

