"""Credentials for one S3 backend, as a build's client gave them (buildx forwards the
client's ``AWS_*`` for an S3 cache): ``S3Credentials``.

They serve that build's backends only; without them a backend uses boto3's standard
chain of the process (its environment, shared config, instance or IRSA roles).  No
value ever appears in a repr, a log line, a record or an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CREDENTIAL_VARIABLES", "S3Credentials"]

#: The client's variables forwarded for an S3 cache (region ones only when set).
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """An access key (with its session token, for temporary credentials) and the
    client's region, the default of a cache flag without ``region=``."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None

    @classmethod
    def from_variables(cls, variables: Mapping[str, Any]) -> S3Credentials | None:
        """The credentials of ``AWS_*`` variables; None unless both key parts are text."""
        key, secret = variables.get("AWS_ACCESS_KEY_ID"), variables.get("AWS_SECRET_ACCESS_KEY")
        if not isinstance(key, str) or not isinstance(secret, str) or not key or not secret:
            return None
        token = variables.get("AWS_SESSION_TOKEN")
        region = variables.get("AWS_REGION") or variables.get("AWS_DEFAULT_REGION")
        return cls(key, secret, token if isinstance(token, str) and token else None,
                   region if isinstance(region, str) else None)

    def client_arguments(self) -> dict[str, str]:
        """boto3's ``client()`` keyword arguments for these credentials."""
        arguments = {"aws_access_key_id": self.access_key_id,
                     "aws_secret_access_key": self.secret_access_key}
        if self.session_token:
            arguments["aws_session_token"] = self.session_token
        return arguments
