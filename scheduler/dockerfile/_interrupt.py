"""Stopping the frontend from outside: a scope holding a check, and checkpoints.

The frontend is synchronous, and its caller runs it in a thread, which cannot be cancelled.
So ``build_graph`` takes an ``interrupt`` callable and runs inside ``interruptible(it)``;
every ``checkpoint()`` in the frontend (each logical line parsed, each node typed, each
instruction converted, each word expanded, each group of build checks) calls it, and it
raises to stop the frontend there.  It should raise a ``BaseException`` that is no
``Exception`` (``asyncio.CancelledError``), so that nothing in the frontend takes it for a
fault of the Dockerfile; it passes through unchanged.

The scope is a context variable, as trio's cancel scopes are: no parameter is threaded
through every layer, and a checkpoint outside any scope (``parse`` called on its own) does
nothing.  Part of the parser layer, so every layer of the frontend can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["Interrupt", "checkpoint", "interruptible"]

Interrupt = Callable[[], None]

_SCOPE: ContextVar[Interrupt | None] = ContextVar("dockerfile_interrupt", default=None)


def checkpoint() -> None:
    """Call the enclosing scope's check (which raises to stop); nothing outside a scope."""
    check = _SCOPE.get()
    if check is not None:
        check()


@contextmanager
def interruptible(check: Interrupt | None) -> Iterator[None]:
    """Run the block with ``check`` called at every checkpoint (None: never)."""
    token = _SCOPE.set(check)
    try:
        yield
    finally:
        _SCOPE.reset(token)
