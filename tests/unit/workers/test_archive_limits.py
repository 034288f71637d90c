"""``DOCKYARD_ADD_MAX``: what one ADD's archives may expand to, read from the worker's
environment; and the sizes the archive errors print."""

from __future__ import annotations

import pytest

from dockyard.scheduler._errors import SolveError
from dockyard.workers._archive import DEFAULT_ADD_MAX, LARGE_WRITE, ArchiveLimits
from dockyard.workers._disk import human_size

# (DOCKYARD_ADD_MAX, the limit in bytes; None: no limit)
LIMITS = [
    (None, DEFAULT_ADD_MAX),
    ("", DEFAULT_ADD_MAX),
    ("  ", DEFAULT_ADD_MAX),
    ("off", None),
    ("OFF", None),
    ("512MB", 512 << 20),
    ("64g", 64 << 30),
    ("1.5GiB", 3 << 29),
    ("100", 100),
]


@pytest.mark.parametrize(("text", "limit"), LIMITS)
def test_the_limit_comes_from_the_environment(text: str | None, limit: int | None) -> None:
    environ = {} if text is None else {"DOCKYARD_ADD_MAX": text}
    assert ArchiveLimits.from_env(environ) == ArchiveLimits(limit, LARGE_WRITE)


def test_a_bad_limit_says_which_variable_to_fix() -> None:
    with pytest.raises(SolveError) as caught:
        ArchiveLimits.from_env({"DOCKYARD_ADD_MAX": "lots"})
    assert str(caught.value) == ("invalid DOCKYARD_ADD_MAX 'lots': expected a size such as "
                                 "32GB, or off\nhint: fix or unset DOCKYARD_ADD_MAX in the "
                                 "worker's environment")


@pytest.mark.parametrize(("size", "shown"), [
    (0, "0B"), (1023, "1023B"), (1024, "1KiB"), (5 << 20, "5MiB"), (3 << 29, "1.5GiB"),
    (1 << 40, "1TiB"), (3 << 50, "3072TiB")])
def test_sizes_are_shown_in_binary_units(size: int, shown: str) -> None:
    assert human_size(size) == shown
