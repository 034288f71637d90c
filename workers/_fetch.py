"""ADD's remote sources, fetched into a directory that a copy then reads.

- ``fetch_http``: one http(s) file, as BuildKit's http source stores it: named by the
  ``filename`` attribute, else the response's Content-Disposition, else the URL path's
  last element (``index`` when empty); mode 0600, owner root, mtime from Last-Modified;
  ``checksum`` (``sha256:<hex>``) verified before the file appears.
- ``resolve_git``: the commit a ref of a repository names now (``git ls-remote``; a full
  commit id is its own answer) -- the git source's identity, as BuildKit keys it, so a
  rebuild hits the cache while the ref stays put and misses when it moves;
- ``fetch_git``: one ref of a git repository (``git fetch --depth 1``; default HEAD),
  optionally checked against the commit ``resolve_git`` gave, optionally only
  ``subdir``, with or without its ``.git`` directory.

Failures are ``SolveError``s naming the URL (credentials removed) and what to do.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from dockyard.scheduler._errors import SolveError

__all__ = ["GitCall", "fetch_git", "fetch_http", "redact_url", "resolve_git"]

_HEX = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def redact_url(url: str) -> str:
    """``url`` without the password of its user-info part."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:xxxxx@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _expected_digest(url: str, checksum: str) -> str | None:
    if not checksum:
        return None
    algorithm, _, value = checksum.partition(":")
    if algorithm != "sha256" or not _HEX.fullmatch(value):
        raise SolveError(f"ADD {redact_url(url)}: unsupported checksum {checksum!r}",
                         hint="use --checksum=sha256:<64 lowercase hex digits>")
    return value


def _disposition_name(header: str | None) -> str:
    if not header:
        return ""
    message = Message()
    message["content-disposition"] = header
    return message.get_filename() or ""


def _file_name(url: str, given: str, disposition: str | None) -> str:
    name = given or _disposition_name(disposition)
    if not name:
        name = unquote(urlsplit(url).path).rstrip("/").rpartition("/")[2]
    name = name.replace("\\", "/").rpartition("/")[2]
    return name if name not in ("", ".", "..") else "index"


def _mtime(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None


async def fetch_http(url: str, dest_dir: Path, *, filename: str = "", checksum: str = "",
                     session: aiohttp.ClientSession | None = None,
                     timeout: float = 600.0) -> Path:
    """Download ``url`` into ``dest_dir`` (which must exist); return the file's path."""
    expected = _expected_digest(url, checksum)
    shown = redact_url(url)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(aiohttp.ClientSession())
            response = await stack.enter_async_context(
                session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)))
            if response.status >= 400:
                raise SolveError(f"ADD {shown}: invalid response status {response.status}",
                                 hint="check the URL is reachable from the build machine")
            name = _file_name(url, filename, response.headers.get("Content-Disposition"))
            mtime = _mtime(response.headers.get("Last-Modified"))
            temp, digest = await _download(response, dest_dir)
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise SolveError(f"ADD {shown}: download failed: {err or type(err).__name__}",
                         hint="check the URL and the network, then retry") from None
    return _publish(temp, dest_dir / name, digest, expected, shown, mtime)


async def _download(response: aiohttp.ClientResponse, dest_dir: Path) -> tuple[Path, str]:
    handle, name = tempfile.mkstemp(dir=dest_dir, prefix=".download-")
    hasher = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as writer:
            async for chunk in response.content.iter_chunked(1 << 20):
                hasher.update(chunk)
                writer.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), hasher.hexdigest()


def _publish(temp: Path, final: Path, digest: str, expected: str | None, shown: str,
             mtime: float | None) -> Path:
    if expected is not None and digest != expected:
        temp.unlink(missing_ok=True)
        raise SolveError(f"ADD {shown}: digest mismatch sha256:{digest}: sha256:{expected}",
                         hint="the file changed or --checksum is wrong")
    os.chmod(temp, 0o600)
    if mtime is not None:
        os.utime(temp, (mtime, mtime))
    os.rename(temp, final)
    return final


# --- git --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GitCall:
    """How a git fetch runs and is reported: ``what`` it serves (``ADD``, ``build
    context``: the errors start with it and the URL, credentials removed), ``ssh_socket``
    the agent its ssh remotes authenticate through (None: git's own environment)."""

    shown: str
    what: str = "ADD"
    ssh_socket: str | None = None

    @property
    def label(self) -> str:
        return f"{self.what} {self.shown}"


def _git(args: list[str], cwd: Path, call: GitCall, timeout: float) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true",
           "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
    if call.ssh_socket is not None:
        env["SSH_AUTH_SOCK"] = call.ssh_socket
    try:
        done = subprocess.run(["git", "-c", "advice.detachedHead=false", *args], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SolveError(f"{call.label}: git failed: {err}",
                         hint="is git installed and the repository reachable?") from None
    if done.returncode != 0:
        tail = " ".join(done.stderr.replace(call.shown, "<url>").split()[-30:])
        raise SolveError(f"{call.label}: git {args[0]} failed: {tail}",
                         hint="check the repository URL and the ref")
    return done.stdout


def _ref_candidates(ref: str) -> list[str]:
    """The names ``ref`` may stand for, in git's order (tags before branches); an
    annotated tag's peeled line (``^{}``) before the tag object itself."""
    if not ref:
        return ["HEAD"]
    if ref.startswith("refs/"):
        return [f"{ref}^{{}}", ref]
    return [f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref]


def resolve_git(remote: str, ref: str = "", *, timeout: float = 120.0) -> str:
    """The commit id ``ref`` (default HEAD) of ``remote`` names now."""
    if _COMMIT.fullmatch(ref):
        return ref
    shown = redact_url(remote)
    listing = _git(["ls-remote", remote], Path("/"), GitCall(shown), timeout)
    names = {name: oid for oid, _, name in
             (line.partition("\t") for line in listing.splitlines())}
    for name in _ref_candidates(ref):
        if name in names:
            return names[name]
    raise SolveError(f"ADD {shown}: ref {ref or 'HEAD'!r} not found in the repository",
                     hint="check the #ref part of the URL (a branch, a tag or a commit id)")


def fetch_git(remote: str, dest: Path, *, ref: str = "", subdir: str = "",
              keep_git_dir: bool = False, commit: str = "", timeout: float = 600.0,
              what: str = "ADD", ssh_socket: str | None = None) -> Path:
    """Check out ``ref`` of ``remote`` (shallow) into the new directory ``dest``; return it.
    ``commit``, when given, is what the ref must name (it moved otherwise: an error).
    ``subdir`` keeps only that directory's content (then ``.git`` is never kept).
    ``what`` and ``ssh_socket``: see ``GitCall``."""
    shown = GitCall(redact_url(remote), what, ssh_socket)
    work = Path(tempfile.mkdtemp(prefix=".git-", dir=dest.parent))
    try:
        _git(["init", "-q", str(work)], dest.parent, shown, timeout)
        _git(["fetch", "-q", "--depth", "1", "--no-tags", remote, ref or "HEAD"], work,
             shown, timeout)
        _check_commit(work, commit, ref, shown, timeout)
        _git(["checkout", "-q", "FETCH_HEAD"], work, shown, timeout)
        _place_checkout(work, dest, subdir, keep_git_dir, shown)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _check_commit(work: Path, commit: str, ref: str, shown: GitCall, timeout: float) -> None:
    if not commit:
        return
    fetched = _git(["rev-parse", "FETCH_HEAD^{commit}"], work, shown, timeout).strip()
    if fetched != commit:
        raise SolveError(f"{shown.label}: ref {ref or 'HEAD'!r} moved during the build "
                         f"(from {commit[:12]} to {fetched[:12]})", hint="build again")


def _place_checkout(work: Path, dest: Path, subdir: str, keep_git_dir: bool,
                    shown: GitCall) -> None:
    if not keep_git_dir or subdir:
        shutil.rmtree(work / ".git")
    parts = [p for p in subdir.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SolveError(f"{shown.label}: subdir {subdir!r} climbs out of the repository")
    source = work.joinpath(*parts)
    if source.is_symlink() or not source.is_dir():
        raise SolveError(f"{shown.label}: subdir {subdir!r} is not a directory in the "
                         "repository", hint="check the #ref:subdir part of the URL")
    os.rename(source, dest)

