"""The one thin wrapper around boto3 that the S3 cache backend talks through.

``S3Objects`` holds one boto3 client (one connection pool, reused by every thread) for one
bucket and offers the few blocking calls the backend needs: HEAD, GET (whole or streamed),
PUT, multipart upload and ranged parallel download (boto3's transfer manager), copy in
place (marks an object used), conditional delete, batched delete, listing.

Every call runs under one retry policy (tenacity): throttling (SlowDown, 503, 429), other
5xx, timeouts and dropped connections are retried with exponential backoff and full
jitter until ``retry_for`` seconds have passed; anything else, or what is still failing
then, becomes a ``CacheError`` that names the operation, the bucket and key and the
endpoint, and says what to do.  boto3's own retries are off, so the budget is this
module's alone.

An endpoint is *reached* once it has answered anything over HTTP (even an error).  Until
then it is talked to with short timeouts (``FIRST_CONTACT_TIMEOUT``, connect and read),
and a call that cannot reach it (connection refused, no such host, no route, a connect
timeout, or no answer in time) gives up after ``FIRST_CONTACT_ATTEMPTS`` quick attempts:
an unreachable cache costs a build a few seconds, not the whole retry budget.  It is then
*down* for ``DOWN_FOR`` seconds: every call fails at once with the same error, without
touching the network.  Once reached, the endpoint gets the full budget for everything
transient, and a stall is bounded by ``read_timeout`` (``READ_TIMEOUT`` unless set) and
retried within the budget.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO, Any, Final, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
)
from s3transfer.exceptions import RetriesExceededError  # type: ignore[import-untyped]
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential
from urllib3.exceptions import ProtocolError as _WireBroken
from urllib3.exceptions import ReadTimeoutError as _WireTimeout

from dockyard.scheduler._errors import CacheError

from ._credentials import S3Credentials

__all__ = ["Head", "Listed", "S3Objects", "S3Settings"]

T = TypeVar("T")

#: Seconds of the first backoff (doubled each retry, up to 5 s, with full jitter).
BACKOFF: float = 0.1
#: Seconds a stalled reply or body is waited for on a reached endpoint (a default: the
#: ``read_timeout`` of ``S3Settings``), before the request is retried.  Well under the
#: retry budget, so a stall leaves room for retries (S3 answers in well under a second,
#: and keeps a slow CompleteMultipartUpload alive with whitespace).
READ_TIMEOUT: float = 20.0
#: Seconds (connect, and read) to wait for an endpoint that has not answered yet.
FIRST_CONTACT_TIMEOUT: Final = 2.0
#: Attempts at a call that cannot reach an endpoint that has not answered yet.
FIRST_CONTACT_ATTEMPTS: Final = 2
#: Seconds an endpoint found unreachable is not asked again (its calls fail at once).
DOWN_FOR: Final = 30.0
#: The user metadata key holding an object's last use (the backend's clock, in seconds).
USED: Final = "dockyard-used"
_THROTTLED: Final = frozenset({"SlowDown", "Throttling", "ThrottlingException",
                               "RequestLimitExceeded", "TooManyRequests",
                               "TooManyRequestsException", "RequestThrottled"})
_TRANSIENT: Final = frozenset({"RequestTimeout", "RequestTimeoutException", "InternalError",
                               "ServiceUnavailable", "BadGateway", "GatewayTimeout"})
_MISSING: Final = frozenset({"NoSuchKey", "404", "NotFound"})
_HINTS: Final = {
    "AccessDenied": "check the credentials boto3 finds (AWS_ACCESS_KEY_ID/AWS_PROFILE/an "
                    "instance or IRSA role) and the bucket's policy",
    "InvalidAccessKeyId": "check the credentials boto3 finds (AWS_ACCESS_KEY_ID/"
                          "AWS_PROFILE/an instance or IRSA role)",
    "SignatureDoesNotMatch": "check the secret key and the region of the bucket",
    "NoSuchBucket": "create the bucket, or fix bucket= in the cache option",
    "PermanentRedirect": "the bucket is in another region: set region=",
    "AuthorizationHeaderMalformed": "the bucket is in another region: set region=",
}


@dataclasses.dataclass(frozen=True, slots=True)
class S3Settings:
    """Where the cache is and how to talk to it (see ``S3Backend``)."""

    bucket: str
    region: str | None = None
    endpoint_url: str | None = None
    use_path_style: bool = False
    retry_for: float = 60.0
    connect_timeout: float = 5.0
    read_timeout: float | None = None
    concurrency: int = 16
    multipart_threshold: int = 16 << 20
    part_size: int = 8 << 20
    # a build client's credentials (cache_backends/_credentials.py), else boto3's chain
    credentials: S3Credentials | None = dataclasses.field(default=None, repr=False,
                                                           compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Head:
    """What a HEAD (or GET) says about an object."""

    size: int
    etag: str
    used: float
    modified: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Listed:
    """One object of a listing."""

    key: str
    size: int
    modified: datetime


def _code(err: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status of ``err`` (or of the ClientError it wraps)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ClientError):
            error = seen.response.get("Error", {})
            status = seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return str(error.get("Code", "")), int(status or 0)
        seen = seen.__cause__ or seen.__context__
    return "", 0


def transient(err: BaseException) -> bool:
    """Worth retrying: throttling, 5xx, timeouts, dropped connections."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (ConnectionError, HTTPClientError, IncompleteReadError,
                             RetriesExceededError, _WireBroken, _WireTimeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    code, status = _code(err)
    return code in _THROTTLED or code in _TRANSIENT or status >= 500 or status == 429


def unreached(err: BaseException) -> bool:
    """No answer at all: refused, no such host, no route, a connect or read timeout."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (EndpointConnectionError, ConnectTimeoutError,
                             ReadTimeoutError, _WireTimeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def missing(err: BaseException) -> bool:
    """The object is not there (a 404 that is not NoSuchBucket)."""
    code, status = _code(err)
    return code in _MISSING or (status == 404 and not code)


def _used(metadata: dict[str, str] | None) -> float:
    try:
        return float((metadata or {}).get(USED, "0"))
    except ValueError:
        return 0.0


def _head(response: dict[str, Any]) -> Head:
    return Head(size=int(response.get("ContentLength", 0)), etag=str(response["ETag"]),
                used=_used(response.get("Metadata")), modified=response["LastModified"])


_SESSION_LOCK: Final = threading.Lock()
# the process's boto3 session (made on first use): its loaded service models and resolved
# credential chain make every further client cheap
_session: Any = None


def _new_client(endpoint_url: str | None, config: Config,
                credentials: S3Credentials | None = None) -> Any:
    """A new S3 client of the process's session (sessions are not thread-safe), with
    ``credentials`` when given, else the session's chain."""
    global _session
    arguments = credentials.client_arguments() if credentials is not None else {}
    with _SESSION_LOCK:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", endpoint_url=endpoint_url, config=config, **arguments)


class _KeepOpen:
    """``file`` lent to the transfer manager, which closes what it was given when an
    attempt fails; the next attempt still needs it."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        pass


class S3Objects:
    """Blocking access to one bucket, retried and translated (see the module docstring)."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        # key -> the multipart uploads this client began for it and may have left open
        self._begun: dict[str, set[str]] = {}
        # the client of a reached endpoint (made on first answer); until then the first
        # contact client, with short timeouts
        self._reached: Any = None
        self._first: Any = self._make_client(min(settings.connect_timeout,
                                                 FIRST_CONTACT_TIMEOUT),
                                             FIRST_CONTACT_TIMEOUT)
        # (monotonic time, failure) of the last time the endpoint could not be reached
        self._down: tuple[float, BaseException] | None = None
        self._transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.part_size, max_concurrency=settings.concurrency,
            use_threads=True)

    def _make_client(self, connect_timeout: float, read_timeout: float) -> Any:
        settings = self.settings
        config = Config(
            region_name=settings.region,
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=settings.concurrency,
            s3={"addressing_style": "path" if settings.use_path_style else "auto"})
        client = _new_client(settings.endpoint_url, config, settings.credentials)
        client.meta.events.register("after-call.s3.CreateMultipartUpload", self._began)
        return client

    def _began(self, parsed: dict[str, Any], **_: Any) -> None:
        """Note a multipart upload begun (boto3's event hook), to abort it if it fails."""
        upload_id, key = parsed.get("UploadId"), parsed.get("Key")
        if upload_id and key:
            with self._lock:
                self._begun.setdefault(str(key), set()).add(str(upload_id))

    @property
    def _client(self) -> Any:
        """The client to use now (thread-safe, one connection pool shared by every call)."""
        return self._reached or self._first

    @property
    def reached(self) -> bool:
        """The endpoint has answered (see the module docstring)."""
        return self._reached is not None

    def _reach(self) -> None:
        if self._reached is not None:
            return
        with self._lock:
            if self._reached is None:
                read_timeout = self.settings.read_timeout
                self._reached = self._make_client(
                    self.settings.connect_timeout,
                    READ_TIMEOUT if read_timeout is None else read_timeout)
            self._down = None

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    # --- the retry and translation boundary ----------------------------------------------

    def call(self, action: str, key: str, fn: Callable[[], T], *,
             also_retry: frozenset[str] = frozenset()) -> T:
        """``fn()`` retried on transient errors; its failure as a ``CacheError``."""
        self._refuse_while_down(action, key)
        retrying = Retrying(
            retry=retry_if_exception(lambda err: self._retry(err, also_retry)),
            wait=wait_random_exponential(multiplier=BACKOFF, max=5.0),
            stop=self._stop, reraise=True)
        try:
            result = retrying(fn)
        except (BotoCoreError, ClientError, RetriesExceededError, OSError) as err:
            raise self._failed(action, key, err) from err
        except Exception as err:  # boto3's S3UploadFailedError and friends
            if isinstance(err, CacheError):
                raise
            raise self._failed(action, key, err) from err
        self._reach()
        return result

    def _retry(self, err: BaseException, also_retry: frozenset[str]) -> bool:
        code, status = _code(err)
        if status:
            self._reach()  # an answer, even a 503, is a reachable endpoint
        return transient(err) or code in also_retry

    def _stop(self, state: RetryCallState) -> bool:
        """Out of budget: ``retry_for`` seconds, or for an endpoint never reached that
        did not answer, ``FIRST_CONTACT_ATTEMPTS`` attempts."""
        spent = (state.seconds_since_start or 0.0) + state.upcoming_sleep
        if spent >= self.settings.retry_for:
            return True
        outcome = state.outcome
        failure = outcome.exception() if outcome is not None else None
        return (not self.reached and failure is not None and unreached(failure)
                and state.attempt_number >= FIRST_CONTACT_ATTEMPTS)

    def _refuse_while_down(self, action: str, key: str) -> None:
        down = self._down
        if down is None or self.reached:
            return
        since, failure = down
        if time.monotonic() - since < DOWN_FOR:
            raise self.error(action, key, failure)

    def _failed(self, action: str, key: str, err: BaseException) -> CacheError:
        if not self.reached and unreached(err):
            self._down = (time.monotonic(), err)
        return self.error(action, key, err)

    def error(self, action: str, key: str, err: BaseException) -> CacheError:
        if not self.reached and unreached(err):
            return CacheError(f"S3 cache: cannot {action} s3://{self.bucket}/{key}: "
                              f"cannot reach {self._endpoint()}: {err}",
                              hint="check endpoint_url= (or region=), the network and "
                              "that the store is up; the build treats the cache as missing")
        where = f"s3://{self.bucket}/{key} at {self._endpoint()}"
        if transient(err):
            return CacheError(f"S3 cache: cannot {action} {where}: still failing after "
                              f"{self.settings.retry_for:g}s of retries: {err}",
                              hint=f"check that {self._endpoint()} is healthy; the build "
                              "treats the cache as missing")
        code, _ = _code(err)
        hint = _HINTS.get(code, "check the bucket, the endpoint and the credentials")
        if isinstance(err, NoCredentialsError):
            hint = ("give boto3 credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "AWS_PROFILE, or an instance or IRSA role")
        return CacheError(f"S3 cache: cannot {action} {where}: {err}", hint=hint)

    def _endpoint(self) -> str:
        return self.settings.endpoint_url or f"S3 ({self.settings.region or 'default region'})"

    # --- objects ---------------------------------------------------------------------------

    def head(self, key: str) -> Head | None:
        def go() -> Head | None:
            try:
                return _head(self._client.head_object(Bucket=self.bucket, Key=key))
            except ClientError as err:
                if missing(err):
                    return None
                raise
        return self.call("look up", key, go)

    def get(self, key: str) -> tuple[bytes, Head] | None:
        """A small object's bytes and what GET said about it; None when absent."""
        def go() -> tuple[bytes, Head] | None:
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as err:
                if missing(err):
                    return None
                raise
            with response["Body"] as body:
                data: bytes = body.read()
            return data, _head(response)
        return self.call("read", key, go)

    def open(self, key: str, start: int = 0) -> tuple[IO[bytes], Head] | None:
        """A streamed GET from byte ``start`` (the caller closes it); None when absent."""
        def go() -> tuple[IO[bytes], Head] | None:
            extra = {"Range": f"bytes={start}-"} if start else {}
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=key, **extra)
            except ClientError as err:
                if missing(err):
                    return None
                raise
            return response["Body"], _head(response)
        return self.call("read", key, go)

    def get_range(self, key: str, start: int, size: int) -> bytes:
        """``size`` bytes of ``key`` from byte ``start`` (one ranged GET, read whole inside
        the retried call: a body cut short is fetched again)."""
        def go() -> bytes:
            response = self._client.get_object(Bucket=self.bucket, Key=key,
                                               Range=f"bytes={start}-{start + size - 1}")
            with response["Body"] as body:
                data: bytes = body.read()
            if len(data) != size:
                raise IncompleteReadError(actual_bytes=len(data), expected_bytes=size)
            return data
        return self.call("read", key, go)

    def put(self, key: str, data: bytes, used: float) -> None:
        self.call("write", key, lambda: self._client.put_object(
            Bucket=self.bucket, Key=key, Body=data, Metadata={USED: repr(used)}))

    def upload(self, key: str, source: IO[bytes], used: float) -> None:
        """``source`` (seekable, from its start) under ``key``: multipart above the
        threshold; S3 shows the object only once it is whole.  A failed attempt aborts
        the multipart upload it began (the transfer manager tries once; a fault can
        defeat that), so no parts are left behind.  One upload of a key at a time per
        client (the caller's part): an abort must not hit a sibling's upload."""
        def go() -> None:
            source.seek(0)
            try:
                self._client.upload_fileobj(_KeepOpen(source), self.bucket, key,
                                            Config=self._transfer,
                                            ExtraArgs={"Metadata": {USED: repr(used)}})
            except BaseException:
                self._abort_begun(key)
                raise
            with self._lock:
                self._begun.pop(key, None)  # completed
        self.call("upload", key, go, also_retry=frozenset({"NoSuchUpload"}))

    def _abort_begun(self, key: str) -> None:
        with self._lock:
            begun = self._begun.pop(key, set())
        for upload_id in sorted(begun):
            try:
                self.call("abort the upload of", key,
                          functools.partial(self._abort, key, upload_id))
            except CacheError:
                with self._lock:  # still open: the next failure tries again
                    self._begun.setdefault(key, set()).add(upload_id)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                UploadId=upload_id)
        except ClientError as err:
            if _code(err)[0] != "NoSuchUpload" and not missing(err):
                raise

    def download(self, key: str, target: IO[bytes]) -> None:
        """``key`` into the seekable ``target``: ranged parallel GETs above the threshold
        (each pinned to one ETag; an object replaced meanwhile starts over)."""
        def go() -> None:
            target.seek(0)
            target.truncate()
            self._client.download_fileobj(self.bucket, key, target, Config=self._transfer)
        self.call("download", key, go, also_retry=frozenset({"PreconditionFailed"}))

    def touch(self, key: str, used: float) -> str | None:
        """Mark ``key`` used at ``used`` (a copy onto itself: new metadata and modification
        time, same bytes); its new ETag, or None when it is gone."""
        def go() -> str | None:
            try:
                response = self._client.copy_object(
                    Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                    Metadata={USED: repr(used)}, MetadataDirective="REPLACE")
            except ClientError as err:
                if missing(err):
                    return None
                raise
            return str(response.get("CopyObjectResult", {}).get("ETag", "")) or None
        return self.call("mark used", key, go)

    def delete_if_same(self, key: str, etag: str) -> None:
        """Delete ``key`` only while it is still the object ``etag`` names."""
        def go() -> None:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
            except ClientError as err:
                if not missing(err) and _code(err)[0] != "PreconditionFailed":
                    raise
        self.call("delete", key, go)

    def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            self.call("delete", batch[0], functools.partial(self._delete_batch, batch))

    def _delete_batch(self, keys: list[str]) -> None:
        response = self._client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys],
                                        "Quiet": True})
        errors = [error for error in response.get("Errors", [])
                  if error.get("Code") not in _MISSING]
        if errors:
            first = errors[0]
            raise CacheError(f"S3 cache: cannot delete s3://{self.bucket}/{first.get('Key')}"
                             f" ({len(errors)} objects failed): {first.get('Code')} "
                             f"{first.get('Message')}",
                             hint="check that the credentials may delete in the bucket")

    def listing(self, prefix: str) -> Iterator[Listed]:
        """Every object under ``prefix``, one ListObjectsV2 per page of 1000."""
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page: dict[str, Any] = self.call("list", prefix, functools.partial(
                self._client.list_objects_v2, Bucket=self.bucket, Prefix=prefix, **extra))
            for item in page.get("Contents", []):
                yield Listed(str(item["Key"]), int(item["Size"]), item["LastModified"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
