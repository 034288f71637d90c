"""Fixtures for the BuildKit oracle tests (see _buildkit.py for the daemon they start)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from _buildkit import DOCKER, DOCKERD, OracleResult, PrivateDockerd, make_oracle_root

BuildFn = Callable[..., OracleResult]


def _absent_reason() -> str | None:
    missing = [str(path) for path in (DOCKERD, DOCKER) if not path.exists()]
    if not missing:
        return None
    return f"{' and '.join(missing)} not installed (`make setup` installs Debian's docker.io)"


@pytest.fixture(scope="session")
def buildkit() -> Iterator[PrivateDockerd]:
    """A private dockerd for the whole session; skipped only when dockerd is absent
    outside CI (under CI=true its absence fails the tests)."""
    reason = _absent_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"BuildKit oracle unavailable under CI: {reason}")
        pytest.skip(f"BuildKit oracle unavailable: {reason}")
    daemon = PrivateDockerd(make_oracle_root())
    started = time.monotonic()
    daemon.start()
    print(f"\noracle: dockerd ready in {time.monotonic() - started:.1f}s at {daemon.root}")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def buildkit_build(buildkit: PrivateDockerd) -> BuildFn:
    """``buildkit_build(dockerfile_text, context_files, build_args, target, platform)``."""
    return buildkit.build
