"""A client for the OCI distribution API: resolve, pull and push images.

``RegistryClient`` holds one aiohttp session (connections are reused) and speaks to any
number of registries::

    async with RegistryClient(RegistryConfig()) as client:
        image = await client.resolve(parse_reference("busybox"), parse_platform("linux/arm64"))
        await client.fetch_blob(ref, image.layers[0], Path("layer.tar.gz"))

- Manifests: OCI and Docker schema-2 manifests and indexes (manifest lists); an index is
  resolved to the requested platform as containerd matches them (``arm64`` takes
  ``arm64/v8``, ``amd64/v3`` falls back to v2 and v1, ``arm/v7`` to v6 and v5).  Schema-1
  manifests are refused.
- Blobs and manifests are verified against their sha256 digest; a blob is written next to
  its destination and renamed into place only once verified.
- Cache: manifests, indexes and configs named by digest never change, so the client keeps
  them (verified, in a ``ContentCache`` LRU bounded by ``content_cache_bytes``); a tag is
  always asked for again.  Resolving a tag a second time costs one request (a HEAD of the
  tag, as containerd asks, which Docker Hub does not count as a pull), a reference pinned
  by digest none.
- Push: a blob already present is skipped (HEAD), mounted from another repository of the
  same registry when its source is known, else uploaded in one PUT (small) or in PATCH
  chunks (large); then manifests and indexes.
- Auth: anonymous first; on a 401 the ``WWW-Authenticate`` challenge is answered with a
  Bearer token (cached per scope) or basic credentials from the docker config (``_auth``).
- Transport: plain HTTP for localhost, 127.0.0.0/8, ::1 and the configured insecure
  registries (as Docker does), HTTPS otherwise; connection errors, 429 and 5xx are retried
  with exponential backoff and jitter, a bounded number of times.

Every failure is a ``RegistryError`` naming the URL and what to do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar
from urllib.parse import quote, urlencode, urljoin

import aiohttp
import yarl
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from dockyard.cache_backends._records import LayerDescriptor
from dockyard.scheduler._errors import RegistryError
from dockyard.scheduler._platform import Platform
from dockyard.scheduler._reference import Reference

from ._auth import Challenge, Credentials, DockerConfig, TokenCache, load_docker_config
from ._auth import parse_challenges as _parse_challenges
from ._manifests import (
    ACCEPT_MANIFESTS,
    DEFAULT_CONTENT_CACHE_BYTES,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    ContentCache,
    Descriptor,
    FetchedManifest,
    ResolvedImage,
    build_index,
    check_algorithm,
    invalid_manifest,
    layers_of,
    parse_descriptor,
    parse_manifest,
    platform_candidates,
    registry_url,
    select_manifest,
    sha256_digest,
    uses_plain_http,
)

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "FetchedManifest",
    "PushOutcome",
    "RegistryBlobCorrupt",
    "RegistryClient",
    "RegistryNotFound",
    "RegistryConfig",
    "ResolvedImage",
    "build_index",
    "parse_manifest",
    "platform_candidates",
    "registry_url",
    "select_manifest",
    "uses_plain_http",
]

_STREAM_CHUNK = 1024 * 1024
_KNOWN_TAGS = 4096  # tags resolved before, whose next resolve starts with a HEAD

PushOutcome = Literal["exists", "mounted", "uploaded"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """How the client talks to registries.

    ``insecure_registries``: domains (``host:port`` or ``host``) spoken to over plain HTTP,
    like dockerd's ``insecure-registries``.  ``docker_config``: the credentials; None reads
    ``$DOCKER_CONFIG/config.json`` on first need.  ``attempts`` bounds the tries of one
    operation; the wait between tries grows from ``backoff_initial`` to ``backoff_max``
    seconds, with jitter.  Blobs larger than ``chunk_size`` are uploaded in chunks of it.
    ``content_cache_bytes`` bounds the manifests and configs kept by digest (0: none)."""

    insecure_registries: frozenset[str] = frozenset()
    docker_config: DockerConfig | None = None
    attempts: int = 5
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    chunk_size: int = 8 * 1024 * 1024
    connect_timeout: float = 15.0
    read_timeout: float = 300.0
    max_connections: int = 16
    content_cache_bytes: int = DEFAULT_CONTENT_CACHE_BYTES


# --- Errors -----------------------------------------------------------------------------

class RegistryNotFound(RegistryError):
    """A registry answered 404: no such manifest, tag or blob (a miss for a cache)."""


class RegistryBlobCorrupt(RegistryError):
    """A blob whose bytes do not match its descriptor (size or digest)."""


class _Transient(Exception):
    """A failure worth another try (connection error, 429, 5xx); never leaves this module."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason


def _registry_message(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f" ({first.get('code', '')}: {first.get('message', '')})"
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def _status_error(status: int, url: str, body: bytes, what: str, domain: str,
                  missing: str = "") -> RegistryError:
    """The error for a final HTTP status; ``missing`` is the message of a 404 when the
    caller has a better one than "not found"."""
    detail = _registry_message(body)
    if status == 401:
        return RegistryError(f"{what}: {url} answered 401 unauthorized{detail}",
                             hint=f"log in with 'docker login {domain}' (credentials are read "
                                  "from $DOCKER_CONFIG or ~/.docker/config.json)")
    if status == 403:
        return RegistryError(f"{what}: {url} answered 403 denied{detail}",
                             hint="check that your account may access this repository")
    if status == 404:
        return RegistryNotFound(f"{missing or what + ': not found'} ({url} answered 404)"
                                f"{detail}",
                                hint="check the image name and tag, and that it was pushed "
                                     "to this registry")
    return RegistryError(f"{what}: {url} answered {status}{detail}",
                         hint="check the registry's logs; retry later")


# --- The client -------------------------------------------------------------------------

@dataclass(slots=True)
class _Request:
    method: str
    url: str
    domain: str
    scopes: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None


def _pull_scope(ref: Reference) -> tuple[str, ...]:
    return (f"repository:{ref.path}:pull",)


def _push_scope(ref: Reference, mount_from: Reference | None = None) -> tuple[str, ...]:
    scopes = [f"repository:{ref.path}:pull,push"]
    if mount_from is not None and mount_from.path != ref.path:
        scopes.append(f"repository:{mount_from.path}:pull")
    return tuple(scopes)


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={quote(digest, safe='')}"


class RegistryClient:
    """An async client of OCI registries; use it as an async context manager (or call
    ``aclose``).  ``statistics()`` counts requests, retries, uploads and mounts, and the
    manifests and configs served from the cache (``manifest_hits``, ``config_hits``)."""

    def __init__(self, config: RegistryConfig | None = None) -> None:
        self._config = config or RegistryConfig()
        self._session: aiohttp.ClientSession | None = None  # opened on first request
        self._docker_config = self._config.docker_config  # None until first needed
        self._tokens = TokenCache()
        self._challenges: dict[str, Challenge] = {}  # domain -> the auth scheme it asked for
        self._credentials: dict[str, Credentials | None] = {}  # domain -> looked-up creds
        self._content = ContentCache(self._config.content_cache_bytes)
        # (domain, repository, tag) resolved before: its next resolve HEADs the tag first
        self._known_tags: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._stats = {"requests": 0, "retries": 0, "uploads": 0, "mounts": 0, "skipped": 0,
                       "chunks": 0}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def statistics(self) -> dict[str, int]:
        return {**self._stats, "token_hits": self._tokens.statistics()["hits"],
                **self._content.statistics()}

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.statistics().items())
        return f"<RegistryClient {counts}>"

    # -- plumbing ----------------------------------------------------------------------

    def _url(self, ref: Reference, kind: str, tail: str) -> str:
        base = registry_url(ref.domain, self._config.insecure_registries)
        return f"{base}/v2/{ref.path}/{kind}/{tail}"

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(sock_connect=self._config.connect_timeout,
                                            sock_read=self._config.read_timeout)
            connector = aiohttp.TCPConnector(limit=self._config.max_connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def _retrying(self, what: str, url: str, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` until it succeeds, fails for good, or runs out of attempts."""
        def count(_: RetryCallState) -> None:
            self._stats["retries"] += 1
        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(self._config.attempts, 1)),
            wait=wait_exponential(multiplier=self._config.backoff_initial,
                                  max=self._config.backoff_max)
            + wait_random(0, self._config.backoff_initial),
            retry=retry_if_exception_type(_Transient), before_sleep=count, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await action()
        except _Transient as err:
            raise RegistryError(
                f"{what}: {err.url} failed after {self._config.attempts} attempts: {err.reason}",
                hint="check that the registry is running and reachable at that address "
                     "(a plain-HTTP registry must be localhost or listed as insecure)") from err
        raise AssertionError("unreachable")  # pragma: no cover

    async def _creds(self, domain: str) -> Credentials | None:
        if domain not in self._credentials:
            if self._docker_config is None:
                self._docker_config = load_docker_config()
            self._credentials[domain] = await self._docker_config.credentials(domain)
        return self._credentials[domain]

    async def _authorization(self, req: _Request, fresh: bool) -> str | None:
        challenge = self._challenges.get(req.domain)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = await self._creds(req.domain)
            return _basic(creds) if creds is not None else None
        return "Bearer " + await self._token(req, challenge, fresh)

    async def _token(self, req: _Request, challenge: Challenge, fresh: bool) -> str:
        realm = challenge.params.get("realm", "")
        service = challenge.params.get("service", "")
        scopes = tuple(sorted(set(req.scopes)))
        cached = None if fresh else self._tokens.get(realm, service, scopes)
        if cached is not None:
            return cached
        answer = await self._fetch_token(req, realm, service, scopes)
        return self._tokens.put(realm, service, scopes, answer)

    async def _fetch_token(self, req: _Request, realm: str, service: str,
                           scopes: tuple[str, ...]) -> Any:
        if not realm.startswith(("http://", "https://")):
            raise RegistryError(f"{req.url}: the registry's auth challenge has no usable realm "
                                f"({realm!r})", hint="check the registry's auth settings")
        query = [("service", service)] if service else []
        query += [("scope", scope) for scope in scopes]
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}"
        creds = await self._creds(req.domain)
        headers = {"Authorization": _basic(creds)} if creds is not None else {}
        async with self._raw(_Request("GET", url, req.domain, (), headers)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise _status_error(resp.status, url, body, "getting a registry token",
                                    req.domain)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"token service {url} answered with invalid JSON",
                                hint="check the registry's auth service") from err

    @asynccontextmanager
    async def _raw(self, req: _Request) -> AsyncIterator[aiohttp.ClientResponse]:
        """One HTTP exchange, no auth handling; transport failures, 429 and 5xx become
        ``_Transient``."""
        self._stats["requests"] += 1
        session = self._open_session()
        try:
            async with session.request(req.method, yarl.URL(req.url, encoded=True),
                                       headers=req.headers, data=req.data) as resp:
                if resp.status == 429 or resp.status >= 500:
                    raise _Transient(req.url, f"HTTP {resp.status}")
                yield resp
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                TimeoutError) as err:
            raise _Transient(req.url, f"{type(err).__name__}: {err}") from err

    @asynccontextmanager
    async def _send(self, req: _Request) -> AsyncIterator[aiohttp.ClientResponse]:
        """One exchange with auth: anonymous or with what the registry asked before; on a
        401 the challenge is answered once and the request sent again."""
        for fresh in (False, True):
            auth = await self._authorization(req, fresh)
            headers = {**req.headers, **({"Authorization": auth} if auth else {})}
            async with self._raw(_Request(req.method, req.url, req.domain, req.scopes, headers,
                                          req.data)) as resp:
                if resp.status != 401 or fresh or not await self._learn(req.domain, resp):
                    yield resp
                    return

    async def _learn(self, domain: str, resp: aiohttp.ClientResponse) -> bool:
        """Record the scheme a 401 asks for; False when we cannot answer it (no known
        scheme, or basic auth without credentials)."""
        challenges = {c.scheme: c for c in
                      _parse_challenges(resp.headers.get("WWW-Authenticate", ""))}
        chosen = challenges.get("bearer") or challenges.get("basic")
        if chosen is None or (chosen.scheme == "basic" and await self._creds(domain) is None):
            return False
        self._challenges[domain] = chosen
        return True

    async def _exchange(self, req: _Request, what: str, ok: Iterable[int],
                        missing: str = "") -> tuple[int, Mapping[str, str], bytes]:
        """A request whose answer is read (up to ``MAX_MANIFEST_BYTES`` + 1 bytes); a status
        outside ``ok`` is an error."""
        async with self._send(req) as resp:
            body = await _read_limited(resp, MAX_MANIFEST_BYTES + 1)
            if resp.status not in set(ok):
                raise _status_error(resp.status, req.url, body, what, req.domain, missing)
            return resp.status, dict(resp.headers), body

    # -- pull --------------------------------------------------------------------------

    async def fetch_manifest(self, ref: Reference, target: str = "", *,
                             fresh: bool = False) -> FetchedManifest:
        """The manifest or index ``target`` (a digest or tag; default: the reference's digest,
        else its tag), verified against the digest when one is named.  A digest already
        fetched from this repository is answered from the cache (unless ``fresh``); a tag
        never is."""
        name = target or ref.digest or ref.tag
        cached = (self._content.manifest(ref.domain, ref.path, name)
                  if ":" in name and not fresh else None)
        if cached is not None:
            return cached
        url = self._url(ref, "manifests", name)
        req = _Request("GET", url, ref.domain, _pull_scope(ref), {"Accept": ACCEPT_MANIFESTS})
        _, headers, body = await self._retrying(
            f"pulling {ref}", url,
            lambda: self._exchange(req, f"pulling {ref}", (200,), f"image not found: {ref}"))
        fetched = self._checked_manifest(url, name, headers, body)
        self._content.put_manifest(ref.domain, ref.path, fetched)
        return fetched

    def _checked_manifest(self, url: str, name: str, headers: Mapping[str, str],
                          body: bytes) -> FetchedManifest:
        if len(body) > MAX_MANIFEST_BYTES:
            raise invalid_manifest(url, f"larger than {MAX_MANIFEST_BYTES} bytes")
        digest = sha256_digest(body)
        if ":" in name and name != digest:
            raise RegistryError(f"manifest at {url} does not match its digest: got {digest}",
                                hint="the registry or a proxy altered the manifest; "
                                     "try again or use another mirror")
        media_type, parsed = parse_manifest(body, headers.get("Content-Type", ""), url)
        return FetchedManifest(digest, media_type, body, parsed)

    async def resolve(self, ref: Reference, platform: Platform, *,
                      fresh: bool = False) -> ResolvedImage:
        """The image ``ref`` names for ``platform``: manifest, verified config and layers.
        ``fresh`` (``--pull``, BuildKit's image-resolve-mode=pull) asks the registry for
        all of it again: the tag with a GET, the manifests and the config not from the
        cache (layers already held are still content, reused by digest)."""
        top = await (self.fetch_manifest(ref, fresh=True) if fresh else self._top_manifest(ref))
        manifest, index_digest = top, ""
        if top.is_index:
            chosen = select_manifest(top.parsed, platform, self._url(ref, "manifests",
                                                                     ref.digest or ref.tag))
            manifest = await self.fetch_manifest(ref, chosen.digest, fresh=fresh)
            index_digest = top.digest
            if manifest.is_index:
                raise invalid_manifest(self._url(ref, "manifests", chosen.digest),
                               "an index whose platform entry is another index")
        where = self._url(ref, "manifests", manifest.digest)
        config_desc = parse_descriptor(manifest.parsed["config"], where)
        config = await self.fetch_blob_bytes(ref, config_desc.digest, config_desc.size,
                                             fresh=fresh)
        return ResolvedImage(manifest.digest, manifest.parsed, config,
                             layers_of(manifest.parsed, config, where), manifest.media_type,
                             manifest.data, index_digest)

    async def _top_manifest(self, ref: Reference) -> FetchedManifest:
        """What ``ref`` names.  A tag resolved before is asked for with a HEAD (its digest is
        likely cached: one request, no manifest sent), then fetched by that digest when it
        is not cached; a tag seen for the first time with a GET."""
        key = (ref.domain, ref.path, ref.tag)
        digest = await self._tag_digest(ref) if not ref.digest and key in self._known_tags \
            else ""
        top = await self.fetch_manifest(ref, digest)
        if not ref.digest and self._config.content_cache_bytes > 0:
            self._known_tags[key] = None
            self._known_tags.move_to_end(key)
            if len(self._known_tags) > _KNOWN_TAGS:
                self._known_tags.popitem(last=False)
        return top

    async def _tag_digest(self, ref: Reference) -> str:
        """The digest a HEAD of ``ref``'s tag answers; "" when the registry does not say
        (the caller then GETs the tag)."""
        url = self._url(ref, "manifests", ref.tag)
        req = _Request("HEAD", url, ref.domain, _pull_scope(ref), {"Accept": ACCEPT_MANIFESTS})
        _, headers, _ = await self._retrying(
            f"pulling {ref}", url,
            lambda: self._exchange(req, f"pulling {ref}", (200,), f"image not found: {ref}"))
        digest = headers.get("Docker-Content-Digest", "")
        hexdigits = digest[len("sha256:"):]
        well_formed = digest.startswith("sha256:") and len(hexdigits) == 64 \
            and all(c in "0123456789abcdef" for c in hexdigits)
        return digest if well_formed else ""

    async def fetch_blob(self, ref: Reference, descriptor: LayerDescriptor | Descriptor,
                         out: Path) -> None:
        """Stream a blob to ``out``: written to ``out.partial`` while its sha256 and size are
        checked, renamed to ``out`` once they match (``RegistryError`` otherwise, and
        nothing is left at either path)."""
        partial = out.with_name(out.name + ".partial")
        url = self._url(ref, "blobs", descriptor.digest)

        async def attempt() -> None:
            with _open_partial(partial, url) as sink:
                await self._download(ref, descriptor.digest, descriptor.size, sink)
        try:
            await self._retrying(f"fetching blob {descriptor.digest}", url, attempt)
            os.replace(partial, out)
        except OSError as err:
            raise RegistryError(f"cannot write blob {descriptor.digest} to {out}: "
                                f"{err.strerror}", hint="check the destination") from err
        finally:
            partial.unlink(missing_ok=True)

    async def fetch_blob_bytes(self, ref: Reference, digest: str, size: int, *,
                               fresh: bool = False) -> bytes:
        """A small blob (a config) in memory, verified like ``fetch_blob``; kept in the
        cache, so the same digest from the same repository is fetched once (unless
        ``fresh``)."""
        cached = None if fresh else self._content.config(ref.domain, ref.path, digest, size)
        if cached is not None:
            return cached
        url = self._url(ref, "blobs", digest)
        chunks: list[bytes] = []

        async def attempt() -> bytes:
            chunks.clear()
            await self._download(ref, digest, size, chunks.append)
            return b"".join(chunks)
        data = await self._retrying(f"fetching blob {digest}", url, attempt)
        self._content.put_config(ref.domain, ref.path, digest, data)
        return data

    async def _download(self, ref: Reference, digest: str, size: int,
                        sink: Callable[[bytes], object]) -> None:
        url = self._url(ref, "blobs", digest)
        check_algorithm(digest, url)
        hasher, received = hashlib.sha256(), 0
        async with self._send(_Request("GET", url, ref.domain, _pull_scope(ref))) as resp:
            if resp.status != 200:
                body = await _read_limited(resp, 64 * 1024)
                raise _status_error(resp.status, url, body, f"fetching blob {digest}",
                                    ref.domain, f"blob {digest} not found in {ref.name}")
            async for chunk in resp.content.iter_chunked(_STREAM_CHUNK):
                received += len(chunk)
                if received > size:
                    break
                hasher.update(chunk)
                sink(chunk)
        _verify(url, digest, size, received, "sha256:" + hasher.hexdigest())

    # -- push --------------------------------------------------------------------------

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        url = self._url(ref, "blobs", digest)
        req = _Request("HEAD", url, ref.domain, _push_scope(ref))

        async def attempt() -> bool:
            status, _, _ = await self._exchange(req, f"checking blob {digest}", (200, 404))
            return status == 200
        return await self._retrying(f"checking blob {digest}", url, attempt)

    async def push_blob(self, ref: Reference, digest: str, size: int, source: Path | bytes,
                        *, mount_from: Reference | None = None) -> PushOutcome:
        """Make blob ``digest`` present in ``ref``'s repository: ``"exists"`` when it was,
        ``"mounted"`` when the registry linked it from ``mount_from`` (same registry, other
        repository), ``"uploaded"`` after sending its bytes."""
        check_algorithm(digest, self._url(ref, "blobs", digest))
        if await self.blob_exists(ref, digest):
            self._stats["skipped"] += 1
            return "exists"
        url = self._url(ref, "blobs", "uploads/")
        outcome = await self._retrying(f"uploading blob {digest} to {ref.name}", url,
                                       lambda: self._upload(ref, digest, size, source,
                                                            mount_from))
        self._stats["mounts" if outcome == "mounted" else "uploads"] += 1
        return outcome

    async def _upload(self, ref: Reference, digest: str, size: int, source: Path | bytes,
                      mount_from: Reference | None) -> PushOutcome:
        url = self._url(ref, "blobs", "uploads/")
        mountable = mount_from is not None and mount_from.domain == ref.domain \
            and mount_from.path != ref.path
        if mountable:
            assert mount_from is not None
            url += "?" + urlencode({"mount": digest, "from": mount_from.path})
        req = _Request("POST", url, ref.domain, _push_scope(ref, mount_from),
                       {"Content-Length": "0"}, b"")
        status, headers, _ = await self._exchange(req, f"starting the upload of {digest}",
                                                  (201, 202))
        if status == 201 and mountable:
            return "mounted"
        location = self._location(url, headers)
        if size <= self._config.chunk_size:
            await self._put_whole(ref, location, digest, _read_all(source, size, digest))
        else:
            await self._put_chunks(ref, location, digest, size, source)
        return "uploaded"

    @staticmethod
    def _location(url: str, headers: Mapping[str, str]) -> str:
        location = headers.get("Location")
        if not location:
            raise RegistryError(f"{url} started an upload without a Location header",
                                hint="the registry is not OCI-compliant")
        return urljoin(url, location)

    async def _put_whole(self, ref: Reference, location: str, digest: str,
                         data: bytes) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        req = _Request("PUT", _with_digest(location, digest), ref.domain, _push_scope(ref),
                       headers, data)
        await self._exchange(req, f"uploading blob {digest}", (201,))

    async def _put_chunks(self, ref: Reference, location: str, digest: str, size: int,
                          source: Path | bytes) -> None:
        offset = 0
        for chunk in _chunks(source, self._config.chunk_size, digest):
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
            req = _Request("PATCH", location, ref.domain, _push_scope(ref), headers, chunk)
            _, answer, _ = await self._exchange(req, f"uploading blob {digest}", (202,))
            self._stats["chunks"] += 1
            location, offset = self._location(location, answer), offset + len(chunk)
        if offset != size:
            raise RegistryError(f"blob {digest}: the source holds {offset} bytes, not {size}",
                                hint="the source changed while it was pushed; push again")
        await self._put_whole(ref, location, digest, b"")

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str,
                            target: str = "") -> str:
        """PUT a manifest or index under ``target`` (a tag; default: the reference's tag, or
        its digest) and return its digest."""
        digest = sha256_digest(data)
        name = target or ref.tag or digest
        url = self._url(ref, "manifests", name)
        req = _Request("PUT", url, ref.domain, _push_scope(ref), {"Content-Type": media_type},
                       data)
        _, headers, _ = await self._retrying(
            f"pushing manifest {digest} to {ref.name}", url,
            lambda: self._exchange(req, f"pushing manifest {digest}", (200, 201)))
        answered = headers.get("Docker-Content-Digest", digest)
        if answered != digest:
            raise RegistryError(f"{url} stored the manifest as {answered}, not {digest}",
                                hint="the registry rewrote the manifest; check its settings")
        return digest

    async def push_index(self, ref: Reference, manifests: Sequence[Descriptor],
                         target: str = "") -> str:
        """Push an OCI index over already pushed ``manifests`` and return its digest."""
        return await self.push_manifest(ref, build_index(manifests), OCI_INDEX, target)


# --- Streams ----------------------------------------------------------------------------

async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of ``resp``, at most ``limit`` bytes of it."""
    chunks, total = [], 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        total += len(chunk)
        if total >= limit:
            break
    return b"".join(chunks)[:limit]


def _verify(url: str, digest: str, size: int, received: int, actual: str) -> None:
    if received != size:
        raise RegistryBlobCorrupt(
            f"blob at {url} is {'larger' if received > size else 'shorter'} than its "
            f"descriptor's {size} bytes",
            hint="the registry holds a corrupt blob; push the image again")
    if actual != digest:
        raise RegistryBlobCorrupt(f"blob at {url} does not match its digest: got {actual}",
                                  hint="the registry holds a corrupt blob; push the image "
                                       "again")


class _open_partial:  # noqa: N801 -- used like open()
    """A file opened for writing a blob's bytes; truncated again on each attempt."""

    def __init__(self, path: Path, url: str) -> None:
        self._path, self._url = path, url
        self._file: IO[bytes] | None = None

    def __enter__(self) -> Callable[[bytes], object]:
        try:
            self._file = open(self._path, "wb")  # noqa: SIM115 -- closed in __exit__
        except OSError as err:
            raise RegistryError(f"cannot write {self._path} (blob of {self._url}): "
                                f"{err.strerror}", hint="check the destination") from err
        return self._file.write

    def __exit__(self, *_: object) -> None:
        assert self._file is not None
        self._file.close()


def _read_all(source: Path | bytes, size: int, digest: str) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return source.read_bytes()
    except OSError as err:
        raise RegistryError(f"cannot read blob {digest} from {source}: {err.strerror}",
                            hint="check that the file exists") from err


def _chunks(source: Path | bytes, chunk_size: int, digest: str) -> Iterable[bytes]:
    if isinstance(source, bytes):
        yield from (source[i:i + chunk_size] for i in range(0, len(source), chunk_size))
        return
    try:
        with open(source, "rb") as stream:
            while chunk := stream.read(chunk_size):
                yield chunk
    except OSError as err:
        raise RegistryError(f"cannot read blob {digest} from {source}: {err.strerror}",
                            hint="check that the file exists") from err

