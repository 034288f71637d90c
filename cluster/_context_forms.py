"""The forms of a build context the client takes, as ``docker buildx build`` reads them,
each made a directory on the client before the build (so every form reaches the service,
embedded or ``--endpoint``, as a context manifest with only the missing contents sent):

- a directory;
- ``-``: standard input, a tar archive (plain, gzip, bzip2, xz or zstd, told apart by
  content) that is the context, or else a Dockerfile, with an empty context (buildx: a
  Dockerfile on stdin with ``-f`` too is "ambiguous");
- a git URL (``https://host/repo.git#ref:subdir``, ``git://...``, ``ssh://...``,
  ``git@host:repo.git``; its ssh remotes through the ``--ssh default`` agent, never the
  environment's ``SSH_AUTH_SOCK`` alone, as BuildKit's git source), checked out shallow
  without its ``.git`` (BuildKit's default);
- an ``http(s)://`` URL: an archive is the context, any other file the Dockerfile (with
  an empty context), as BuildKit's dockerui reads a URL.

With a URL or an archive, ``-f`` names a file inside the context (a file of the client
that the context lacks is read from the client, as buildx does).  ``--build-context``
values that are URLs are fetched the same way (``fetch_named``).

The client does the fetching, not the cluster: BuildKit's workers fetch URLs
themselves; here the client has the network and the credentials of the user, and the
cluster only sees files.  Every failure is a ``UsageError`` naming the context.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dockyard.scheduler._errors import DockyardError, UsageError

from ._context import default_dockerfile

__all__ = ["ClientContext", "ContextForms", "is_git_url", "is_url", "parse_build_context"]

#: The scratch file a fetched or piped context lands in before it is told apart.
_BLOB = "blob"
_TREE = "context"
_DOWNLOAD_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class ClientContext:
    """A context made a directory: ``directory``, the Dockerfile's bytes, and the path the
    Dockerfile was read from (its ``<name>.dockerignore`` applies), None for stdin or a
    fetched Dockerfile."""

    directory: Path
    dockerfile: bytes
    dockerfile_path: Path | None


def parse_build_context(value: str) -> tuple[str, str]:
    """``--build-context NAME=VALUE``: the name in the familiar form buildx keys it by
    (``docker.io/library/alpine:latest`` is ``alpine``) and the value, checked for what
    no client can serve."""
    from dockyard.scheduler._reference import parse_reference  # noqa: PLC0415
    from dockyard.scheduler.dockerfile._convert._context import familiar_context_name  # noqa: PLC0415

    name, equals, source = value.partition("=")
    if not equals or not name or not source:
        raise UsageError(f"invalid --build-context {value!r}: invalid context value, "
                         "expected key=value", hint="e.g. --build-context base=./dir or "
                         "base=docker-image://alpine:3.19")
    try:
        parse_reference(name)
    except DockyardError as err:
        raise UsageError(f"invalid --build-context {value!r}: invalid context name {name}: "
                         f"{err.message}", hint="a name is a stage name or an image "
                         "reference, in lower case") from None
    if source.startswith("target:"):
        raise UsageError(f"invalid --build-context {value!r}: target: contexts link the "
                         "targets of a bake file; dockyard build builds one Dockerfile",
                         hint="use a stage of the Dockerfile (FROM/COPY --from=<stage>)")
    if source.startswith("docker-image://"):
        try:
            parse_reference(source.removeprefix("docker-image://"))
        except DockyardError as err:
            raise UsageError(f"invalid --build-context {value!r}: {err.message}") from None
    return familiar_context_name(name), source


def is_git_url(text: str) -> bool:
    """A git repository, as buildx's ``IsRemoteURL`` tells one (scheduler's ``parse_git``
    for ADD, and GitHub's short ``github.com/owner/repo``)."""
    from dockyard.scheduler.dockerfile._convert._sources import parse_git  # noqa: PLC0415

    return parse_git(text) is not None or text.startswith("github.com/")


def is_url(text: str) -> bool:
    return is_git_url(text) or text.startswith(("http://", "https://"))


class ContextForms:
    """Makes contexts directories under one scratch directory, removed by ``close``."""

    def __init__(self, ssh_sockets: Mapping[str, str] | None = None) -> None:
        # the scratch directory of each context made so far (removed by ``close``)
        self._scratch: list[Path] = []
        # ``--ssh`` id -> its agent socket: ssh git remotes use ``default``
        self._ssh = dict(ssh_sockets or {})

    def __enter__(self) -> ContextForms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for path in self._scratch:
            shutil.rmtree(path, ignore_errors=True)
        self._scratch.clear()

    # -- the build's context ------------------------------------------------------------

    def main(self, text: str, file: str | None, stdin: IO[bytes], *,
             keep_git_dir: bool = False) -> ClientContext:
        """The context ``text`` names and its Dockerfile (``-f``: ``file``);
        ``keep_git_dir``: a git checkout keeps its ``.git`` (BuildKit's
        ``BUILDKIT_CONTEXT_KEEP_GIT_DIR`` build arg)."""
        if text == "-":
            if file == "-":
                raise UsageError("invalid argument: can't use stdin for both build context "
                                 "and dockerfile", hint="pass the Dockerfile with -f FILE, "
                                 "or a directory as the context")
            return self._from_blob("stdin", self._stdin_blob(stdin), file, stdin)
        if is_git_url(text):
            return self._with_dockerfile(self._git(text, keep_git_dir), file, stdin)
        if text.startswith(("http://", "https://")):
            return self._from_blob(text, self._download(text), file, stdin)
        directory = Path(text)
        if not directory.is_dir():
            raise UsageError(f"build context {text!r} is not a directory",
                             hint="give a directory, '-' (stdin), a git URL or an "
                                  "http(s) URL of an archive")
        return self._with_dockerfile(directory, file, stdin, local=True)

    def _from_blob(self, where: str, blob: Path, file: str | None,
                   stdin: IO[bytes]) -> ClientContext:
        """``blob`` unpacked as the context when it is an archive; else the Dockerfile
        (with an empty context)."""
        tree = blob.parent / _TREE
        if _unpack(blob, tree, where):
            return self._with_dockerfile(tree, file, stdin)
        if file is not None:
            raise UsageError("ambiguous Dockerfile source: both stdin and flag correspond "
                             "to Dockerfiles" if where == "stdin" else
                             f"the build context {where} is a Dockerfile, not an archive: "
                             "there is no context to read -f from", hint="leave out -f")
        tree.mkdir()
        return ClientContext(tree, blob.read_bytes(), None)

    def _with_dockerfile(self, directory: Path, file: str | None, stdin: IO[bytes], *,
                         local: bool = False) -> ClientContext:
        if file == "-":
            return ClientContext(directory, _read_all(stdin), None)
        if local or file is None:
            path = Path(file) if file is not None else default_dockerfile(directory)
        else:  # a remote context's -f is within it, else a file of the client's
            inside = directory / file
            path = inside if inside.exists() or not Path(file).is_file() else Path(file)
        try:
            return ClientContext(directory, path.read_bytes(), path)
        except OSError as exc:
            raise UsageError(f"cannot read Dockerfile {_shown(path, directory)!r}: "
                             f"{exc.strerror or exc}") from None

    # -- --build-context values ---------------------------------------------------------

    def fetch_named(self, name: str, url: str) -> Path:
        """The directory a ``--build-context name=URL`` stands for: a git checkout or an
        unpacked archive (a URL of anything else is refused, as BuildKit refuses it)."""
        if is_git_url(url):
            return self._git(url)
        blob = self._download(url)
        tree = blob.parent / _TREE
        if not _unpack(blob, tree, url):
            raise UsageError(f"invalid --build-context {name}={url}: the URL is neither a "
                             "git repository nor an archive",
                             hint="name a git repository (.git) or a .tar[.gz] archive")
        return tree

    # -- fetching -----------------------------------------------------------------------

    def _new_scratch(self) -> Path:
        scratch = Path(tempfile.mkdtemp(prefix="dockyard-context-"))
        self._scratch.append(scratch)
        return scratch

    def _git(self, url: str, keep_git_dir: bool = False) -> Path:
        from dockyard.scheduler.dockerfile._convert._sources import parse_git  # noqa: PLC0415
        from dockyard.workers._fetch import fetch_git  # noqa: PLC0415

        source = parse_git(url if not url.startswith("github.com/") else _github(url))
        if source is None:
            raise UsageError(f"the build context {url} is not a git URL")
        remote = source.remote
        ssh = self._ssh.get("default") if _is_ssh(remote) else None
        if _is_ssh(remote) and ssh is None:
            raise UsageError(f"the build context {url} is an ssh git URL: it needs an ssh "
                             "agent", hint="pass --ssh default (the agent of SSH_AUTH_SOCK)")
        dest = self._new_scratch() / _TREE
        try:
            return fetch_git(remote, dest, ref=source.ref, subdir=source.subdir,
                             keep_git_dir=keep_git_dir,
                             what="build context", ssh_socket=ssh)
        except DockyardError as err:
            raise UsageError(err.message, hint=err.hint) from None

    def _stdin_blob(self, stdin: IO[bytes]) -> Path:
        blob = self._new_scratch() / _BLOB
        with open(blob, "wb") as out:
            shutil.copyfileobj(stdin, out, 1 << 20)
        return blob

    def _download(self, url: str) -> Path:
        from dockyard.workers._fetch import redact_url  # noqa: PLC0415

        blob = self._new_scratch() / _BLOB
        import urllib.error  # noqa: PLC0415 -- only a URL context pays for urllib
        import urllib.request  # noqa: PLC0415

        request = urllib.request.Request(url, headers={"User-Agent": "dockyard"})
        try:
            with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT) as response, \
                    open(blob, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise UsageError(f"cannot fetch the build context {redact_url(url)}: {reason}",
                             hint="check the URL is reachable from this machine") from None
        return blob


def _is_ssh(remote: str) -> bool:
    return remote.startswith(("ssh://", "git@")) or (
        "://" not in remote and "@" in remote.split(":", 1)[0])


def _read_all(stdin: IO[bytes]) -> bytes:
    return stdin.read()


def _github(url: str) -> str:
    """``github.com/owner/repo[#frag]`` as the https git URL buildx makes of it."""
    remote, hash_, fragment = url.partition("#")
    remote = "https://" + remote + ("" if remote.endswith(".git") else ".git")
    return remote + hash_ + fragment


def _shown(path: Path, directory: Path) -> str:
    try:
        return str(path.relative_to(directory))
    except ValueError:
        return str(path)


def _unpack(blob: Path, tree: Path, where: str) -> bool:
    """Unpack the archive ``blob`` into the new directory ``tree`` (names cleaned, links
    kept inside it, as ADD unpacks); False, nothing made, when it is no archive."""
    from dockyard.workers._archive import unpack_archive  # noqa: PLC0415

    owner = (os.getuid(), os.getgid())
    try:
        return unpack_archive(blob.parent, blob.name, blob.parent, tree.name, owner)
    except DockyardError as err:
        message = err.message.replace(f"ADD {blob.name}", f"the build context {where}", 1)
        raise UsageError(message, hint=err.hint) from None
