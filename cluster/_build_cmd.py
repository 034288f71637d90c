"""``dockyard build`` (without ``--check``) and ``dockyard stop``: the client side.

``run_build`` checks every flag (cluster/_build_options.py), reads the Dockerfile and the
secret values, connects to the root's local service (starting it when nobody answers),
sends one ``solve`` call::

    {"version": 1, "dockerfile": <bytes>, "options": <BuildOptions wire map>,
     "session": {"secrets": {id: <bytes>}, "ssh": {id: <socket path>}}}

``--ssh ID=KEYFILE`` starts an ephemeral ssh-agent holding the keys for the time of the
call (cluster/_ssh_agent.py) and serves its socket; it is killed when the call ends, also
on failure or Ctrl-C.  The registries to speak plain HTTP to (``registry.insecure=true``
outputs, ``DOCKYARD_INSECURE_REGISTRIES``) travel in the options' ``insecure_registries``.

renders the events as ``--progress`` asks (on stderr), and at the end writes the
``--metadata-file`` and streams a ``dest=-`` output to stdout.  Ctrl-C cancels the call on
the service (its containers and mounts are cleaned up there) and exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from scheduler._errors import ExecError, UsageError

from ._build_options import BuildOptions, gather_options, read_session
from ._render import Renderer, make_renderer
from ._service import ServiceSettings, connect_running, default_root
from ._ssh_agent import SshAgents

__all__ = ["REQUEST_VERSION", "build_request", "run_build", "run_stop"]

REQUEST_VERSION = 1


def _settings(environ: Mapping[str, str]) -> ServiceSettings:
    idle = environ.get("DOCKYARD_IDLE_TIMEOUT", "")
    try:
        timeout = float(idle) if idle else 600.0
    except ValueError:
        raise UsageError(f"invalid DOCKYARD_IDLE_TIMEOUT {idle!r}: not a number of "
                         f"seconds") from None
    return ServiceSettings(root=default_root(environ), idle_timeout=timeout)


def _read_dockerfile(option: str | None, context: Path, stdin: IO[bytes]) -> bytes:
    if option == "-":
        return stdin.read()
    path = Path(option) if option is not None else context / "Dockerfile"
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read Dockerfile {str(path)!r}: "
                         f"{exc.strerror or exc}") from None


def build_request(args: argparse.Namespace, environ: Mapping[str, str], stdin: IO[bytes],
                  ssh: Mapping[str, str] | None = None) -> tuple[BuildOptions, dict[str, Any]]:
    """The checked options and the ``solve`` request (session included; ``ssh``: the
    sockets to serve by id, when agents were started for key files)."""
    if not Path(args.context).is_dir():
        raise UsageError(f"build context {args.context!r} is not a directory")
    options = gather_options(args, environ)
    dockerfile = _read_dockerfile(args.file, Path(args.context), stdin)
    if options.metadata_file is not None and not Path(options.metadata_file).parent.is_dir():
        raise UsageError(f"invalid --metadata-file {args.metadata_file!r}: its directory "
                         f"does not exist")
    request = {"version": REQUEST_VERSION, "dockerfile": dockerfile,
               "options": options.to_wire(),
               "session": read_session(options, environ, ssh)}
    return options, request


def run_build(args: argparse.Namespace) -> int:
    """``dockyard build``: the ssh agents it starts live exactly as long as the call."""
    options = gather_options(args, os.environ)
    with SshAgents(options.ssh) as sockets:
        return _run_build(args, sockets)


def _run_build(args: argparse.Namespace, sockets: Mapping[str, str]) -> int:
    options, request = build_request(args, os.environ, sys.stdin.buffer, sockets)
    if any(o.to_stdout for o in options.outputs) and sys.stdout.isatty():
        raise UsageError("dest file is required for the output to stdout: refusing to write "
                         "to console", hint="redirect stdout, or set dest=FILE")
    renderer = make_renderer(options.progress, sys.stderr)
    try:
        result = _solve(_settings(os.environ), request, renderer)
    except ExecError as error:
        renderer.close()
        _print_tail(error)
        raise
    renderer.close()
    _finish(options, result)
    return 0


def _print_tail(error: ExecError, lines: int = 10) -> None:
    """The failed RUN's last output lines, framed as BuildKit prints them before the error."""
    tail = error.output_tail.rstrip("\n").split("\n")[-lines:] if error.output_tail else []
    if not tail:
        return
    body = "\n".join(f"{line}" for line in tail)
    print(f"------\n > {error.vertex}:\n{body}\n------", file=sys.stderr)


def _solve(settings: ServiceSettings, request: dict[str, Any], renderer: Renderer) -> Any:
    """The ``solve`` call: without an event loop when the service already runs (the warm
    path, asyncio never imported), else through ``connect``, which starts it."""
    client = connect_running(settings)
    if client is not None:
        with client:
            return client.call("solve", request, events=renderer)
    import asyncio  # noqa: PLC0415 -- only a build that starts the service needs it

    return asyncio.run(_solve_starting(settings, request, renderer))


async def _solve_starting(settings: ServiceSettings, request: dict[str, Any],
                          renderer: Renderer) -> Any:
    from ._service import connect  # noqa: PLC0415

    async with await connect(settings) as client:
        return await client.call("solve", request, events=renderer)


def _finish(options: BuildOptions, result: Any) -> None:
    result = result if isinstance(result, dict) else {}
    stdout_file = result.get("stdout_file")
    if stdout_file:
        _stream_to_stdout(Path(stdout_file))
    if options.metadata_file is not None:
        _write_metadata(Path(options.metadata_file), result.get("metadata") or {})


def _stream_to_stdout(path: Path) -> None:
    """Copy the service's ``dest=-`` file to stdout, then remove it."""
    import shutil  # noqa: PLC0415 -- only a dest=- output needs it

    try:
        with open(path, "rb") as source:
            shutil.copyfileobj(source, sys.stdout.buffer, 1024 * 1024)
        sys.stdout.buffer.flush()
    except OSError as exc:
        raise UsageError(f"cannot stream the output {str(path)!r} to stdout: "
                         f"{exc.strerror or exc}") from None
    finally:
        path.unlink(missing_ok=True)


def _write_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    import json  # noqa: PLC0415 -- only --metadata-file needs it

    try:
        path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write --metadata-file {str(path)!r}: "
                         f"{exc.strerror or exc}") from None


def run_stop(args: argparse.Namespace) -> int:
    """``dockyard stop``: end the root's local service (and wait until it has exited),
    then remove what its workers left under the root: nothing stays running or mounted."""
    import asyncio  # noqa: PLC0415

    from ._service import clean_root, stop_service  # noqa: PLC0415

    del args
    settings = _settings(os.environ)
    stopped = asyncio.run(stop_service(settings))
    print(f"stopped the dockyard service of {settings.root}" if stopped else
          f"no dockyard service is running for {settings.root}", file=sys.stderr)
    print(clean_root(settings.root), file=sys.stderr)
    return 0
