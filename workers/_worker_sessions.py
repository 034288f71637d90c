"""The builds open on one worker: what each brought, and its end.

A build is a *session* (``SessionTable.open``/``close``, by the coordinator's build id).
It comes as the ``options`` and ``session`` maps of a build request:

- the context as a manifest (``session.contexts.<name>``, workers/_context_manifest.py):
  its checksums come from the manifest and the contents this worker lacks are read from
  the client through the build's session channel (``context.read``); the worker never
  opens a client path;
- secrets by id only, their values asked of the client when a RUN mounts one
  (workers/_secrets.py), never kept, logged or put in a call;
- the client's S3 credentials (its ``AWS_*``), asked (``cache.credentials``) only when
  the build uses a ``type=s3`` cache, for that build's backends only, never logged;
- ssh agents by id only (``session.ssh_ids``): a RUN that mounts one gets a socket
  relayed to the client's agent over the channel (workers/_ssh_relay.py);
- the session channel itself (``session.url``/``id``/``token``: the endpoint that relays
  this worker's asks to the client, workers/_session_channel.py);
- its outputs: each file output (and ``local``, as a tar) is written into a scratch file
  of this worker, then handed to the client (workers/_output_send.py); image outputs are
  pushed from here.

``close`` cancels and awaits whatever of the build still runs here (a cancelled build
leaves nothing mounted or running), drains its remote caches (a failed build keeps what
it finished), closes its channel and removes its scratch files.  (The store's bounds,
``DOCKYARD_CACHE_MAX`` among them, are the worker's garbage collector's, workers/_gc.py,
which the actor starts after each build.)  A build whose
coordinator died is closed when the next coordinator (the request's ``coordinator``, an
id per coordinator process) opens a build here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard.cache_backends._credentials import S3Credentials
from dockyard.scheduler._build_request import BuildOptions, OutputSpec
from dockyard.scheduler._errors import DockyardError, SolveError
from dockyard.scheduler._platform import parse_platform
from dockyard.scheduler._progress import Event, event_to_wire

from ._build import (
    LOCAL_AS_TAR,
    ImageForm,
    LocalBuildOptions,
    Output,
    prepared,
    remote_records,
)
from ._context_fetch import ask_reader
from ._context_manifest import ContextManifest
from ._remote_cache import RemoteRecords
from ._runtime import BuildSession, RuntimeBackend, WorkerRuntime
from ._secrets import SecretSource, session_channel, session_secrets
from ._ssh_relay import ChannelSshAgents

__all__ = ["PendingEvents", "SessionTable", "WorkerSession"]

_log = logging.getLogger(__name__)


class PendingEvents:
    """An ``EventSink`` that keeps events (wire maps) until an answer carries them: a
    build's remote-cache warnings ride on its next record or export answer."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []

    def emit(self, event: Event) -> None:
        self._events.append(event_to_wire(event))

    def take(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events


@dataclass(eq=False)
class WorkerSession:
    """One build on this worker."""

    backend: RuntimeBackend  # the build's solve backend (its secret source; dropped on close)
    options: LocalBuildOptions  # what the outputs are written with (scratch files)
    request: BuildOptions  # the options the client sent (tags, pushes)
    scratch: Path  # this build's scratch directory on the worker (removed on close)
    # Client output index -> the scratch file that output is written to, then sent.
    outputs: dict[int, Path] = field(default_factory=dict)
    channel: Any = None  # to the client (a SessionChannel through the endpoint), or None
    records: RemoteRecords | None = None  # its --cache-from/--cache-to, or None
    pending: PendingEvents = field(default_factory=PendingEvents)  # warnings, unsent
    # Layer digest -> the remote cache or peer serving it, for this build's calls only
    # (WorkerRuntime.remote_blobs in them): its caches may hold its client's credentials.
    remotes: dict[str, Any] = field(default_factory=dict)
    # The build's calls running here now; close cancels and awaits them.
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # The incarnation of the coordinator that opened it ("" when none was named): a
    # build whose coordinator died is closed when its successor opens one here.
    coordinator: str = ""

    async def ask(self, what: str, params: dict[str, Any]) -> Any:
        """An ask of the build's client (a ``SolveError`` when the build has no channel)."""
        if self.channel is None:
            raise SolveError(f"this build has no session channel to ask {what!r}",
                             hint="submit the build through a dockyard endpoint")
        return await self.channel.ask(what, params)

    async def send(self, what: str, params: dict[str, Any]) -> Awaitable[Any]:
        """An ask sent now, its answer awaited later (``SessionChannel.send``)."""
        if self.channel is None:
            raise SolveError(f"this build has no session channel to ask {what!r}",
                             hint="submit the build through a dockyard endpoint")
        answer: Awaitable[Any] = await self.channel.send(what, params)
        return answer


class SessionTable:
    """The open builds of one worker, by build id."""

    def __init__(self, root: Path, engine: Any,
                 channels: Callable[[Mapping[str, Any]], Any] = session_channel) -> None:
        self.root = root  # the worker's DOCKYARD_ROOT
        self._engine = engine  # () -> the WorkerRuntime, made on first use
        # A request's session map -> the build's channel to its client (or None): the
        # endpoint's relay in a service; the client's handlers in-process in tests.
        self.channels = channels
        self._sessions: dict[str, WorkerSession] = {}  # build id -> its open session

    def __len__(self) -> int:
        return len(self._sessions)

    def __repr__(self) -> str:
        return f"<SessionTable open={len(self._sessions)}>"

    def ids(self) -> frozenset[str]:
        """The ids of the open builds."""
        return frozenset(self._sessions)

    def find(self, build_id: str | None) -> WorkerSession | None:
        return self._sessions.get(build_id) if build_id is not None else None

    def get(self, build_id: str) -> WorkerSession:
        session = self._sessions.get(build_id)
        if session is None:
            raise SolveError(f"the worker has no open session for build {build_id}",
                             hint="the build was closed or the worker restarted; "
                                  "build again")
        return session

    async def open(self, build_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Open build ``build_id``: its epoch (SOURCE_DATE_EPOCH, as applied)."""
        if build_id in self._sessions:
            return {"epoch": self._sessions[build_id].options.epoch}
        coordinator = str(request.get("coordinator") or "")
        await self._close_orphans(coordinator)
        options = BuildOptions.from_wire(request["options"])
        part: Mapping[str, Any] = request.get("session") or {}
        channel = self.channels(part)
        secrets = session_secrets(part, channel)
        try:
            credentials = await cache_credentials(channel, options)
            session = self._made(options, part, secrets, channel, credentials,
                                 _started(request))
        except BaseException:
            if channel is not None:
                await channel.aclose()
            raise
        session.coordinator = coordinator
        self._sessions[build_id] = session
        return {"epoch": session.options.epoch}

    async def _close_orphans(self, coordinator: str) -> None:
        """Close the builds opened by another coordinator than ``coordinator``: a cluster
        has one, so they are a dead one's, whose ``close_session`` never comes (their
        RUNs, channels and scratch would stay for the worker's life)."""
        if not coordinator:
            return
        orphans = [build_id for build_id, session in self._sessions.items()
                   if session.coordinator and session.coordinator != coordinator]
        for build_id in orphans:
            _log.warning("closing build %s: the coordinator that opened it is gone", build_id)
            await self.close(build_id)

    def _made(self, options: BuildOptions, part: Mapping[str, Any], secrets: SecretSource,
              channel: Any, credentials: S3Credentials | None,
              started: float) -> WorkerSession:
        manifests = _manifests(part)
        engine: WorkerRuntime = self._engine()
        scratch = Path(tempfile.mkdtemp(prefix="build-", dir=engine.tmp))
        outputs = {index: scratch / f"output-{index}" for index, spec
                   in enumerate(options.outputs) if spec.type != "image"}
        local = prepared(_local_options(self.root, options, part, outputs, started))
        reader = ask_reader(channel.ask) if channel is not None and manifests else None
        build = BuildSession(manifests=manifests, context_reader=reader, secrets=secrets,
                             ssh_agents=_ssh_agents(part, channel), epoch=local.epoch,
                             insecure_registries=frozenset(local.insecure_registries),
                             pull=local.pull)
        session = WorkerSession(engine.backend(build), local, options, scratch, outputs,
                                channel)
        if local.cache_to or local.cache_from:
            session.records = remote_records(
                engine, dataclasses.replace(local, events=session.pending), credentials)
        return session

    async def close(self, build_id: str) -> None:
        """End build ``build_id`` (see the module docstring); an unknown one: nothing."""
        session = self._sessions.pop(build_id, None)
        if session is None:
            return
        for task in list(session.tasks):
            task.cancel()
        if session.tasks:
            await asyncio.wait(list(session.tasks))
        await session.backend.aclose()
        if session.records is not None:  # a failed build keeps what it finished
            with contextlib.suppress(DockyardError):
                await session.records.drain(failed=True)
            await session.records.aclose()
        if session.channel is not None:
            await session.channel.aclose()
        await asyncio.to_thread(shutil.rmtree, session.scratch, True)


async def cache_credentials(channel: Any,
                            options: BuildOptions) -> S3Credentials | None:
    """The client's credentials for the build's S3 caches (``cache.credentials``: its
    ``AWS_*``, buildx forwards them), asked only when a ``type=s3`` cache is used; None
    (the worker's own chain) when the client has none.  Never kept beyond the build's
    backends, never logged."""
    specs = (*options.cache_to, *options.cache_from)
    if channel is None or not any(spec.type == "s3" for spec in specs):
        return None
    answer = await channel.ask("cache.credentials", {})
    return S3Credentials.from_variables(answer) if isinstance(answer, dict) else None


def _ssh_agents(part: Mapping[str, Any],
                channel: Any) -> ChannelSshAgents | None:
    """The client's agents (``session.ssh_ids``), relayed over the channel."""
    ids = [str(ident) for ident in part.get("ssh_ids") or ()]
    return ChannelSshAgents(channel, ids) if channel is not None and ids else None


def _manifests(part: Mapping[str, Any]) -> dict[str, ContextManifest]:
    """The build's contexts, as the client listed them (a malformed one: ``SolveError``)."""
    contexts = part.get("contexts") or {}
    if not isinstance(contexts, Mapping):
        raise SolveError("malformed build request: session.contexts is not a map",
                         hint="use the same dockyard version on the client and the cluster")
    return {str(name): ContextManifest.from_wire(wire) for name, wire in contexts.items()}


def _local_options(root: Path, options: BuildOptions, part: Mapping[str, Any],
                   outputs: Mapping[int, Path], started: float = 0.0) -> LocalBuildOptions:
    """The engine's options for a request: every file output (and ``local``, as a tar)
    goes to its scratch file in ``outputs``; image outputs are pushed after."""
    patterns = part.get("ignore_patterns")
    return LocalBuildOptions(
        root=root, filename=options.filename,
        platforms=tuple(parse_platform(p) for p in options.platforms), target=options.target,
        build_args=dict(options.build_args),
        ignore_patterns=None if patterns is None else [str(p) for p in patterns],
        outputs=tuple(_scratch_output(spec, outputs[index])
                      for index, spec in enumerate(options.outputs) if spec.type != "image"),
        names=options.tags, no_cache=options.no_cache, epoch=options.epoch,
        insecure_registries=tuple(options.insecure_registries), pull=options.pull,
        cache_to=tuple(options.cache_to), cache_from=tuple(options.cache_from),
        attests=options.attests, started=started, annotations=tuple(options.annotations))


def _started(request: Mapping[str, Any]) -> float:
    """When the coordinator began the build (its request's ``started``; 0: not said, a
    coordinator of an earlier version)."""
    started = request.get("started")
    return float(started) if isinstance(started, int | float) else 0.0


def _scratch_output(spec: OutputSpec, path: Path) -> Output:
    """The output written here: a ``local`` directory (and an oci or docker layout with
    ``tar=false``) travels as a tar the client unpacks."""
    return Output(LOCAL_AS_TAR if spec.type == "local" else spec.type, path,
                  names=spec.names if spec.type in ("oci", "docker") else None,
                  form=image_form(spec), platform_split=spec.platform_split)


def image_form(spec: OutputSpec) -> ImageForm:
    """How the image of the output ``spec`` is made (its exporter attributes)."""
    return ImageForm(spec.compression, spec.oci_mediatypes, spec.rewrite_timestamp)
