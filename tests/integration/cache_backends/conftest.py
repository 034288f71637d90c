"""A real S3 HTTP endpoint for the S3 cache backend's tests: moto's server mode
(tests/support/moto.py) on a free 127.0.0.1 port, once per session, stopped by PID.

The session's environment gets dummy credentials (and no shared config, no instance
metadata lookups), so boto3's standard chain finds them and never leaves loopback.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.moto import ENVIRONMENT, UNSET, S3Endpoint, start_moto, stop_moto

from dockyard.scheduler._errors import DockyardError

__all__ = ["S3Endpoint", "s3_endpoint"]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """One moto server for the session, with dummy credentials in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENVIRONMENT.items():
            patch.setenv(name, value)
        for name in UNSET:
            patch.delenv(name, raising=False)
        try:
            endpoint = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
        except DockyardError as err:  # a SetupError: moto is missing or did not start
            pytest.fail(str(err))
        try:
            yield endpoint
        finally:
            stop_moto(endpoint)
