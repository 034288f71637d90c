"""Every Ray API call dockyard makes, behind three small classes (STYLE.md habit 9):

- ``RayRuntime``: start the private head of one ``DOCKYARD_ROOT`` and its two actors, shut
  it down;
- ``ActorRef``: call a method of an actor (``call``) or iterate one that streams
  (``stream``), with Ray's errors translated to the project's tree;
- ``ActorStream``: the items of a streaming call, cancellable.

The coordinator, the worker actor and the daemon hold these, never a raw Ray handle, so
their logic can run against fakes.  ``ray`` is imported lazily: a client that only talks to
the service never pays for it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.scheduler._errors import ServiceError, WorkerLost

__all__ = [
    "ARCHES", "COORDINATOR_NAME", "NAMESPACE", "RAY_SYSTEM_CONFIG", "SERVICE_ACTORS",
    "WORKER_PREFIX", "ActorRef", "ActorStream", "RayRuntime", "RaySettings",
    "discover_workers", "machine_arch", "ray_environment", "ray_temp_dir", "worker_name",
]

ARCHES = ("amd64", "arm64")  # this node runs arm64 through QEMU binfmt
NAMESPACE = "dockyard"  # the Ray namespace of every named dockyard actor
COORDINATOR_NAME = "dockyard-coordinator"  # the one coordinator of a cluster (detached)
WORKER_PREFIX = "dockyard-worker-"  # + the node's id: one worker actor per node
SERVICE_ACTORS = 2  # the embedded service's actors: its coordinator and its node's worker


def machine_arch() -> str:
    """This machine's architecture as an OCI platform names it (amd64, arm64, ...)."""
    import platform

    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv8l": "arm64"}.get(machine, machine)


def worker_name(node_id: str) -> str:
    """The name of the worker actor of the Ray node ``node_id`` (hex)."""
    return WORKER_PREFIX + node_id[:12]
_MAX_TEMP_DIR = 40  # Ray's session sockets must fit in a unix socket path (107 bytes)


def ray_temp_dir(root: Path) -> Path:
    """Where the root's Ray keeps its session: ``<root>/run/ray``, or, when that path is
    too long for Ray's unix sockets, a short directory in /tmp named after the root."""
    preferred = root / "run" / "ray"
    if len(str(preferred)) <= _MAX_TEMP_DIR:
        return preferred
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return Path("/tmp") / f"dockyard-ray-{os.getuid()}-{tag}"


def ray_environment(root: Path, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a root's daemon (and so of its Ray processes): HOME and
    RAY_TMPDIR per root, so two roots never share Ray state or tokens; token auth set
    explicitly; the user's docker config still found (DOCKER_CONFIG)."""
    env = dict(base)
    home = base.get("HOME", str(Path.home()))
    env.setdefault("DOCKER_CONFIG", str(Path(home) / ".docker"))
    env.setdefault("DOCKYARD_USER_HOME", home)
    env["HOME"] = str(root / "run" / "home")
    env["RAY_TMPDIR"] = str(ray_temp_dir(root))
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["DOCKYARD_ROOT"] = str(root)
    return env


@dataclass(frozen=True, slots=True)
class RaySettings:
    """How the private head of one root is started."""

    root: Path
    # Ray's "CPU" resource, which no dockyard actor asks for (they take num_cpus=0): Ray
    # starts that many Python workers with the head and keeps as many idle, so it is the
    # number of the service's actors (the coordinator and the worker), whatever the
    # machine's CPUs; more would be idle processes of ~80 MiB each.
    num_cpus: int
    arch_slots: int  # units of each "arch:<arch>" resource the node offers
    # A cap, not an allocation: plasma's pages (shared memory) are resident only once an
    # object used them.  The service passes only small messages, and no peer's blobs (one
    # node), through it, so Ray's minimum (78,643,200) is enough.
    object_store_bytes: int = 78_643_200

    @classmethod
    def for_machine(cls, root: Path) -> RaySettings:
        cpus = os.cpu_count() or 1
        return cls(root=root, num_cpus=SERVICE_ACTORS, arch_slots=cpus)


class RayRuntime:
    """The Ray head a daemon started, and the actors it created on it."""

    def __init__(self, settings: RaySettings) -> None:
        self.settings = settings
        self._started = False  # True between start() and shutdown()
        self._node: Any = None  # the head start() started (a ray Node), until shutdown()

    def start(self) -> None:
        """Start the head of a one-node cluster (blocking, ~2.5-4 s), on 127.0.0.1 only: its
        processes listen on and talk over loopback (NOTES-ray.md), and other nodes cannot
        join it (a cluster's head is ``dockyard node start --head``); a failure is a
        ``ServiceError``.

        Only the processes the service uses are started (issue 10): the GCS, the raylet
        and the two agents the raylet cannot run without; not the dashboard's API server,
        the autoscaler's monitor or the log monitor (``_HeadNode``).  The daemon then
        connects to the head as its driver."""
        # Read when ray is first imported (ray_constants): set before that import.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        import ray

        temp = ray_temp_dir(self.settings.root)
        temp.mkdir(parents=True, exist_ok=True)
        try:
            self._node = _start_head(self.settings, temp)
            ray.init(address=self._node.address, namespace=NAMESPACE, log_to_driver=False,
                     configure_logging=False)
        except Exception as exc:  # Ray raises many types; all mean "could not start"
            self._stop_head()
            raise ServiceError(f"cannot start Ray under {temp}: {exc}",
                               hint=f"see the daemon log in {self.settings.root}/run") from None
        self._started = True

    @property
    def logs_dir(self) -> str:
        """Where the started head's processes, actors included, write their logs."""
        return str(self._node.get_logs_dir_path()) if self._node is not None else ""

    def attach(self, address: str, node_ip: str | None = None) -> None:
        """Connect to a running Ray cluster at ``address`` (``auto`` or ``HOST:PORT``) as a
        driver, through the raylet at ``node_ip`` when given (a node on a loopback address
        other than 127.0.0.1: Ray would pick the machine's address); a failure is a
        ``ServiceError``."""
        import ray

        local: dict[str, Any] = {"_node_ip_address": node_ip} if node_ip else {}
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                     configure_logging=False, **local)
        except Exception as exc:  # Ray raises many types; all mean "could not connect"
            raise ServiceError(f"cannot connect to the Ray cluster at {address}: {exc}",
                               hint="check the address printed by 'dockyard node start "
                                    "--head', and RAY_AUTH_MODE/RAY_AUTH_TOKEN") from None
        self._started = True

    def create_worker(self, root: Path, arches: list[str], native: list[str], slots: int,
                      node_id: str, gc: dict[str, Any] | None = None) -> ActorRef:
        """The worker actor of node ``node_id``: detached, pinned to that node, named
        ``worker_name(node_id)`` (an existing one is reused, with the settings it has);
        ``gc``: its garbage collector's settings (workers/_gc_policy.py ``GcSettings`` as
        a map; None: the defaults)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from dockyard.workers._actor import WorkerActor

        worker_cls: Any = ray.remote(WorkerActor)
        handle = worker_cls.options(
            name=worker_name(node_id), namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, num_cpus=0, max_concurrency=1000, max_restarts=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(str(root), arches, native, slots, gc)
        return ActorRef(handle, "worker")

    def cluster_coordinator(self, history: Mapping[str, Any] | None = None) -> ActorRef:
        """The cluster's coordinator (named ``COORDINATOR_NAME``, detached, restarted by
        Ray if it dies; made here when the cluster has none): it finds the workers of
        every node by name, so endpoints and nodes may come and go around it."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from dockyard.cluster._coordinator import Coordinator

        node_id = ray.get_runtime_context().get_node_id()
        coordinator_cls: Any = ray.remote(Coordinator)
        coordinator = coordinator_cls.options(
            name=COORDINATOR_NAME, namespace=NAMESPACE, get_if_exists=True,
            lifetime="detached", max_restarts=-1, num_cpus=0, max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True),
        ).remote(discover=True, history=history)
        return ActorRef(coordinator, "coordinator")

    def create_actors(self, root: Path, history: Mapping[str, Any] | None = None
                      ) -> ActorRef:
        """The embedded service's actors on this head: the node's worker (its native arch
        and, emulated, every other one dockyard knows) and the coordinator, which finds
        it (and any worker that joins) by name.  Ray restarts either when it dies (the
        same handle then reaches the new one): the service outlives its actors.
        ``history``: where and how long the coordinator keeps build records
        (cluster/_history.py ``history_settings``)."""
        import ray

        from dockyard.cluster._coordinator import Coordinator
        from dockyard.workers._gc_policy import settings_from_environ

        native = machine_arch()
        arches = [native, *(a for a in ARCHES if a != native)]
        node_id = ray.get_runtime_context().get_node_id()
        self.create_worker(root, arches, [native], self.settings.arch_slots, node_id,
                           settings_from_environ(os.environ).to_wire())
        coordinator_cls: Any = ray.remote(Coordinator)
        coordinator = coordinator_cls.options(
            name=COORDINATOR_NAME, namespace=NAMESPACE, get_if_exists=True, num_cpus=0,
            max_concurrency=1000, max_restarts=-1).remote(discover=True, history=history)
        return ActorRef(coordinator, "coordinator")

    def shutdown(self) -> None:
        """Stop the head and every process it started (Ray's own bookkeeping; never
        ``ray stop``, which would kill other roots' clusters too)."""
        if not self._started:
            return
        import ray

        ray.shutdown()
        self._stop_head()
        self._started = False

    def _stop_head(self) -> None:
        node, self._node = self._node, None
        if node is not None:
            node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)


#: Ray's ``_system_config`` of every dockyard head (the embedded one, ``node start
#: --head``): no task events.  Ray's workers report every task and actor call's state
#: changes, and the GCS keeps up to 100,000 tasks' for the state API and the dashboard,
#: which dockyard uses neither of; measured on the embedded service, the GCS grew from 43
#: to 78 MiB RSS over 5,000 pings (44 MiB with this), and would grow on to that cap.
RAY_SYSTEM_CONFIG: dict[str, Any] = {"task_events_report_interval_ms": 0}


def _start_head(settings: RaySettings, temp: Path) -> Any:
    """Start the embedded head's processes (what ``ray.init()`` does when it starts a
    cluster, less what the service does not use); the ray ``Node``.

    ``ray.init()`` has no parameter for the monitors and always starts the dashboard's
    API server, hence Ray's own ``Node`` and ``RayParams`` (private: on a Ray upgrade,
    tests/integration/cluster/test_service.py's process list says whether this still
    holds)."""
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default,
        ensure_token_if_auth_enabled,
    )
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    class _HeadNode(Node):
        def start_api_server(self, **_: Any) -> None:
            """No dashboard API server: the service calls none of its APIs."""

    config: dict[str, Any] = dict(RAY_SYSTEM_CONFIG)
    enable_token_auth_by_default()  # as ray.init() does: RAY_AUTH_MODE decides, else token
    ensure_token_if_auth_enabled(config, create_token_if_missing=True)
    resources = {f"arch:{arch}": float(settings.arch_slots) for arch in ARCHES}
    # No autoscaler (one fixed node) and no log monitor (it only forwards the workers'
    # output to drivers; the actors' logs stay in the session's logs/ directory).
    without: dict[str, Any] = {"no_monitor": True, "include_log_monitor": False}
    params = RayParams(num_cpus=settings.num_cpus, resources=resources,
                       object_store_memory=settings.object_store_bytes, temp_dir=str(temp),
                       include_dashboard=False, _system_config=config, **without)
    return _HeadNode(params, head=True, shutdown_at_exit=False, spawn_reaper=True,
                     ray_init_cluster=True)


def discover_workers() -> dict[str, ActorRef]:
    """The worker actors of the connected cluster, by name (blocking: Ray's GCS calls)."""
    import ray

    found: dict[str, ActorRef] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name, namespace = actor.get("name", ""), actor.get("namespace", "")
        if namespace != NAMESPACE or not name.startswith(WORKER_PREFIX):
            continue
        try:
            found[name] = ActorRef(ray.get_actor(name, namespace=NAMESPACE), "worker")
        except ValueError:  # it died between the listing and the look-up
            continue
    return found


class ActorStream:
    """The items of one streaming actor call, in order; ``cancel`` stops the call (the
    actor's coroutine sees ``CancelledError``)."""

    def __init__(self, generator: Any, what: str) -> None:
        self._generator = generator  # a ray ObjectRefGenerator
        self._what = what  # "coordinator.solve", for error messages

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()

    async def _items(self) -> AsyncIterator[Any]:
        async for ref in self._generator:
            yield await _translated(ref, self._what)

    def cancel(self) -> None:
        import ray

        try:
            ray.cancel(self._generator)
        except Exception:  # the call already ended: nothing left to cancel
            return


class ActorRef:
    """One actor, as dockyard calls it.  Picklable: an actor may hand it to another."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle  # the Ray actor handle
        self.name = name  # "worker", "coordinator": for error messages

    async def call(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on the actor, awaited."""
        return await _translated(getattr(self.handle, method).remote(*args),
                                 f"{self.name}.{method}")

    def stream(self, method: str, *args: Any) -> ActorStream:
        """``method(*args)``, an async generator on the actor, as a stream of its items."""
        generator = getattr(self.handle, method).options(num_returns="streaming")
        return ActorStream(generator.remote(*args), f"{self.name}.{method}")


async def _translated(ref: Any, what: str) -> Any:
    """Await ``ref``; Ray's failures become ``WorkerLost``/``ServiceError``."""
    import ray.exceptions as rex

    try:
        return await ref
    except (rex.ActorDiedError, rex.ActorUnavailableError) as exc:
        raise WorkerLost(f"the actor of {what} died or vanished: {type(exc).__name__}",
                         hint="Ray restarts dockyard's actors: build again (if it fails "
                              "the same way, see the service's log)") from None
    except rex.TaskCancelledError:
        raise ServiceError(f"{what} was cancelled") from None
    except rex.RayTaskError as exc:
        raise ServiceError(f"{what} failed: {exc.cause!r}",
                           hint="this is a bug in dockyard; see the daemon log") from None
    except rex.RayError as exc:
        raise ServiceError(f"{what} failed in Ray: {exc}") from None
