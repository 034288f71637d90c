"""The S3 client's retry boundary (cache_backends/_s3_client.py ``S3Objects.call``), with
calls that raise what botocore raises (no network): an endpoint never reached gives up
after two quick attempts at no answer and is then down; an answer (even a 503) gives it
the full budget; what is not transient is not retried; the messages are pinned."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from dockyard.cache_backends import _s3_client
from dockyard.cache_backends._s3_client import S3Objects, S3Settings, transient, unreached
from dockyard.scheduler._errors import CacheError

URL = "http://127.0.0.1:9"
WHERE = "s3://b/k"


def refused() -> Exception:
    err: Exception = EndpointConnectionError(endpoint_url=URL)
    return err


def silent() -> Exception:
    err: Exception = ReadTimeoutError(endpoint_url=URL)
    return err


def dropped() -> Exception:
    err: Exception = ConnectionClosedError(endpoint_url=URL)
    return err


def answer(code: str, status: int) -> Exception:
    err: Exception = ClientError({"Error": {"Code": code, "Message": "m"},
                                  "ResponseMetadata": {"HTTPStatusCode": status}},
                                 "HeadObject")
    return err


def slowdown() -> Exception:
    return answer("SlowDown", 503)


def denied() -> Exception:
    return answer("AccessDenied", 403)


class Script:
    """A call that raises the scripted errors in turn, then returns "ok"."""

    def __init__(self, errors: list[Callable[[], Exception]]) -> None:
        self.errors = list(errors)
        self.attempts = 0

    def __call__(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)()
        return "ok"


@pytest.fixture
def objects(monkeypatch: pytest.MonkeyPatch) -> S3Objects:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unit")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit")
    monkeypatch.setattr(_s3_client, "_session", None)
    monkeypatch.setattr(_s3_client, "BACKOFF", 0.01)
    return S3Objects(S3Settings("b", region="us-east-1", endpoint_url=URL, retry_for=0.5))


UNREACHABLE_HINT = ("check endpoint_url= (or region=), the network and that the store is "
                    "up; the build treats the cache as missing")
# (name, reached before, the errors, attempts made, the result or the error's message)
CASES: list[tuple[str, bool, list[Callable[[], Exception]], int, str]] = [
    ("refused twice: unreachable", False, [refused] * 3, 2,
     f'S3 cache: cannot look up {WHERE}: cannot reach {URL}: Could not connect to the '
     f'endpoint URL: "{URL}"'),
    ("silent twice: unreachable", False, [silent] * 3, 2,
     f'S3 cache: cannot look up {WHERE}: cannot reach {URL}: Read timeout on endpoint '
     f'URL: "{URL}"'),
    ("refused once", False, [refused], 2, "ok"),
    ("an answer, then refusals: the full budget", False, [slowdown, refused, refused,
                                                          refused], 5, "ok"),
    ("dropped connections are not unreachable", False, [dropped] * 3, 4, "ok"),
    ("reached: stalls retried", True, [silent] * 3, 4, "ok"),
    ("reached: refusals retried", True, [refused] * 3, 4, "ok"),
    ("denied: not retried", False, [denied], 1,
     f"S3 cache: cannot look up {WHERE} at {URL}: An error occurred (AccessDenied) when "
     "calling the HeadObject operation: m"),
]


@pytest.mark.parametrize(("reached", "errors", "attempts", "outcome"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_retries(objects: S3Objects, reached: bool, errors: list[Callable[[], Exception]],
                 attempts: int, outcome: str) -> None:
    if reached:
        assert objects.call("look up", "k", Script([])) == "ok"
    script = Script(errors)
    try:
        got = objects.call("look up", "k", script)
    except CacheError as err:
        got = err.message
    assert (script.attempts, got) == (attempts, outcome)


def test_an_unreachable_endpoint_is_down_then_calls_fail_at_once(objects: S3Objects) -> None:
    with pytest.raises(CacheError) as first:
        objects.call("look up", "k", Script([refused] * 2))
    assert first.value.hint == UNREACHABLE_HINT
    untouched = Script([])
    with pytest.raises(CacheError) as then:
        objects.call("read", "other", untouched)
    assert untouched.attempts == 0
    assert then.value.message == (f'S3 cache: cannot read s3://b/other: cannot reach {URL}: '
                                  f'Could not connect to the endpoint URL: "{URL}"')
    assert not objects.reached


def test_the_budget_bounds_a_reached_endpoint(objects: S3Objects) -> None:
    script = Script([slowdown] * 1000)
    with pytest.raises(CacheError) as caught:
        objects.call("write", "k", script)
    assert 3 <= script.attempts < 1000
    assert caught.value.message.startswith(
        f"S3 cache: cannot write {WHERE} at {URL}: still failing after 0.5s of retries: ")
    assert caught.value.hint == (f"check that {URL} is healthy; the build treats the cache "
                                 "as missing")


# (error, transient, no answer at all)
KINDS: list[tuple[Callable[[], Exception], bool, bool]] = [
    (refused, True, True), (silent, True, True), (dropped, True, False),
    (slowdown, True, False), (lambda: answer("InternalError", 500), True, False),
    (lambda: answer("TooManyRequests", 429), True, False), (denied, False, False),
]


@pytest.mark.parametrize(("make", "is_transient", "is_unreached"), KINDS)
def test_kinds(make: Callable[[], Exception], is_transient: bool, is_unreached: bool
               ) -> None:
    err: Any = make()
    assert (transient(err), unreached(err)) == (is_transient, is_unreached)
