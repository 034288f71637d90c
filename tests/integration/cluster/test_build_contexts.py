"""The context forms of ``dockyard build`` and ``--build-context``, as a user runs them: the
CLI as a subprocess on the embedded service (one for the module, stopped at the end),
each build's effect read from its ``-o type=local`` (or OCI) output.

Remote contexts come from loopback servers: a bare repository behind ``git daemon`` and
a directory behind a plain HTTP server (tests/support/served.py)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.served import ServedGit, serve_git, serve_http
from support.ssh_tools import make_key

PROJECT = Path(__file__).resolve().parents[3]
FAILED = "ERROR: failed to solve: "


@dataclass
class Cli:
    root: Path
    work: Path
    busybox: str
    git: ServedGit
    http: str  # base URL of ``served`` below
    served: Path  # the HTTP server's directory
    bare: Path  # the bare repository ``git`` serves

    def build(self, *argv: str, stdin: bytes = b"", env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[bytes]:
        environ = {**os.environ, "DOCKYARD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT),
                   **(env or {})}
        environ.pop("SSH_AUTH_SOCK", None)
        return subprocess.run([sys.executable, "-m", "dockyard", "build", "--progress=plain",
                               *argv], cwd=self.work, env=environ, input=stdin,
                              capture_output=True, timeout=180, check=False)

    def built(self, *argv: str, stdin: bytes = b"", env: dict[str, str] | None = None
              ) -> Path:
        """Build into a new local output directory; its path."""
        out = Path(tempfile.mkdtemp(dir=self.work, prefix="out-"))
        done = self.build("-o", f"type=local,dest={out}", *argv, stdin=stdin, env=env)
        assert done.returncode == 0, done.stderr.decode()
        return out

    def error(self, *argv: str, stdin: bytes = b"") -> str:
        done = self.build(*argv, stdin=stdin)
        assert done.returncode == 1, done.stderr.decode()
        text = done.stderr.decode()
        assert "Traceback" not in text
        # a failed build as buildx reports it; an error before the build as the CLI's own
        prefix = FAILED if FAILED in text else "error: "
        return text[text.index(prefix) + len(prefix):].splitlines()[0]

    def directory(self, files: dict[str, str]) -> Path:
        path = Path(tempfile.mkdtemp(dir=self.work, prefix="ctx-"))
        write(path, files)
        return path


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its text (directories left out)."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


def tar_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cli(busybox_image: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    root = Path(tempfile.mkdtemp(prefix="dyc-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="dyc-work-"))
    served = work / "served"
    served.mkdir()
    git_dir = tmp_path_factory.mktemp("git")
    with serve_git(git_dir) as git, serve_http(served) as http:
        git.commit("sub/Dockerfile", "FROM scratch\nCOPY . /ctx/\n")
        try:
            yield Cli(root, work, busybox_image.reference, git, http, served,
                      git_dir / "served" / "repo.git")
        finally:
            subprocess.run([sys.executable, "-m", "dockyard", "stop"], timeout=90, check=False,
                           env={**os.environ, "DOCKYARD_ROOT": str(root),
                                "PYTHONPATH": str(PROJECT)}, capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


# --- CONTEXT "-" -------------------------------------------------------------------------

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "tar": lambda data: data, "gzip": gzip.compress, "bzip2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_a_tar_on_stdin_is_the_context(cli: Cli, kind: str) -> None:
    archive = tar_of({"Dockerfile": "FROM scratch\nCOPY a.txt sub/ /\n", "a.txt": "A\n",
                      "sub/b.txt": "B\n", "left.txt": "not copied\n"})
    out = cli.built("-", stdin=COMPRESSORS[kind](archive))
    assert tree(out) == {"a.txt": "A\n", "b.txt": "B\n"}


def test_a_tar_on_stdin_with_f_names_a_dockerfile_inside_it(cli: Cli) -> None:
    archive = tar_of({"build/alt.Dockerfile": "FROM scratch\nCOPY a.txt /from-alt\n",
                      "a.txt": "A\n"})
    out = cli.built("-f", "build/alt.Dockerfile", "-", stdin=gzip.compress(archive))
    assert tree(out) == {"from-alt": "A\n"}
    broken = tar_of({"build/alt.Dockerfile": "FROM scratch\nCOPY missing /\n"})
    assert cli.error("-f", "build/alt.Dockerfile", "-", stdin=broken).startswith(
        "build/alt.Dockerfile:2")


def test_a_dockerfile_on_stdin_has_an_empty_context(cli: Cli) -> None:
    dockerfile = b"FROM scratch\nCOPY <<EOF /hello\nfrom stdin\nEOF\nCOPY . /ctx/\n"
    out = cli.built("-", stdin=dockerfile)
    assert tree(out) == {"hello": "from stdin\n"}


STDIN_ERRORS = [
    ("both", ["-f", "-", "-"], b"FROM scratch\n",
     "invalid argument: can't use stdin for both build context and dockerfile"),
    ("ambiguous", ["-f", "Dockerfile", "-"], b"FROM scratch\n",
     "ambiguous Dockerfile source: both stdin and flag correspond to Dockerfiles"),
]


@pytest.mark.parametrize(("argv", "stdin", "message"), [c[1:] for c in STDIN_ERRORS],
                         ids=[c[0] for c in STDIN_ERRORS])
def test_stdin_refusals(cli: Cli, argv: list[str], stdin: bytes, message: str) -> None:
    assert cli.error(*argv, stdin=stdin) == message


# --- git and http(s) URLs as the context -------------------------------------------------


def test_a_git_url_with_ref_and_subdir_is_the_context(cli: Cli) -> None:
    out = cli.built(f"{cli.git.url}#main:sub")
    assert tree(out) == {"ctx/Dockerfile": "FROM scratch\nCOPY . /ctx/\n", "ctx/f": "f1\n"}


def test_a_git_url_at_a_tag_with_f_inside_the_repository(cli: Cli) -> None:
    # v1 predates sub/Dockerfile: -f names a file the client has, read from the client
    dockerfile = cli.directory({"Dockerfile.git": "FROM scratch\nCOPY . /repo/\n"})
    out = cli.built("-f", str(dockerfile / "Dockerfile.git"), f"{cli.git.url}#v1")
    assert tree(out) == {"repo/README": "v1\n", "repo/sub/f": "f1\n"}  # no .git
    kept = cli.built("--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1", "-f",
                     str(dockerfile / "Dockerfile.git"), f"{cli.git.url}#v1")
    assert (kept / "repo" / ".git" / "HEAD").is_file()


def test_an_ssh_git_url_needs_an_ssh_agent(cli: Cli) -> None:
    assert cli.error("git@127.0.0.1:repo.git") == (
        "the build context git@127.0.0.1:repo.git is an ssh git URL: it needs an ssh agent")


#: An ssh client for git (GIT_SSH_COMMAND, "simple" variant: ``HOST COMMAND``) that runs
#: the remote command here, as sshd would run it there, once the agent it was given
#: (SSH_AUTH_SOCK) shows the test's key: the one thing sshd would check of the client.
_SSH = """#!/bin/sh
ssh-add -l | grep -q ctx-context-key || { echo "the agent lacks the key" >&2; exit 255; }
exec sh -c "$2"
"""


def test_an_ssh_git_url_fetches_through_the_ssh_default_agent(cli: Cli) -> None:
    key = make_key(cli.work / "id_ctx", "ctx-context-key")
    ssh = cli.work / "fake-ssh"
    ssh.write_text(_SSH)
    ssh.chmod(0o755)
    env = {"GIT_SSH_COMMAND": str(ssh), "GIT_SSH_VARIANT": "simple"}
    url = f"git@127.0.0.1:{cli.bare}#main:sub"
    out = cli.built("--ssh", f"default={key}", url, env=env)
    assert tree(out) == {"ctx/Dockerfile": "FROM scratch\nCOPY . /ctx/\n", "ctx/f": "f1\n"}
    assert cli.error(url, "--ssh", f"other={key}").endswith("it needs an ssh agent")


def test_an_archive_url_is_the_context(cli: Cli) -> None:
    archive = tar_of({"Dockerfile": "FROM scratch\nCOPY a.txt /got\n", "a.txt": "from url\n"})
    (cli.served / "ctx.tar.gz").write_bytes(gzip.compress(archive))
    out = cli.built(f"{cli.http}/ctx.tar.gz")
    assert tree(out) == {"got": "from url\n"}


def test_a_plain_text_url_is_the_dockerfile(cli: Cli) -> None:
    (cli.served / "Dockerfile.txt").write_text("FROM scratch\nCOPY <<EOF /made\nby url\nEOF\n"
                                               "COPY . /ctx/\n")
    out = cli.built(f"{cli.http}/Dockerfile.txt")
    assert tree(out) == {"made": "by url\n"}


def test_an_unreachable_url_is_one_error_line(cli: Cli) -> None:
    assert cli.error(f"{cli.http}/missing.tar").startswith(
        f"cannot fetch the build context {cli.http}/missing.tar: ")


# --- --build-context ---------------------------------------------------------------------


def test_from_a_named_directory_is_exactly_its_files(cli: Cli) -> None:
    """The context's incremental chain (a COPY of it primes it, then files change) never
    reaches an image: FROM the context is one layer of the directory as it is now."""
    kept = {f"keep{i}": f"{i}\n" for i in range(10)}  # few changes: the chain takes a delta
    base = cli.directory({**kept, "gone": "secret\n", ".dockerignore": "ignored\n",
                          "ignored": "x\n"})
    copy = cli.directory({"Dockerfile": "FROM scratch\nCOPY --from=base / /\n"})
    assert set(tree(cli.built("--build-context", f"base={base}", str(copy)))) == {
        *kept, "gone", ".dockerignore"}
    (base / "gone").unlink()
    write(base, {"new": "2\n", "keep0": "changed\n"})
    dockerfile = cli.directory({"Dockerfile": "FROM base\n"})
    oci = cli.work / "base.tar"
    done = cli.build("-o", f"type=oci,dest={oci}", "--build-context", f"base={base}",
                     str(dockerfile))
    assert done.returncode == 0, done.stderr.decode()
    assert _oci_layers(oci) == [{*kept, ".dockerignore", "new"}]


def _oci_layers(path: Path) -> list[set[str]]:
    """The file names of each layer of the single image in an OCI tar."""
    with tarfile.open(path) as outer:
        def blob(digest: str) -> bytes:
            member = outer.extractfile("blobs/sha256/" + digest.split(":")[1])
            assert member is not None
            return member.read()
        index = json.loads(blob_file(outer, "index.json"))
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        found = []
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"]))) as inner:
                found.append({m.name.removeprefix("./") for m in inner.getmembers()
                              if not m.isdir()})
        return found


def blob_file(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    assert member is not None
    return member.read()


def test_copy_and_run_mount_from_a_named_directory(cli: Cli) -> None:
    data = cli.directory({"x/data.txt": "named\n"})
    dockerfile = cli.directory({"Dockerfile": (
        f"FROM {cli.busybox}\n"
        "COPY --from=data x/data.txt /copied\n"
        "RUN --mount=from=data,target=/m cat /m/x/data.txt > /mounted\n"
        "FROM scratch\nCOPY --from=0 /copied /mounted /\n")})
    out = cli.built("--build-context", f"data={data}", str(dockerfile))
    assert tree(out) == {"copied": "named\n", "mounted": "named\n"}


def test_a_named_context_overrides_the_stage_of_its_name(cli: Cli) -> None:
    stage = cli.directory({"from-context": "c\n"})
    dockerfile = cli.directory({"Dockerfile": (
        "FROM scratch AS deps\nCOPY <<EOF /from-stage\ns\nEOF\n"
        "FROM scratch\nCOPY --from=deps / /\n")})
    assert tree(cli.built(str(dockerfile))) == {"from-stage": "s\n"}
    assert tree(cli.built("--build-context", f"deps={stage}", str(dockerfile))) == {
        "from-context": "c\n"}


def test_a_docker_image_context_stands_in_for_an_image(cli: Cli) -> None:
    dockerfile = cli.directory({"Dockerfile": (
        "FROM docker.io/library/alpine:latest AS base\n"
        "FROM scratch\nCOPY --from=base /bin/busybox /bb\n"
        "COPY --from=tools /bin/busybox /bb2\n")})
    out = cli.built("--build-context", f"alpine=docker-image://{cli.busybox}",
                    "--build-context", f"tools=docker-image://{cli.busybox}", str(dockerfile))
    assert set(tree_names(out)) == {"bb", "bb2"}


def tree_names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_an_oci_layout_context_by_itself_by_tag_and_by_digest(cli: Cli) -> None:
    """The image of an OCI layout (written here by an OCI export, unpacked): its files and
    its config (WORKDIR) reach a stage FROM it and a COPY --from it."""
    image = cli.directory({"Dockerfile": "FROM scratch\nWORKDIR /w\n"
                                         "COPY <<EOF /layout-file\nL\nEOF\n"})
    oci = cli.work / "layout.tar"
    done = cli.build("-t", "img:v1", "-o", f"type=oci,dest={oci}", str(image))
    assert done.returncode == 0, done.stderr.decode()
    layout = cli.work / "layout"
    with tarfile.open(oci) as archive:
        archive.extractall(layout, filter="data")
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    dockerfile = cli.directory({"Dockerfile": (
        "FROM base AS first\nCOPY <<EOF rel.txt\nR\nEOF\n"
        "FROM scratch\nCOPY --from=base /layout-file /copied\n")})
    for value in (f"{layout}", f"{layout}:v1", f"{layout}@{digest}"):
        context = f"base=oci-layout://{value}"
        out = cli.built("--target", "first", "--build-context", context, str(dockerfile))
        assert tree(out) == {"layout-file": "L\n", "w/rel.txt": "R\n"}, value
    out = cli.built("--build-context", f"base=oci-layout://{layout}", str(dockerfile))
    assert tree(out) == {"copied": "L\n"}


def test_url_named_contexts(cli: Cli) -> None:
    (cli.served / "named.tgz").write_bytes(gzip.compress(tar_of({"t.txt": "tarball\n"})))
    dockerfile = cli.directory({"Dockerfile": (
        "FROM scratch\nCOPY --from=src f /git-f\nCOPY --from=arch t.txt /t\n")})
    out = cli.built("--build-context", f"src={cli.git.url}#v1:sub",
                    "--build-context", f"arch={cli.http}/named.tgz", str(dockerfile))
    assert tree(out) == {"git-f": "f1\n", "t": "tarball\n"}


NAMED_ERRORS = [
    ("no-equals", "base", "invalid --build-context 'base': invalid context value, expected "
                          "key=value"),
    ("bad-name", "Base=/tmp", "invalid --build-context 'Base=/tmp': invalid context name Base: "),
    ("target", "base=target:other", "invalid --build-context 'base=target:other': target: "
                                    "contexts link the targets of a bake file; dockyard build "
                                    "builds one Dockerfile"),
    ("oci-layout-missing", "base=oci-layout:///nonexistent/layout:v1",
     "invalid --build-context oci-layout:///nonexistent/layout:v1: cannot read its "
     "index.json"),
    ("missing-dir", "base=/nonexistent/dir", "invalid --build-context base=/nonexistent/dir: "
                                             "not a directory, an image (docker-image://REF) "
                                             "or a URL"),
]


@pytest.mark.parametrize(("value", "message"), [c[1:] for c in NAMED_ERRORS],
                         ids=[c[0] for c in NAMED_ERRORS])
def test_named_context_refusals(cli: Cli, value: str, message: str) -> None:
    dockerfile = cli.directory({"Dockerfile": "FROM base\n"})
    assert cli.error("--build-context", value, str(dockerfile)).startswith(message)
