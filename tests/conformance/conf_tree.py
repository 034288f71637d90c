"""Both sides' images, read the same way: a docker-archive tar (``docker save`` for
BuildKit, dockyard's ``docker`` output) -> its root filesystem as listing lines and its
config as a normalised dict.

Normalisations, each because BuildKit itself varies or does not define the value:

- mtimes: only their class is kept -- ``ctx`` (the context's fixed mtime, so a copy kept
  it), ``0`` (the base image's), ``*`` (made up by the build: the time of the build);
  directories get ``-``: a directory's mtime moves whenever an entry is written into it,
  and BuildKit 20.10 does not keep a copied directory's mtime while newer ones do.
- hardlinks: every member of a link group is listed as the file it shares (type ``f``,
  its mode, owner, size and content) plus ``=<first path of the group>``; which path a
  tar names first is the writer's choice.
- files: size and sha256 of the content (first 16 hex digits).
- config: only what a user sees (``Env``, ``Cmd``, ``Entrypoint``, ``User``,
  ``WorkingDir``, ``Labels``, ``ExposedPorts``, ``Volumes``, ``StopSignal``, ``Shell``,
  ``Healthcheck``, ``OnBuild``), ``architecture``/``os``/``variant``, the number of
  layers, and each history entry's ``created_by`` and ``empty_layer`` (timestamps and
  BuildKit's ``comment`` dropped); null and empty values are dropped.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from conf_corpus import CONTEXT_MTIME

CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "User", "WorkingDir", "Labels", "ExposedPorts",
               "Volumes", "StopSignal", "Shell", "Healthcheck", "OnBuild")
_KINDS = {tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l", tarfile.FIFOTYPE: "p",
          tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b"}


@dataclass
class Entry:
    """One path of the merged filesystem."""

    info: tarfile.TarInfo
    digest: str = ""  # sha256 of a regular file's content


def read_archive(archive: Path) -> tuple[list[str], dict[str, Any]]:
    """The tree listing and the normalised config of a docker-archive's only image."""
    with tarfile.open(archive) as outer:
        manifest = json.load(_member(outer, "manifest.json"))[0]
        config = json.load(_member(outer, manifest["Config"]))
        entries: dict[str, Entry] = {}
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=_member(outer, layer), mode="r:*") as inner:
                apply_layer(entries, inner)
    return listing(entries), normalise_config(config)


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    extracted = archive.extractfile(name)
    if extracted is None:
        raise AssertionError(f"the archive has no file {name}")
    return extracted


def apply_layer(entries: dict[str, Entry], layer: tarfile.TarFile) -> None:
    """Apply one layer: ``.wh.<name>`` deletes ``<name>`` and what is under it,
    ``.wh..wh..opq`` empties its directory of what lower layers had."""
    this_layer: set[str] = set()
    for member in layer:
        path = clean(member.name)
        parent, _, base = path.rpartition("/")
        if base == ".wh..wh..opq":
            delete_under(entries, parent, keep=this_layer)
        elif base.startswith(".wh."):
            gone = f"{parent}/{base[4:]}".lstrip("/")
            entries.pop(gone, None)
            delete_under(entries, gone)
        elif path:
            this_layer.add(path)
            old = entries.get(path)
            if old is not None and old.info.isdir() and not member.isdir():
                delete_under(entries, path)
            entries[path] = Entry(member, _digest(layer, member))


def clean(name: str) -> str:
    return name.removeprefix("./").strip("/")


def _digest(layer: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    if not member.isreg():
        return ""
    stream = layer.extractfile(member)
    assert stream is not None
    return hashlib.sha256(stream.read()).hexdigest()[:16]


def delete_under(entries: dict[str, Entry], directory: str,
                 keep: set[str] | frozenset[str] = frozenset()) -> None:
    prefix = directory + "/" if directory else ""
    for path in [p for p in entries
                 if p.startswith(prefix) and p != directory and p not in keep]:
        del entries[path]


def listing(entries: dict[str, Entry]) -> list[str]:
    """One line per path, sorted: ``<kind> <mode> <uid>:<gid> <mtime class> <path>`` then
    `` <size> <sha>`` for files, `` -> <target>`` for symlinks, `` <major>,<minor>`` for
    devices and `` =<group>`` for hardlinked files."""
    groups = _link_groups(entries)
    lines = []
    for path, entry in entries.items():
        info, digest = entry.info, entry.digest
        if info.islnk():
            target = entries.get(clean(info.linkname))
            if target is None:
                lines.append(f"h ? ?:? ? {path} => {clean(info.linkname)} (missing)")
                continue
            info, digest = target.info, target.digest
        lines.append(_line(path, info, digest, groups.get(path)))
    return sorted(lines, key=lambda line: line.split(" ", 5)[4])


def _line(path: str, info: tarfile.TarInfo, digest: str, group: str | None) -> str:
    kind = _KINDS.get(info.type, "f")
    text = f"{kind} {info.mode & 0o7777:04o} {info.uid}:{info.gid} {_mtime(info)} {path}"
    if kind == "f":
        text += f" {info.size} {digest}"
    elif kind == "l":
        text += f" -> {info.linkname}"
    elif kind in "cb":
        text += f" {info.devmajor},{info.devminor}"
    return text + (f" ={group}" if group else "")


def _mtime(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "-"
    mtime = int(info.mtime)
    return "ctx" if mtime == CONTEXT_MTIME else "0" if mtime == 0 else "*"


def _link_groups(entries: dict[str, Entry]) -> dict[str, str]:
    """path -> the smallest path of its hardlink group, for paths in a group of two+."""
    parent: dict[str, str] = {}

    def find(path: str) -> str:
        while parent.get(path, path) != path:
            path = parent[path]
        return path

    for path, entry in entries.items():
        if entry.info.islnk():
            a, b = find(path), find(clean(entry.info.linkname))
            parent[max(a, b)] = min(a, b)
    groups: dict[str, str] = {}
    for path in list(parent):
        groups[path] = find(path)
    for root in set(groups.values()):
        groups[root] = root
    return groups


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """What the comparison sees of an image config (see the module docstring)."""
    settings = config.get("config") or {}
    kept = {key: settings[key] for key in CONFIG_KEYS if settings.get(key) not in (None, {})}
    history = [{"created_by": item.get("created_by", ""),
                "empty_layer": bool(item.get("empty_layer"))}
               for item in config.get("history") or []]
    platform = {key: config[key] for key in ("architecture", "os", "variant")
                if config.get(key)}
    return {**platform, "config": kept, "history": history,
            "layers": len((config.get("rootfs") or {}).get("diff_ids") or [])}
