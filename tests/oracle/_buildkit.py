"""The BuildKit oracle: a private Docker 20.10 daemon whose BuildKit judges our frontend.

Debian's ``docker.io`` (20.10) ships BuildKit with the older built-in Dockerfile frontend
(no heredocs, fewer ``${...}`` modifiers).  We start our own ``dockerd`` on a socket, data
root and exec root inside one temporary directory, never touching a system daemon, and
stop exactly that process tree by PID.  There is no network: a Dockerfile can only use
``FROM scratch`` or images built earlier on the same daemon.  To make sure a stray
reference (``FROM alpine``, ``COPY --from=nope``, ``ADD https://...``) fails at once instead
of reaching for a registry, dockerd and the client run with every proxy variable set to a
closed loopback port (:data:`DEAD_PROXY`): nothing is even resolved by DNS.

Note the paths: the engine is ``/usr/sbin/dockerd`` and the client ``/usr/bin/docker``
(``/usr/local/bin/docker`` on the developer machines is a newer, unrelated client).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCKERD = Path("/usr/sbin/dockerd")
DOCKER = Path("/usr/bin/docker")
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary

START_TIMEOUT = 60.0  # seconds for the daemon to answer `docker version`
STOP_TIMEOUT = 20.0  # seconds for a SIGTERM before SIGKILL
BUILD_TIMEOUT = 120.0  # seconds for one `docker build`
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port; nothing listens there

ContextFiles = Mapping[str, str | bytes]


class OracleUnavailable(RuntimeError):
    """The private dockerd could not be started; the message carries its log's tail."""


@dataclass(frozen=True)
class OracleResult:
    """What BuildKit made of one Dockerfile.

    ``ok``: the build succeeded.  ``error_text``: BuildKit's error lines when it did not
    (empty otherwise).  ``image_config``: the ``Config`` of ``docker image inspect`` (Env,
    Labels, Cmd, WorkingDir, ...), empty when the build failed.  ``image``: the whole
    inspect record (Architecture, Os, RootFS, ...).
    """

    ok: bool
    error_text: str = ""
    image_config: dict[str, Any] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The image's environment as a dict (``Env`` is a list of ``KEY=value``)."""
        pairs = (item.partition("=") for item in self.image_config.get("Env") or [])
        return {key: value for key, _, value in pairs}


class PrivateDockerd:
    """One dockerd (and the containerd it manages) living in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self._log_path = root / "dockerd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._builds = 0  # how many build contexts were written under root/builds

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """dockerd's pid while it runs (containerd is its child)."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start dockerd and return once it answers on its socket (the ready handshake)."""
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                self._dockerd_argv(),
                env=_offline_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop our dockerd and its containerd (by PID only), then remove ``root``."""
        process, self._process = self._process, None
        if process is not None:
            children = _child_pids(process.pid)
            _terminate(process, timeout)
            for pid in children:
                _kill_if_ours(pid, self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def _dockerd_argv(self) -> list[str]:
        root = self.root
        return [
            str(DOCKERD),
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            f"--host=unix://{self.socket}",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
        ]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise OracleUnavailable(f"dockerd exited early:\n{self.log_tail()}")
            if self.docker("version", timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise OracleUnavailable(f"dockerd not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- client -------------------------------------------------------------------------
    def docker(
        self, *args: str, timeout: float = BUILD_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run the Debian docker client against this daemon."""
        env = {
            **_offline_env(),
            "HOME": str(self.root),
            "DOCKER_CONFIG": str(self.root / "client-config"),
            "DOCKER_BUILDKIT": "1",
        }
        argv = [str(DOCKER), "-H", f"unix://{self.socket}", *args]
        try:
            return subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out: {exc}")

    def build(
        self,
        dockerfile_text: str,
        context_files: ContextFiles | None = None,
        build_args: Mapping[str, str] | None = None,
        target: str | None = None,
        platform: str | None = None,
        dockerfile_path: str = "Dockerfile",
    ) -> OracleResult:
        """Build ``dockerfile_text`` with BuildKit and report what came of it.

        The Dockerfile is written at ``dockerfile_path`` in the context (given with ``-f``);
        a ``context_files`` name ending in ``/`` is an (empty) directory."""
        context = self._new_context({dockerfile_path: dockerfile_text, **(context_files or {})})
        return self.build_dir(context, dockerfile_path, build_args, target, platform)

    def build_dir(
        self,
        context: Path,
        dockerfile_path: str = "Dockerfile",
        build_args: Mapping[str, str] | None = None,
        target: str | None = None,
        platform: str | None = None,
    ) -> OracleResult:
        """Build the context directory ``context`` (see :meth:`new_context_dir`) with the
        Dockerfile at ``dockerfile_path`` in it."""
        iidfile = context.parent / "iid"
        argv = ["build", "--network=host", "--progress=plain", f"--iidfile={iidfile}",
                f"--file={context / dockerfile_path}"]
        argv += [f"--build-arg={key}={value}" for key, value in (build_args or {}).items()]
        argv += [f"--target={target}"] if target else []
        argv += [f"--platform={platform}"] if platform else []
        done = self.docker(*argv, str(context))
        if done.returncode != 0:
            return OracleResult(ok=False, error_text=_error_lines(done.stderr))
        return self._inspect(iidfile.read_text().strip())

    def tag_busybox(self, tag: str) -> None:
        """Build a busybox image from the host's static busybox and tag it ``tag``, so that
        ``FROM <tag>`` works with no registry."""
        dockerfile = (
            "FROM scratch\nCOPY --chmod=755 busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]\nENV PATH=/bin\n'
        )
        result = self.build(dockerfile, {"busybox": BUSYBOX.read_bytes()})
        if not result.ok:
            raise OracleUnavailable(f"cannot build a busybox image: {result.error_text}")
        done = self.docker("tag", result.image["Id"], tag, timeout=30)
        if done.returncode != 0:
            raise OracleUnavailable(f"docker tag failed: {done.stderr.strip()}")

    def image_tree(self, image_id: str) -> list[str]:
        """The image's filesystem as :func:`tree_listing` lines: ``docker save``, then its
        layers applied in order (whiteouts included).  An image without layers (which
        ``docker save`` refuses) has an empty tree."""
        if not self.image_has_layers(image_id):
            return []
        archive = self.root / "save.tar"
        done = self.docker("save", f"--output={archive}", image_id, timeout=60)
        if done.returncode != 0:
            raise OracleUnavailable(f"docker save failed: {done.stderr.strip()}")
        try:
            return tree_listing(_merged_layers(archive))
        finally:
            archive.unlink()

    def image_has_layers(self, image_id: str) -> bool:
        done = self.docker("image", "inspect", "--format={{len .RootFS.Layers}}", image_id,
                           timeout=30)
        return done.stdout.strip() not in ("", "0")

    def new_context_dir(self) -> Path:
        """A fresh, empty directory for one build's context."""
        self._builds += 1
        context = self.root / "builds" / str(self._builds) / "context"
        context.mkdir(parents=True)
        return context

    def _new_context(self, files: ContextFiles) -> Path:
        context = self.new_context_dir()
        for name, content in files.items():
            path = context / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith("/"):
                path.mkdir(exist_ok=True)
                continue
            data = content.encode() if isinstance(content, str) else content
            path.write_bytes(data)
        return context

    def _inspect(self, image_id: str) -> OracleResult:
        done = self.docker("image", "inspect", image_id, timeout=30)
        if done.returncode != 0:
            raise OracleUnavailable(f"docker image inspect failed: {done.stderr.strip()}")
        image = json.loads(done.stdout)[0]
        return OracleResult(ok=True, image_config=image.get("Config") or {}, image=image)


def context_from_dir(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (``.dockerignore`` included: BuildKit applies it)."""
    files = (path for path in sorted(directory.rglob("*")) if path.is_file())
    return {str(path.relative_to(directory)): path.read_bytes() for path in files}


def write_tree(root: Path, spec: Iterable[str]) -> None:
    """Create the entries a tree spec describes under ``root``, one per string:

    ``path`` a regular file (mode 0644, its content the path and a newline); ``path/`` a
    directory (0755); ``path 0755`` a file or directory with that mode; ``path -> target``
    a symlink.  Parent directories are made as needed (0755).
    """
    for line in spec:
        name, _, rest = line.partition(" ")
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if rest.startswith("-> "):
            path.symlink_to(rest.removeprefix("-> "))
            continue
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        else:
            path.write_text(name + "\n")
        path.chmod(int(rest, 8) if rest else 0o755 if name.endswith("/") else 0o644)


def tree_listing(members: Iterable[tarfile.TarInfo]) -> list[str]:
    """One sorted line per entry: ``<type> <mode> <uid>:<gid> <path>[ -> <target>]``, type
    ``d``, ``f`` or ``l``, mode in octal (permission bits), path without a leading ``./``
    or ``/`` (the root itself left out)."""
    lines = []
    for member in members:
        path = member.name.removeprefix("./").strip("/")
        if not path:
            continue
        kind = "d" if member.isdir() else "l" if member.issym() else "f"
        link = f" -> {member.linkname}" if member.issym() else ""
        lines.append(f"{kind} {member.mode & 0o7777:04o} {member.uid}:{member.gid} {path}{link}")
    return sorted(lines, key=lambda line: line.split(" ", 3)[3])


def _merged_layers(archive: Path) -> list[tarfile.TarInfo]:
    """The entries of a ``docker save`` archive's image, its layers applied in order."""
    with tarfile.open(archive) as outer:
        manifest = json.load(_member(outer, "manifest.json"))
        entries: dict[str, tarfile.TarInfo] = {}
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=_member(outer, layer)) as inner:
                _apply_layer(entries, inner.getmembers())
    return list(entries.values())


def _member(archive: tarfile.TarFile, name: str) -> Any:
    extracted = archive.extractfile(name)
    if extracted is None:
        raise OracleUnavailable(f"docker save archive has no file {name}")
    return extracted


def _apply_layer(entries: dict[str, tarfile.TarInfo], layer: list[tarfile.TarInfo]) -> None:
    """Apply one OCI layer: ``.wh.<name>`` deletes ``<name>`` and what is under it,
    ``.wh..wh..opq`` empties its directory (of what lower layers had)."""
    for member in layer:
        path = member.name.removeprefix("./").strip("/")
        parent, _, base = path.rpartition("/")
        if base == ".wh..wh..opq":
            _delete_under(entries, parent)
        elif base.startswith(".wh."):
            gone = f"{parent}/{base[4:]}".lstrip("/")
            entries.pop(gone, None)
            _delete_under(entries, gone)
        else:
            entries[path] = member


def _delete_under(entries: dict[str, tarfile.TarInfo], directory: str) -> None:
    prefix = directory + "/" if directory else ""
    for path in [p for p in entries if p.startswith(prefix) and p != directory]:
        del entries[path]


def make_oracle_root() -> Path:
    """A short temporary directory (unix socket paths are limited to 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="dockyard-oracle-"))


def _offline_env() -> dict[str, str]:
    """PATH, and every proxy variable pointing at :data:`DEAD_PROXY` (see the module doc)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = DEAD_PROXY
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def _error_lines(stderr: str) -> str:
    """BuildKit's error, without the ``#n ...`` progress lines before it."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("#")]
    return "\n".join(lines)


def _child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (dockerd's containerd runs in its own session)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _kill_if_ours(pid: int, root: Path) -> None:
    """SIGKILL a leftover child by PID, if it is still there and still runs under ``root``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if str(root).encode() in cmdline:
        os.kill(pid, signal.SIGKILL)
