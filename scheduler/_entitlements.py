"""Entitlements: the privileges a build must be granted before a RUN may use them, as
BuildKit checks them (util/entitlements, llbsolver ValidateEntitlements).

``RUN --network=host`` needs ``network.host`` and ``RUN --security=insecure`` needs
``security.insecure``; ``dockyard build --allow ENTITLEMENT`` (buildx's flag) grants them.
The check reads the graph only, so it runs where the frontend runs, before anything is
solved or cached: a build that is not granted one fails naming the RUN.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._errors import UsageError

if TYPE_CHECKING:  # the client parses --allow without importing the graph (~10 ms)
    from ._graph import BuildGraph, ExecOp

__all__ = ["ENTITLEMENTS", "NETWORK_HOST", "SECURITY_INSECURE", "check_entitlements",
           "parse_entitlements"]

NETWORK_HOST = "network.host"
SECURITY_INSECURE = "security.insecure"
ENTITLEMENTS = (NETWORK_HOST, SECURITY_INSECURE)


def parse_entitlements(values: Iterable[str]) -> tuple[str, ...]:
    """``--allow`` values (each one or a comma-separated list), checked, in order, once."""
    found: list[str] = []
    for value in values:
        for item in (part.strip() for part in value.split(",")):
            if item not in ENTITLEMENTS:
                raise UsageError(f"invalid --allow {value!r}: unknown entitlement {item!r}",
                                 hint=f"use one of {', '.join(ENTITLEMENTS)}")
            if item not in found:
                found.append(item)
    return tuple(found)


def _needed(op: ExecOp) -> tuple[str, ...]:
    """The entitlements ``op`` needs."""
    return ((NETWORK_HOST,) if op.network == "host" else ()) + (
        (SECURITY_INSECURE,) if op.security == "insecure" else ())


def check_entitlements(graph: BuildGraph, allowed: Iterable[str]) -> None:
    """A ``UsageError`` naming the first RUN that needs an entitlement not ``allowed``."""
    from ._graph import ExecOp  # noqa: PLC0415 -- see the import at the top

    granted = frozenset(allowed)
    for vertex in graph.vertices.values():
        if not isinstance(vertex.op, ExecOp):
            continue
        for entitlement in _needed(vertex.op):
            if entitlement not in granted:
                where = " ".join(part for part in (vertex.location, vertex.name) if part)
                raise UsageError(f"{where}: entitlement {entitlement} is not allowed",
                                 hint=f"pass --allow {entitlement} to grant it to this build")
