"""Progress in tests: reading ``--progress=plain`` output, recording events."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dockyard.scheduler._progress import Event, VertexLog, VertexStarted, warning_of


def plain_blocks(progress: str) -> dict[str, list[str]]:
    """``#N`` -> its lines (without the ``#N ``), from --progress=plain output."""
    found: dict[str, list[str]] = {}
    for line in progress.splitlines():
        if line.startswith("#"):
            number, _, rest = line.partition(" ")
            found.setdefault(number, []).append(rest)
    return found


# The steps BuildKit shows around a solve (cluster/_build_steps.py): loading the definition,
# the ignore file and base images' metadata, and the exporters.  They end DONE on every
# build, a fully cached one included: no vertex of the build's graph.
_AROUND_SOLVE = re.compile(r"\[(?:\S+ )?internal\] load (?:build definition from |"
                           r"\.dockerignore$|metadata for )|exporting to ")


def around_solve(name: str) -> bool:
    """Whether ``name`` is one of the steps BuildKit shows around a solve."""
    return _AROUND_SOLVE.match(name) is not None


def solve_blocks(progress: str) -> dict[str, list[str]]:
    """``plain_blocks`` of the build graph's vertices only (not ``around_solve``)."""
    return {number: lines for number, lines in plain_blocks(progress).items()
            if not around_solve(lines[0])}


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
        """The texts of the warning events (``dockyard.scheduler._progress.warning``)."""
        return [text for e in self.events if (text := warning_of(e)) is not None]
