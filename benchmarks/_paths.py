"""Where the repository is, and the test-support modules the suite borrows.

The suite reuses, rather than copies, the test helpers that start real services:
``tests/support`` (a loopback ``docker-registry`` and the multi-arch busybox image),
``tests/oracle/_buildkit.py`` (the private dockerd) and ``tests/conformance`` (its image
reader and tree diff, for the ``debian-*`` cases' root filesystems).  Importing this module
puts their folders on ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["REPO"]

REPO = Path(__file__).resolve().parents[1]

_TESTS = REPO / "tests"
for _folder in (REPO, _TESTS, _TESTS / "oracle", _TESTS / "conformance"):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))
