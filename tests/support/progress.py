"""Progress in tests: reading ``--progress=plain`` output, recording events."""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler._progress import Event, VertexLog, VertexStarted, warning_of


def plain_blocks(progress: str) -> dict[str, list[str]]:
    """``#N`` -> its lines (without the ``#N ``), from --progress=plain output."""
    found: dict[str, list[str]] = {}
    for line in progress.splitlines():
        if line.startswith("#"):
            number, _, rest = line.partition(" ")
            found.setdefault(number, []).append(rest)
    return found


@dataclass
class Recorder:
    """An ``EventSink`` keeping every event, with the views the tests ask for."""

    events: list[Event] = field(default_factory=list)

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def started(self) -> list[str]:
        return [e.name for e in self.events if isinstance(e, VertexStarted)]

    def logs(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, VertexLog))

    def warnings(self) -> list[str]:
        """The texts of the warning events (``scheduler._progress.warning``)."""
        return [text for e in self.events if (text := warning_of(e)) is not None]
