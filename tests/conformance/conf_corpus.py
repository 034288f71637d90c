"""The conformance corpus: one folder per case under ``cases/``.

A case folder holds:

- ``Dockerfile``: built as is by BuildKit; for dockyard the base image name ``busybox``
  (in ``FROM``, ``--from=`` and ``from=``) is rewritten to the loopback registry's
  reference (:func:`dockyard_dockerfile`), the only textual difference between the sides.
- ``context/``: the build context (may be absent: an empty context).  Git keeps only the
  executable bit, so :func:`materialise` rebuilds the modes: directories 0755, files 0644
  (0755 when executable), then ``modes`` from ``case.json``.
- ``case.json`` (all keys optional)::

    {"about": "what the case checks",
     "build_args": {"K": "V"}, "target": "stage", "platform": "linux/arm64",
     "secrets": {"id": "value"},                  # --secret id=ID,src=FILE on both sides
     "modes": {"path": "4755"},                   # chmod after copying the context
     "symlinks": {"path": "target"},              # made in the context
     "specials": {"path": "socket 0755"},         # also "fifo MODE", "char MAJ MIN MODE",
                                                  # "block MAJ MIN MODE" (git keeps none)
     "dirs": ["empty/dir"],                       # empty directories (git keeps none)
     "archives": {"a.tar.gz": {"format": "gz", "files": {"x/y.txt": "text"}}},
     "rebuild": {"build_args": {...}},            # build twice; the second is compared
     "expect_failure": {"buildkit": "fragment", "dockyard": "fragment"},
     "ignore_paths": {"path": "why"},             # left out of both trees
     "known_difference": "what dockyard still does differently (the test is xfail,
                          strict: it must fail until dockyard is fixed)"}

- ``buildkit/``: what BuildKit made (``tree.txt`` and ``config.json``, or ``error.txt``),
  recorded by ``python tests/conformance/conf_record.py [case ...]``; for a ``by_hand``
  case these files are written by hand from BuildKit's documented behaviour.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import shutil
import socket
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CASES = Path(__file__).parent / "cases"
#: Every context entry gets this mtime (2021-01-01T00:00:00Z), so trees can tell a copied
#: file's preserved mtime apart from a time the build made up.
CONTEXT_MTIME = 1609459200
BASE_NAME = "busybox"
_BASE_REF = re.compile(
    r"(?m)(^\s*FROM\s+(?:--platform=\S+\s+)?|^\s*ARG\s+\w+=|--from=|from=)busybox\b")


@dataclass(frozen=True)
class Case:
    """One corpus folder, read."""

    name: str
    folder: Path
    dockerfile: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def build_args(self) -> dict[str, str]:
        return dict(self.settings.get("build_args") or {})

    @property
    def target(self) -> str | None:
        return self.settings.get("target")

    @property
    def platform(self) -> str:
        return str(self.settings.get("platform") or "linux/amd64")

    @property
    def secrets(self) -> dict[str, str]:
        return dict(self.settings.get("secrets") or {})

    @property
    def rebuild_args(self) -> dict[str, str] | None:
        rebuild = self.settings.get("rebuild")
        return None if rebuild is None else dict(rebuild.get("build_args") or {})

    @property
    def expect_failure(self) -> dict[str, str] | None:
        return self.settings.get("expect_failure")

    @property
    def by_hand(self) -> bool:
        return bool(self.settings.get("by_hand"))

    @property
    def ignore_paths(self) -> dict[str, str]:
        return dict(self.settings.get("ignore_paths") or {})

    @property
    def known_difference(self) -> str | None:
        return self.settings.get("known_difference")

    @property
    def recorded(self) -> Path:
        return self.folder / "buildkit"


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "Dockerfile").is_file())


def load_case(name: str) -> Case:
    folder = CASES / name
    settings_file = folder / "case.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    return Case(name, folder, (folder / "Dockerfile").read_text(), settings)


def dockyard_dockerfile(text: str, reference: str) -> str:
    """The Dockerfile with the base image ``busybox`` named by ``reference``."""
    return _BASE_REF.sub(lambda m: m.group(1) + reference, text)


def materialise(case: Case, dest: Path) -> Path:
    """Write the case's context (and its Dockerfile) into ``dest``; return ``dest``."""
    source = case.folder / "context"
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=True)
    else:
        dest.mkdir(parents=True)
    _normalise_modes(dest)
    for name in case.settings.get("dirs") or []:
        (dest / name).mkdir(parents=True, exist_ok=True)
    for name, target in (case.settings.get("symlinks") or {}).items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).symlink_to(target)
    for name, spec in (case.settings.get("specials") or {}).items():
        _make_special(dest / name, spec.split())
    for name, spec in (case.settings.get("archives") or {}).items():
        (dest / name).write_bytes(make_archive(spec))
    if not (dest / "Dockerfile").exists():
        (dest / "Dockerfile").write_text(case.dockerfile)
    for name, mode in (case.settings.get("modes") or {}).items():
        os.chmod(dest / name, int(mode, 8))
    _stamp(dest)
    return dest


def _make_special(path: Path, spec: list[str]) -> None:
    """A socket, fifo or device node at ``path`` (``spec``: kind, [major, minor,] mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind, mode = spec[0], int(spec[-1], 8)
    if kind == "socket":
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(path))
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        kinds = {"char": stat.S_IFCHR, "block": stat.S_IFBLK}
        os.mknod(path, kinds[kind] | mode, os.makedev(int(spec[1]), int(spec[2])))
    os.chmod(path, mode)


def _normalise_modes(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)


def _stamp(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        os.utime(path, (CONTEXT_MTIME, CONTEXT_MTIME), follow_symlinks=False)


def make_archive(spec: dict[str, Any]) -> bytes:
    """A tar (``format`` tar, gz, bz2 or xz) of ``files`` (name -> text; a name ending in
    ``/`` is a directory), entries 0644/0755, owner 0, mtime :data:`CONTEXT_MTIME`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, text in spec["files"].items():
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = CONTEXT_MTIME
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            data = text.encode()
            info.mode, info.size = 0o644, len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    kind = spec.get("format", "tar")
    if kind == "gz":
        return gzip.compress(raw, mtime=0)
    if kind == "bz2":
        return bz2.compress(raw)
    if kind == "xz":
        return lzma.compress(raw)
    return raw
