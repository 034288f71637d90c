"""Where a build's secret values come from, as a worker sees them: ``SecretSource``.

``await source.secret(id)`` is the value of secret ``id``, or None when the build has no
such secret.  Two sources:

- ``DictSecrets``: values in memory (an in-process build, cluster/_local_build.py);
- ``ChannelSecrets``: asked of the client over the build's session channel
  (workers/_session_channel.py, ``secret.get``) only when a RUN mounts the secret, and
  only for the ids the request named; the value is never kept here.

A value is never logged, put in a layer, a record, an event or a repr.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from dockyard.scheduler._errors import ServiceError

if TYPE_CHECKING:
    from ._session_channel import SessionChannel

__all__ = ["ChannelSecrets", "DictSecrets", "SecretAsker", "SecretSource", "session_channel",
           "session_secrets"]


class SecretSource(Protocol):
    async def secret(self, ident: str) -> bytes | None:
        """The value of secret ``ident``, or None when the build has none of that id."""


class SecretAsker(Protocol):
    """What ``ChannelSecrets`` needs of a channel (``SessionChannel`` is one)."""

    async def ask(self, what: str, params: dict[str, Any]) -> Any: ...


class DictSecrets:
    """Secrets held in memory, by id."""

    def __init__(self, values: Mapping[str, bytes] | None = None) -> None:
        self._values = dict(values or {})

    def __repr__(self) -> str:
        return f"<DictSecrets ids={sorted(self._values)}>"

    async def secret(self, ident: str) -> bytes | None:
        return self._values.get(ident)


class ChannelSecrets:
    """Secrets asked of the client when needed: ``ids`` are those the request named."""

    def __init__(self, channel: SecretAsker, ids: Collection[str]) -> None:
        self._channel = channel
        self.ids = frozenset(ids)
        self.asked = 0  # secret.get asks sent

    def __repr__(self) -> str:
        return f"<ChannelSecrets ids={sorted(self.ids)} asked={self.asked}>"

    async def secret(self, ident: str) -> bytes | None:
        if ident not in self.ids:
            return None
        self.asked += 1
        value = await self._channel.ask("secret.get", {"id": ident})
        if value is not None and not isinstance(value, bytes):
            raise ServiceError(f"the client answered secret {ident!r} with a "
                               f"{type(value).__name__}, not bytes",
                               hint="use the same dockyard version on the client and the "
                                    "cluster")
        return value


def session_channel(session: Mapping[str, Any]) -> SessionChannel | None:
    """The build's session channel a request's session map names (``{"url", "id",
    "token", "ca_pem"}``, cluster/_daemon.py), or None when it names none; the caller
    ``aclose``s it when the build's session closes."""
    if not session.get("url"):
        return None
    from ._session_channel import SessionChannel  # noqa: PLC0415

    ca_pem = session.get("ca_pem")
    return SessionChannel(str(session["url"]), str(session["id"]), str(session["token"]),
                          str(ca_pem) if ca_pem else None)


def session_secrets(session: Mapping[str, Any], channel: SecretAsker | None
                    ) -> SecretSource:
    """The secrets of a request's session map (``secret_ids``), asked over ``channel``
    (none without a channel)."""
    ids = [str(ident) for ident in session.get("secret_ids", ())]
    return DictSecrets() if channel is None else ChannelSecrets(channel, ids)
