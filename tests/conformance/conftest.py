"""Fixtures of the conformance suite (see conf_corpus.py for the corpus, conf_tree.py for
the normalisations, conf_record.py to re-record BuildKit's results).

- ``busybox_reference``: the integration fixtures' loopback registry with the multi-arch
  busybox image (tests/integration/conftest.py, loaded by path: its fixtures are re-used,
  not copied).
- ``buildkit_side``: a private dockerd holding the same busybox image, for the session.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "oracle"))

from _buildkit import DOCKERD  # noqa: E402
from conf_buildkit import BuildKitSide, integration_fixtures  # noqa: E402

_fixtures = integration_fixtures()
start_registry = _fixtures.start_registry
registry = _fixtures.registry
busybox_image = _fixtures.busybox_image


@pytest.fixture(scope="session")
def busybox_reference(busybox_image: Any) -> str:
    reference: str = busybox_image.reference
    return reference


@pytest.fixture(scope="session")
def buildkit_side() -> Iterator[BuildKitSide]:
    """Skipped only when dockerd is absent outside CI; under CI=true that fails."""
    if not DOCKERD.exists():
        reason = f"{DOCKERD} not installed (`make setup` installs Debian's docker.io)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"BuildKit unavailable under CI: {reason}")
        pytest.skip(f"BuildKit unavailable: {reason}")
    side = BuildKitSide.start()
    try:
        yield side
    finally:
        side.stop()
