"""``dockyard build`` (without ``--check``) and ``dockyard stop``: the client side.

``run_build`` checks every flag (cluster/_build_options.py), reads the Dockerfile and the
secret values, connects to the root's local service (starting it when nobody answers),
sends one ``solve`` call::

    {"version": 1, "dockerfile": <bytes>, "options": <BuildOptions wire map>,
     "session": {"secret_ids": [id, ...], "ssh_ids": [id, ...], ...}}

and answers the call's asks (cluster/_wire.py ``Ask``): ``secret.get`` reads a secret's
value when a worker needs it (values never travel in the request), ``cache.credentials``
hands the client's ``AWS_*`` to a worker opening the build's S3 cache, ``output.write``/
``output.close`` write what the workers hand back (cluster/_outputs.py; ``--load``:
into the Docker engine of ``DOCKER_HOST``, checked to answer before the build starts,
cluster/_docker_engine.py).  With
``--endpoint URL`` (or ``DOCKYARD_ENDPOINT``) the call goes to that endpoint (token from
``--token-file``/``DOCKYARD_TOKEN``, TLS CA from ``--tls-ca``/``DOCKYARD_TLS_CA``) and no
local service is ever started.

``--ssh ID=SOCKET|KEYFILE`` serves that agent (for key files an ephemeral ssh-agent
holding the keys for the time of the call, killed when the call ends, also on failure or
Ctrl-C) through the ``ssh.*`` asks (cluster/_ssh_agent.py ``SshRelay``): the request
names the ids only, and the agent's traffic is relayed to the RUN that mounts it.
The registries to speak plain HTTP to (``registry.insecure=true``
outputs, ``DOCKYARD_INSECURE_REGISTRIES``) travel in the options' ``insecure_registries``.

It renders the events as ``--progress`` asks (on stderr; none with ``-q``), and at the
end prints the image id (``-q``, on stdout), writes it to ``--iidfile`` (removed when the
build starts, so a failed build leaves none) and writes the ``--metadata-file`` (with,
under ``dockyard.context.bytes-sent``, the context bytes this client sent, and under
``dockyard.context.bytes-hashed`` those it read to digest them).
The context travels as a manifest (its files after ``.dockerignore``, with their digests,
``session.contexts``) and the workers read the contents they lack with ``context.read``
asks, answered only for the files listed (cluster/_context_server.py).  A file's digest
comes from the context's stat index (``<root>/context-index``, workers/_context_index.py)
while its stat is unchanged: a one-file change reads that one file.
Ctrl-C cancels the call on the service (its containers and mounts are cleaned up there)
and exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dockyard.scheduler._build_request import NamedContext
from dockyard.scheduler._errors import DockyardError, ExecError, ServiceError, UsageError
from dockyard.scheduler._platform import Platform, default_platform, parse_platform

from ._build_options import (
    BuildOptions,
    CacheCredentials,
    OutputSpec,
    SecretReader,
    SshSpec,
    builder_endpoint,
    gather_options,
    read_session,
    read_token_file,
)
from ._context import (
    CONTEXT_HASHED_KEY,
    default_dockerfile,
    directory_ignore_patterns,
    load_ignore_patterns,
)
from ._context_forms import ClientContext, ContextForms, is_url, parse_build_context
from ._context_server import ContextServer, ContextServers
from ._oci_layout import LAYOUT_SCHEME, read_layout
from ._render import FAILED_TO_SOLVE, Renderer, make_renderer
from ._service import ServiceSettings, connect_endpoint, connect_running, default_root
from ._ssh_agent import SshAgents, SshRelay
from ._wire import Endpoint, Handler, Handlers, parse_endpoint

if TYPE_CHECKING:
    from ._docker_engine import DockerEngine

__all__ = ["REQUEST_VERSION", "build_request", "endpoint_of", "image_id", "run_build",
           "run_stop"]

REQUEST_VERSION = 1
#: The session's name of the build's own context (the frontend's ``local://context``).
MAIN_CONTEXT = "context"
LOCAL_SCHEME = "local://"
#: The build arg that keeps a git context's ``.git`` directory (BuildKit's dockerui).
KEEP_GIT_DIR_ARG = "BUILDKIT_CONTEXT_KEEP_GIT_DIR"


def _settings(environ: Mapping[str, str]) -> ServiceSettings:
    idle = environ.get("DOCKYARD_IDLE_TIMEOUT", "")
    try:
        timeout = float(idle) if idle else 600.0
    except ValueError:
        raise UsageError(f"invalid DOCKYARD_IDLE_TIMEOUT {idle!r}: not a number of "
                         f"seconds") from None
    return ServiceSettings(root=default_root(environ), idle_timeout=timeout)


def build_request(args: argparse.Namespace, environ: Mapping[str, str], stdin: IO[bytes],
                  forms: ContextForms | None = None
                  ) -> tuple[BuildOptions, dict[str, Any], ContextServers]:
    """The checked options, the ``solve`` request (session included) and the server of
    the contexts' files (the ``context.read`` handler).  ``forms`` makes the contexts
    that are no directory (stdin, URLs) directories, and keeps them until it is closed."""
    options = gather_options(args, environ)
    named = [parse_build_context(v) for v in getattr(args, "build_context", None) or ()]
    forms = forms if forms is not None else ContextForms()
    keep = dict(options.build_args).get(KEEP_GIT_DIR_ARG, "").lower() in ("1", "true")
    context = forms.main(args.context, args.file, stdin, keep_git_dir=keep)
    if context.dockerfile_path is not None and not Path(args.context).is_dir():
        options = dataclasses.replace(options, filename=_shown_name(context))
    if options.metadata_file is not None and not Path(options.metadata_file).parent.is_dir():
        raise UsageError(f"invalid --metadata-file {args.metadata_file!r}: its directory "
                         f"does not exist")
    session = read_session(options, environ)
    server = _context(session, context, default_root(environ))
    options = _named_contexts(options, session, server, dict(named), forms)
    request = {"version": REQUEST_VERSION, "dockerfile": context.dockerfile,
               "options": _without_ssh_paths(options).to_wire(), "session": session}
    return options, request, server


def _shown_name(context: ClientContext) -> str:
    """The Dockerfile's name in messages when the context was made a directory (stdin,
    a URL): relative to it when inside it, as for a directory context."""
    assert context.dockerfile_path is not None
    inside = os.path.relpath(context.dockerfile_path, context.directory)
    return str(context.dockerfile_path) if inside.startswith("..") else inside


def _without_ssh_paths(options: BuildOptions) -> BuildOptions:
    """The options as sent: the ``--ssh`` ids without the client's sockets and keys."""
    return dataclasses.replace(options, ssh=tuple(SshSpec(s.id, ()) for s in options.ssh))


#: The ``--metadata-file`` key of the context bytes the client sent for the build.
CONTEXT_BYTES_KEY = "dockyard.context.bytes-sent"
#: Where, under the client's root, the stat indexes of its contexts are kept.
CONTEXT_INDEX_DIR = "context-index"


def _context(session: dict[str, Any], context: ClientContext, root: Path) -> ContextServers:
    """Put the context's ignore patterns and manifest in the ``session``; the server of
    its files (more contexts join it, see ``_named_contexts``)."""
    directory = context.directory
    patterns, ignore_file = load_ignore_patterns(directory, context.dockerfile_path
                                                 or default_dockerfile(directory))
    session["ignore_patterns"] = list(patterns)
    session["ignore_size"] = _size(ignore_file)  # for the progress' "load .dockerignore"
    session["contexts"] = {}
    servers = ContextServers()
    servers.add(MAIN_CONTEXT, _manifest(session, MAIN_CONTEXT, directory, patterns, root))
    return servers


def _manifest(session: dict[str, Any], key: str, directory: Path, patterns: Sequence[str],
              root: Path) -> ContextServer:
    """The manifest of ``directory`` (its files after ``patterns``, with their digests:
    from its stat index under ``root`` while a file's stat is unchanged) put in the
    ``session`` as the context ``key``; the server of its files."""
    from dockyard.workers._context_index import ContextIndexes  # noqa: PLC0415
    from dockyard.workers._context_manifest import build_manifest  # noqa: PLC0415

    indexes = ContextIndexes(root / CONTEXT_INDEX_DIR)
    digests = indexes.load(directory)
    manifest = build_manifest(directory, patterns, digests=digests)
    indexes.save(digests)
    session["contexts"][key] = manifest.to_wire()
    return ContextServer(directory, manifest, hashed=digests.statistics().bytes_hashed)


def _named_contexts(options: BuildOptions, session: dict[str, Any], servers: ContextServers,
                    named: Mapping[str, str], forms: ContextForms) -> BuildOptions:
    """``--build-context``: an image stays a reference; a directory, or what a URL is
    fetched into, is sent as the main context is, as ``session.contexts["context:NAME"]``
    with its own ``.dockerignore``; an OCI layout so too, its image's blobs alone."""
    found: list[NamedContext] = []
    root = default_root(os.environ)
    for name, value in named.items():
        if value.startswith("docker-image://"):
            found.append(NamedContext(name, value))
            continue
        key = f"context:{name}"
        if value.startswith(LAYOUT_SCHEME):
            layout = read_layout(value, _first_platform(options))
            only = ("**", *(f"!{blob}" for blob in layout.blobs))  # the image's blobs alone
            servers.add(key, _manifest(session, key, layout.directory, only, root))
            found.append(NamedContext(name, f"{LAYOUT_SCHEME}{key}@{layout.digest}", only,
                                      layout.config))
            continue
        directory = forms.fetch_named(name, value) if is_url(value) else Path(value)
        if not directory.is_dir():
            raise UsageError(f"invalid --build-context {name}={value}: not a directory, "
                             "an image (docker-image://REF) or a URL")
        patterns = directory_ignore_patterns(directory)
        servers.add(key, _manifest(session, key, directory, patterns, root))
        found.append(NamedContext(name, LOCAL_SCHEME + key, tuple(patterns)))
    return dataclasses.replace(options, named_contexts=tuple(found))


def _first_platform(options: BuildOptions) -> Platform:
    """The platform an OCI layout's index is read for (the build's first)."""
    return parse_platform(options.platforms[0]) if options.platforms else default_platform()


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:  # read a moment ago: gone since, nothing to show
        return 0


def run_build(args: argparse.Namespace) -> int:
    """``dockyard build``: the ssh agents it starts live exactly as long as the call."""
    options = gather_options(args, os.environ)
    with SshAgents(options.ssh) as sockets, ContextForms(sockets) as forms:
        relay = SshRelay(sockets)
        try:
            return _run_build(args, relay, forms)
        finally:
            relay.close()


def _run_build(args: argparse.Namespace, relay: SshRelay, forms: ContextForms) -> int:
    options, request, context = build_request(args, os.environ, sys.stdin.buffer, forms)
    iidfile = Path(args.iidfile) if getattr(args, "iidfile", None) else None
    if iidfile is not None:
        _remove_stale(iidfile)
    if any(o.to_stdout for o in options.outputs) and sys.stdout.isatty():
        raise UsageError("dest file is required for the output to stdout: refusing to write "
                         "to console", hint="redirect stdout, or set dest=FILE")
    endpoint = endpoint_of(args, os.environ)
    engine = _docker_engine(options.outputs, os.environ)
    renderer = make_renderer(options.progress, sys.stderr,
                             debug=bool(getattr(args, "debug", False)),
                             source=request["dockerfile"])
    outputs = _Outputs(options.outputs, engine, renderer)
    handlers: dict[str, Handler] = {"secret.get": SecretReader(options.secrets, os.environ),
                                    "cache.credentials": CacheCredentials(options, os.environ),
                                    "context.read": context.read, **outputs.handlers(),
                                    **relay.handlers()}
    try:
        result = _solve(_settings(os.environ), request, renderer, handlers, endpoint)
    except ServiceError:  # the service could not be reached or spoke another version
        renderer.close()
        raise
    except DockyardError as error:  # the build failed: reported as buildx reports it
        renderer.close(_tail(error) if isinstance(error, ExecError) else "")
        error.add_note(FAILED_TO_SOLVE)
        raise
    finally:
        outputs.abort()
    renderer.close()
    _finish(options, result, context)
    _report_id(result, iidfile, quiet=bool(getattr(args, "quiet", False)))
    return 0


def image_id(metadata: Mapping[str, Any]) -> str:
    """The image id buildx prints for ``-q`` and writes to ``--iidfile``: the config's
    digest when the build made one image, else the digest of its index ("" when the
    outputs wrote no image)."""
    return str(metadata.get("containerimage.config.digest")
               or metadata.get("containerimage.digest") or "")


def _remove_stale(path: Path) -> None:
    """The ``--iidfile`` of an earlier build removed first: a failed build leaves none."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot remove the old --iidfile {str(path)!r}: "
                         f"{exc.strerror or exc}") from None


def _report_id(result: Any, iidfile: Path | None, *, quiet: bool) -> None:
    """``-q``: the image id on stdout; ``--iidfile``: the id in the file (no newline)."""
    metadata = (result.get("metadata") if isinstance(result, dict) else None) or {}
    ident = image_id(metadata)
    if quiet:
        sys.stdout.write(ident + "\n")
        sys.stdout.flush()
    if iidfile is not None:
        try:
            iidfile.write_text(ident)
        except OSError as exc:
            raise UsageError(f"cannot write --iidfile {str(iidfile)!r}: "
                             f"{exc.strerror or exc}") from None


def endpoint_of(args: argparse.Namespace, environ: Mapping[str, str]) -> Endpoint | None:
    """The endpoint ``--endpoint`` (else ``--builder``/``BUILDX_BUILDER``, else
    ``DOCKYARD_ENDPOINT``) names (with its token and CA), or None for the root's local
    service."""
    builder = builder_endpoint(args, environ)
    explicit = getattr(args, "endpoint", None)
    if explicit and builder is not None and getattr(args, "builder", None) \
            and builder != explicit:
        raise UsageError("--builder and --endpoint name different builders",
                         hint="give one of them")
    url = explicit or (builder if builder is not None else
                       environ.get("DOCKYARD_ENDPOINT", ""))
    if not url:
        return None
    token_file = getattr(args, "token_file", None)
    token = (read_token_file(token_file) if token_file else
             environ.get("DOCKYARD_TOKEN", "").strip() or None)
    ca_file = getattr(args, "tls_ca", None) or environ.get("DOCKYARD_TLS_CA") or None
    return parse_endpoint(url, token, ca_file)


def _docker_engine(outputs: Sequence[OutputSpec], environ: Mapping[str, str]
                   ) -> DockerEngine | None:
    """The Docker engine the ``--load`` outputs go to, checked to answer before the build
    runs (buildx connects first too); None when nothing is loaded."""
    if not any(output.loads for output in outputs):
        return None
    from ._docker_engine import engine_from_environ  # noqa: PLC0415 -- --load only

    engine = engine_from_environ(environ)
    engine.ping()
    return engine


class _Outputs:
    """The ``output.*`` handlers; cluster/_outputs.py is imported by the first ask only.
    ``engine`` takes the ``--load`` outputs; their step is shown through ``events``."""

    def __init__(self, outputs: Sequence[OutputSpec], engine: DockerEngine | None = None,
                 events: Renderer | None = None) -> None:
        self._outputs = outputs
        self._engine = engine
        self._events = events
        self._writers: Any = None  # the OutputWriters, once a worker handed something back

    def handlers(self) -> dict[str, Handler]:
        return {"output.write": lambda p: self._get().write(p),
                "output.close": lambda p: self._get().close(p)}

    def _get(self) -> Any:
        if self._writers is None:
            from ._outputs import OutputWriters  # noqa: PLC0415 -- see the class doc

            self._writers = OutputWriters(self._outputs, sys.stdout.buffer, self._engine,
                                          self._events)
        return self._writers

    def abort(self) -> None:
        if self._writers is not None:
            self._writers.abort()


def _tail(error: ExecError, lines: int = 10) -> str:
    """The failed RUN's last output lines, framed as BuildKit prints them before the error."""
    tail = error.output_tail.rstrip("\n").split("\n")[-lines:] if error.output_tail else []
    if not tail:
        return ""
    body = "\n".join(f"{line}" for line in tail)
    return f"------\n > {error.vertex}:\n{body}\n------\n"


def _solve(settings: ServiceSettings, request: dict[str, Any], renderer: Renderer,
           handlers: Handlers, endpoint: Endpoint | None = None) -> Any:
    """The ``solve`` call: to ``endpoint`` when given (never starting a local service),
    else without an event loop when the root's service already runs (the warm path,
    asyncio never imported), else through ``connect``, which starts it."""
    client = connect_endpoint(endpoint) if endpoint else connect_running(settings)
    if client is not None:
        with client:
            return client.call("solve", request, events=renderer, handlers=handlers)
    import asyncio  # noqa: PLC0415 -- only a build that starts the service needs it

    return asyncio.run(_solve_starting(settings, request, renderer, handlers))


async def _solve_starting(settings: ServiceSettings, request: dict[str, Any],
                          renderer: Renderer, handlers: Handlers) -> Any:
    from ._service import connect  # noqa: PLC0415

    async with await connect(settings) as client:
        return await client.call("solve", request, events=renderer, handlers=handlers)


def _finish(options: BuildOptions, result: Any, context: ContextServers) -> None:
    """Write ``--metadata-file``: the build's metadata and, under ``CONTEXT_BYTES_KEY``,
    the context bytes this client sent (what ``context.read`` asks it answered), under
    ``CONTEXT_HASHED_KEY`` those it read to list their digests."""
    result = result if isinstance(result, dict) else {}
    if options.metadata_file is not None:
        metadata = dict(result.get("metadata") or {}) | {CONTEXT_BYTES_KEY: context.served,
                                                         CONTEXT_HASHED_KEY: context.hashed}
        _write_metadata(Path(options.metadata_file), metadata)


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
