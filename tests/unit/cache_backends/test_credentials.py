"""``S3Credentials``: a client's forwarded ``AWS_*`` as one backend's credentials, never
in a repr."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.cache_backends._credentials import S3Credentials

CASES = [
    ("key and secret", {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"},
     S3Credentials("AK", "SK"), {"aws_access_key_id": "AK", "aws_secret_access_key": "SK"}),
    ("session token, AWS_REGION first",
     {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "T",
      "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-1"},
     S3Credentials("AK", "SK", "T", "eu-west-1"),
     {"aws_access_key_id": "AK", "aws_secret_access_key": "SK", "aws_session_token": "T"}),
    ("default region", {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
                        "AWS_DEFAULT_REGION": "us-east-2"},
     S3Credentials("AK", "SK", None, "us-east-2"),
     {"aws_access_key_id": "AK", "aws_secret_access_key": "SK"}),
    ("no secret: the server's chain", {"AWS_ACCESS_KEY_ID": "AK"}, None, None),
    ("region only: the server's chain", {"AWS_REGION": "eu-west-1"}, None, None),
    ("not text", {"AWS_ACCESS_KEY_ID": b"AK", "AWS_SECRET_ACCESS_KEY": "SK"}, None, None),
    ("nothing", {}, None, None),
]


@pytest.mark.parametrize(("variables", "made", "arguments"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_from_variables(variables: dict[str, Any], made: S3Credentials | None,
                        arguments: dict[str, str] | None) -> None:
    credentials = S3Credentials.from_variables(variables)
    assert credentials == made
    if credentials is not None:
        assert credentials.client_arguments() == arguments
        shown = repr(credentials)
        assert "AK" not in shown and "SK" not in shown and "'T'" not in shown
