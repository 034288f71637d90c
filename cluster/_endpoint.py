"""``dockyard serve``: the service's calls over TCP, for clients on other machines.

The same ``Daemon`` as the embedded service (cluster/_daemon.py: ``/ws`` for clients,
``/session`` for workers' session channels), served by aiohttp's ``AppRunner`` and a
``TCPSite`` (TLS when given a certificate and key), with:

- a token (``--token-file``): every ``/ws`` handshake must carry ``Authorization: Bearer
  <token>`` (compared in constant time); a missing or wrong one is an HTTP 401 whose body
  is one line saying how to pass it.  ``/session`` has its own per-build tokens.
- no token: the endpoint binds only a loopback host, unless ``--insecure`` (and it says so
  on stderr).
- ``/healthz`` and ``/readyz`` (cluster/_probes.py) for an orchestrator's probes: plain
  GETs without the token, their bodies only counts of workers per arch; ``--ready-arch``
  names the arches that each need a worker before ``/readyz`` answers 200.
- build records (``dockyard history``, cluster/_history.py) kept by the coordinator under
  the root: ``--history-max-records`` and ``--history-max-age`` (else
  ``DOCKYARD_HISTORY_MAX_RECORDS``/``_MAX_AGE``, else BuildKit's 50 and 48h);
- ``/metrics`` (cluster/_metrics.py): the whole cluster's Prometheus metrics, a plain GET
  without the token (as the chart's ServiceMonitor scrapes it): counts under bounded
  labels, never a build id, an image name or a worker name.
- frames bounded by ``MAX_FRAME_BYTES``; a malformed frame gets a failure, and one that is
  no dockyard frame at all closes that connection only.

Ray: an embedded head (as the daemon starts) unless ``--ray-address`` names a running
cluster to attach to; ``_coordinator`` gives the coordinator either way.  It prints the URL
it serves and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from dockyard.scheduler._errors import ServiceError, UsageError
from dockyard.workers._logs import configure_logging

from ._build_options import CacheSpec, parse_cache, read_token_file
from ._daemon import Daemon
from ._history import AGE_ENV, RECORDS_ENV, Retention, history_settings
from ._metrics import METRICS_PATH, MetricsPage
from ._probes import PROBE_PATHS, Probes, parse_ready_arches
from ._ray import ActorRef, RayRuntime, RaySettings, ray_environment
from ._service import default_root, kill_processes, process_tree

__all__ = ["ServeSettings", "make_app", "run_serve", "serve",
           "serve_settings", "server_ssl_context"]

DEFAULT_PORT = 8375
_log = logging.getLogger("dockyard.cluster.endpoint")
#: Paths served without the client token.
_OPEN_PATHS = frozenset({"/session", METRICS_PATH, *PROBE_PATHS})
_TOKEN_HINT = "pass the endpoint's token with --token-file FILE or DOCKYARD_TOKEN"


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """What ``dockyard serve`` was asked, checked."""

    root: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    ray_address: str | None = None  # None: start an embedded Ray head
    token: str | None = field(default=None, repr=False)  # None: no token asked for
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure: bool = False  # without a token, bind a non-loopback host anyway
    advertise_url: str | None = None  # the session URL workers use (else the bound one)
    slots: int | None = None  # the embedded node's worker slots (None: the CPUs)
    # The cluster's shared cache: every build imports from it and exports to it (mode=max).
    caches: tuple[CacheSpec, ...] = ()
    # Arches that each need a native worker before /readyz answers 200 (empty: any one).
    ready_arches: tuple[str, ...] = ()
    # How many build records the coordinator keeps, and how long (cluster/_history.py).
    history: Retention = Retention()

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def session_url(self) -> str:
        return self.advertise_url or self.url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """The checked settings of a parsed ``dockyard serve`` command line."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together",
                         hint="pass both, or neither for plain HTTP")
    if not 0 <= args.port < 65536:
        raise UsageError(f"invalid --port {args.port}: not a TCP port")
    token = read_token_file(args.token_file) if args.token_file else None
    if token is None and not args.insecure and not _loopback(args.host):
        raise UsageError(f"refusing to serve {args.host} without a token",
                         hint="pass --token-file FILE, bind 127.0.0.1, or add --insecure")
    if args.advertise_url and not args.advertise_url.startswith(("http://", "https://")):
        raise UsageError(f"invalid --advertise-url {args.advertise_url!r}: not http(s)://")
    slots = getattr(args, "slots", None)
    if slots is not None and slots < 1:
        raise UsageError(f"invalid --slots {slots}: at least 1")
    caches = tuple(parse_cache("--cache", value) for value in getattr(args, "cache", None) or ())
    for spec in caches:
        if spec.type != "s3":
            raise UsageError(f"invalid --cache type={spec.type}: a cluster's shared cache is "
                             "type=s3 (every node must reach it)")
    ready_arches = parse_ready_arches(getattr(args, "ready_arch", None))
    history = Retention.parse(
        getattr(args, "history_max_records", None) or os.environ.get(RECORDS_ENV),
        getattr(args, "history_max_age", None) or os.environ.get(AGE_ENV),
        where=("--history-max-records", "--history-max-age"))
    return ServeSettings(root=default_root(os.environ), host=args.host, port=args.port,
                         ray_address=args.ray_address, token=token, tls_cert=args.tls_cert,
                         tls_key=args.tls_key, insecure=args.insecure,
                         advertise_url=args.advertise_url, slots=slots, caches=caches,
                         ready_arches=ready_arches, history=history)


def server_ssl_context(cert: str, key: str) -> Any:
    """The server's ``ssl.SSLContext`` from PEM files; a ``UsageError`` if unusable."""
    import ssl  # noqa: PLC0415

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load --tls-cert {cert!r} / --tls-key {key!r}: {exc}") from None
    return context


# --- the app ---------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _auth_middleware(token: str) -> Any:
    """Refuse a ``/ws`` handshake without ``Authorization: Bearer <token>`` (401); the
    probes, ``/metrics`` (counts only) and ``/session`` (its own per-build tokens) pass."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            if not given:
                raise web.HTTPUnauthorized(text=f"this endpoint needs a token: {_TOKEN_HINT}\n")
            if not hmac.compare_digest(given.encode(), expected):
                raise web.HTTPUnauthorized(text=f"wrong token: {_TOKEN_HINT}\n")
        return await handler(request)

    return authorize


def make_app(daemon: Daemon, token: str | None,
             ready_arches: tuple[str, ...] = ()) -> web.Application:
    """The endpoint's aiohttp application over ``daemon``, with its probes."""
    app = web.Application(middlewares=[_auth_middleware(token)] if token else [])
    daemon.routes(app)
    Probes(daemon.coordinator, ready_arches, daemon.stopping).routes(app)
    MetricsPage(daemon.coordinator).routes(app)
    return app


# --- the process -----------------------------------------------------------------------


def _say(text: str, level: int = logging.INFO) -> None:
    _log.log(level, text)


def _coordinator(runtime: RayRuntime, settings: ServeSettings) -> ActorRef:
    """The coordinator this endpoint submits to: the cluster's (attached to a cluster),
    else that of the one-node cluster this endpoint started, with its node's worker."""
    history = history_settings(settings.root, settings.history)
    if settings.ray_address:
        return runtime.cluster_coordinator(history)
    return runtime.create_actors(settings.root, history)


async def serve(settings: ServeSettings, coordinator: ActorRef,
                ready: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM/SIGINT; ``ready`` is given the URL once the site listens."""
    daemon = Daemon(coordinator, float("inf"), settings.session_url,
                    _certificate(settings.tls_cert), remote=True, caches=settings.caches)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.stopping.set)
    runner = web.AppRunner(make_app(daemon, settings.token, settings.ready_arches),
                           shutdown_timeout=5.0,
                           handle_signals=False)
    await runner.setup()
    try:
        context = (server_ssl_context(settings.tls_cert, settings.tls_key)
                   if settings.tls_cert and settings.tls_key else None)
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=context,
                           reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ServiceError(f"cannot listen on {settings.host}:{settings.port}: "
                               f"{exc.strerror or exc}") from None
        ready(settings.url)
        await daemon.run_until_stopped()
    finally:
        await daemon.close_connections()
        await runner.cleanup()


def _ready(url: str) -> None:
    print(f"dockyard serving on {url}", flush=True)


def _start_ray(settings: ServeSettings) -> RayRuntime:
    os.environ.update(ray_environment(settings.root, os.environ))
    Path(os.environ["HOME"]).mkdir(parents=True, exist_ok=True)
    machine = RaySettings.for_machine(settings.root)
    if settings.slots is not None:
        machine = dataclasses.replace(machine, arch_slots=settings.slots)
    runtime = RayRuntime(machine)
    if settings.ray_address:
        runtime.attach(*_cluster_address(settings))
    else:
        runtime.start()
    return runtime


async def _serve_with(runtime: RayRuntime, settings: ServeSettings) -> None:
    coordinator = _coordinator(runtime, settings)
    async with asyncio.timeout(120):
        await coordinator.call("ping")
    _say("coordinator up")
    await serve(settings, coordinator, _ready)


def run_serve(args: argparse.Namespace) -> int:
    """``dockyard serve``."""
    settings = serve_settings(args)
    configure_logging(sys.stderr)  # JSON lines unless on a terminal (workers/_logs.py)
    if settings.token is None:
        _say(f"no --token-file: anyone who can reach {settings.host} may build "
             f"(and read what this endpoint's builds read)", logging.WARNING)
    settings.root.mkdir(parents=True, exist_ok=True)
    runtime = _start_ray(settings)
    try:
        asyncio.run(_serve_with(runtime, settings))
    finally:
        started = process_tree(os.getpid())
        runtime.shutdown()
        killed = kill_processes(started) if not settings.ray_address else 0
        _say(f"stopped ({killed} leftover processes killed)")
    return 0


def _cluster_address(settings: ServeSettings) -> tuple[str, str | None]:
    """The GCS address to attach to, and this machine's node address in that cluster: a
    node started under this root (``dockyard node start``) gives both; ``--ray-address``
    wins for the first."""
    from ._node import NodePaths, read_record  # noqa: PLC0415

    record = read_record(NodePaths(settings.root))
    address = settings.ray_address or ""
    if address in ("", "auto") and record is not None:
        address = record.address
    return address, record.node_ip if record is not None else None


def _certificate(path: str | None) -> str | None:
    """The endpoint's certificate (PEM) that workers trust for the session channel."""
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --tls-cert {path!r}: {exc}") from None
