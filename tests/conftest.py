"""Settings shared by the whole test suite.

- Hypothesis: under CI (``CI=true``) property tests are derandomized and have no deadline, so
  a slow or busy CI machine gives the same verdict as a developer's; locally they keep
  Hypothesis' defaults (random, 200 ms deadline) to keep finding new cases.
- ``-m "not oracle"`` deselects the tests that start a private dockerd (tests/oracle).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")
# A long hunt for the fuzz tests:
#   pytest tests/unit/dockerfile/test_fuzz.py --hypothesis-profile=long
settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True)
