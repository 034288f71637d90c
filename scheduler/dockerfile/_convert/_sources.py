"""ADD's remote sources: how BuildKit tells a git repository from an HTTP file."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_SCP_LIKE = re.compile(r"(?:[\w.-]+@)?[\w.-]+:(?!//)[^\s]+")


@dataclass(frozen=True, slots=True)
class GitSource:
    remote: str
    ref: str = ""
    subdir: str = ""

    @property
    def identifier(self) -> str:
        return "git://" + _strip_scheme(self.remote) + (f"#{self.ref}" if self.ref else "")


def is_http(src: str) -> bool:
    return src.startswith(("http://", "https://")) and parse_git(src) is None


def parse_git(src: str) -> GitSource | None:
    """``git://…``, ``ssh://…``, ``git@host:path`` and ``http(s)://….git`` are git
    sources; a ``#ref:subdir`` fragment picks the ref and the directory."""
    remote, _, fragment = src.partition("#")
    if not _looks_like_git(remote):
        return None
    ref, _, subdir = fragment.partition(":")
    return GitSource(remote=remote, ref=ref, subdir=subdir)


def _looks_like_git(remote: str) -> bool:
    if remote.startswith(("git://", "ssh://", "git@")):
        return True
    if remote.startswith(("http://", "https://")):
        return urlsplit(remote).path.endswith(".git")
    return False


def _strip_scheme(remote: str) -> str:
    if "://" in remote:
        return remote.split("://", 1)[1].split("@", 1)[-1]
    if _SCP_LIKE.fullmatch(remote):
        host, _, path = remote.split("@", 1)[-1].partition(":")
        return f"{host}/{path}"
    return remote


def http_filename(url: str) -> str:
    base = posixpath.basename(urlsplit(url).path)
    return base if base not in ("", ".", "/") else "__unnamed__"
