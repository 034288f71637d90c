"""The registry client's pure parts: addresses, auth challenges, credentials in a docker
config, manifests, platform selection, indexes, error messages.  No network, no files."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from dockyard.scheduler._errors import RegistryError
from dockyard.scheduler._platform import Platform
from dockyard.workers._auth import (
    Challenge,
    Credentials,
    TokenCache,
    _parse_config,
    config_key,
    parse_challenges,
)
from dockyard.workers._manifests import ContentCache, FetchedManifest, sha256_digest
from dockyard.workers._registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    _status_error,
    build_index,
    parse_manifest,
    platform_candidates,
    registry_url,
    select_manifest,
    uses_plain_http,
)

# --- addresses ---------------------------------------------------------------------------

PLAIN_HTTP = [
    ("localhost:5000", (), True),
    ("localhost", (), True),
    ("127.0.0.1:5000", (), True),
    ("127.3.4.5", (), True),
    ("[::1]:5000", (), True),
    ("128.0.0.1:5000", (), False),
    ("registry.example.com", (), False),
    ("docker.io", (), False),
    ("registry.example.com:5000", ("registry.example.com:5000",), True),
    ("registry.example.com:5000", ("registry.example.com",), True),
    ("registry.example.com:5001", ("registry.example.com:5000",), False),
    ("10.0.0.1:5000", ("10.0.0.1:5000",), True),
]


@pytest.mark.parametrize(("domain", "insecure", "plain"), PLAIN_HTTP)
def test_plain_http_as_docker_decides(domain: str, insecure: tuple[str, ...],
                                      plain: bool) -> None:
    assert uses_plain_http(domain, insecure) is plain


URLS = [
    ("docker.io", "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("[::1]:5000", "http://[::1]:5000"),
]


@pytest.mark.parametrize(("domain", "url"), URLS)
def test_registry_url(domain: str, url: str) -> None:
    assert registry_url(domain) == url


# --- auth challenges, tokens, config.json ------------------------------------------------

CHALLENGES = [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/busybox:pull"',
     [Challenge("bearer", {"realm": "https://auth.docker.io/token",
                           "service": "registry.docker.io",
                           "scope": "repository:library/busybox:pull"})]),
    ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
    ("bearer realm=http://127.0.0.1:9/token, service=svc",
     [Challenge("bearer", {"realm": "http://127.0.0.1:9/token", "service": "svc"})]),
    ('Bearer realm="a\\"b",scope="repository:x:pull,push"',
     [Challenge("bearer", {"realm": 'a"b', "scope": "repository:x:pull,push"})]),
    ('Basic realm="r", Bearer realm="t"',
     [Challenge("basic", {"realm": "r"}), Challenge("bearer", {"realm": "t"})]),
    ("", []),
    ("Negotiate", [Challenge("negotiate", {})]),
]


@pytest.mark.parametrize(("header", "expected"), CHALLENGES)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_token_cache_reuses_per_scope_and_expires() -> None:
    cache = TokenCache()
    scopes = ("repository:a:pull",)
    assert cache.get("r", "s", scopes) is None
    assert cache.put("r", "s", scopes, {"token": "T1", "expires_in": 300}) == "T1"
    assert cache.get("r", "s", scopes) == "T1"
    assert cache.get("r", "s", ("repository:b:pull",)) is None
    assert cache.put("r", "s", ("x",), {"access_token": "T2", "expires_in": 1}) == "T2"
    assert cache.get("r", "s", ("x",)) == "T2"  # short-lived tokens live at least 1 s
    assert cache.statistics() == {"tokens": 2, "hits": 2}


@pytest.mark.parametrize("answer", [{}, {"token": ""}, [], "x", {"token": 3}])
def test_token_answer_without_token(answer: Any) -> None:
    with pytest.raises(RegistryError, match="answered without a token"):
        TokenCache().put("https://auth/token", "s", (), answer)


def _auth(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CONFIGS: list[tuple[dict[str, Any], str, Credentials | None, str]] = [
    ({"auths": {"127.0.0.1:5000": {"auth": _auth("bob:s3cr:et")}}}, "127.0.0.1:5000",
     Credentials("bob", "s3cr:et"), ""),
    ({"auths": {"http://127.0.0.1:5000/v2/": {"auth": _auth("bob:pw")}}}, "127.0.0.1:5000",
     Credentials("bob", "pw"), ""),
    ({"auths": {"https://index.docker.io/v1/": {"auth": _auth("hub:pw")}}}, "docker.io",
     Credentials("hub", "pw"), ""),
    ({"auths": {"ghcr.io": {"username": "u", "password": "p"}}}, "ghcr.io",
     Credentials("u", "p"), ""),
    ({"auths": {"ghcr.io": {}}}, "ghcr.io", None, ""),
    ({"auths": {"ghcr.io": {"auth": _auth("u:p")}}}, "quay.io", None, ""),
    ({"credsStore": "desktop"}, "quay.io", None, "desktop"),
    ({"credsStore": "desktop", "credHelpers": {"ghcr.io": "gh"}}, "ghcr.io", None, "gh"),
    ({"credHelpers": {"https://index.docker.io/v1/": "hub"}}, "docker.io", None, "hub"),
]


@pytest.mark.parametrize(("raw", "domain", "stored", "helper"), CONFIGS)
def test_docker_config_entries(raw: dict[str, Any], domain: str, stored: Credentials | None,
                               helper: str) -> None:
    config = _parse_config(Path("/cfg/config.json"), raw)
    assert config.stored(domain) == stored
    assert config.helper_for(domain) == helper


BAD_CONFIGS = [
    ([], "/cfg/config.json: not a JSON object"),
    ({"auths": "x"}, "/cfg/config.json: 'auths', 'credHelpers' or 'credsStore' has the wrong type"),
    ({"auths": {"h": {"auth": "!!!"}}},
     "/cfg/config.json: auths[h]: the 'auth' value is not base64 of user:password"),
    ({"auths": {"h": {"auth": _auth("nocolon")}}},
     "/cfg/config.json: auths[h]: the 'auth' value has no ':' between user and password"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_CONFIGS)
def test_bad_docker_config(raw: Any, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        _parse_config(Path("/cfg/config.json"), raw).stored("h")
    assert caught.value.message == message


def test_credentials_repr_hides_the_secret() -> None:
    assert "hunter2" not in repr(Credentials("u", "hunter2"))


def test_config_key_for_the_hub() -> None:
    assert config_key("docker.io") == "https://index.docker.io/v1/"
    assert config_key("ghcr.io") == "ghcr.io"


# --- manifests ---------------------------------------------------------------------------

DIGEST = "sha256:" + "a" * 64
MANIFEST = {"schemaVersion": 2, "config": {"mediaType": "x", "digest": DIGEST, "size": 1},
            "layers": []}

MANIFESTS: list[tuple[Any, str, str]] = [
    ({**MANIFEST, "mediaType": OCI_MANIFEST}, "", OCI_MANIFEST),
    (MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST),
    (MANIFEST, "application/json", OCI_MANIFEST),
    ({"schemaVersion": 2, "manifests": []}, DOCKER_MANIFEST_LIST + "; charset=utf-8",
     DOCKER_MANIFEST_LIST),
    ({"schemaVersion": 2, "manifests": []}, "", OCI_INDEX),
]


@pytest.mark.parametrize(("doc", "content_type", "media_type"), MANIFESTS)
def test_manifest_media_types(doc: Any, content_type: str, media_type: str) -> None:
    assert parse_manifest(json.dumps(doc).encode(), content_type, "U")[0] == media_type


SCHEMA1 = "U is a Docker schema 1 manifest, which is not supported"
INVALID = "registry returned an invalid manifest at U: "
BAD_MANIFESTS: list[tuple[bytes, str, str]] = [
    (b"<html>oops</html>", "", INVALID + "not JSON (Expecting value: line 1 column 1 (char 0))"),
    (b"\x80abc", "", INVALID + "not JSON ('utf-8' codec can't decode byte 0x80 in position 0:"
                               " invalid start byte)"),
    (b"[1, 2]", "", INVALID + "not a JSON object"),
    (b'{"schemaVersion": 1, "fsLayers": []}', "", SCHEMA1),
    (b'{"schemaVersion": 2}', "application/vnd.docker.distribution.manifest.v1+prettyjws",
     SCHEMA1),
    (b'{"schemaVersion": 2}', "", INVALID + "it has no mediaType and is neither a manifest "
                                            "nor an index"),
    (b'{"mediaType": "text/plain"}', "", INVALID + "unsupported media type 'text/plain'"),
    (json.dumps({"mediaType": OCI_INDEX}).encode(), "",
     INVALID + "an index without a 'manifests' list"),
    (json.dumps({"mediaType": OCI_MANIFEST, "layers": []}).encode(), "",
     INVALID + "a manifest without 'config' and 'layers'"),
]


@pytest.mark.parametrize(("data", "content_type", "message"), BAD_MANIFESTS)
def test_bad_manifests(data: bytes, content_type: str, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_manifest(data, content_type, "U")
    assert caught.value.message == message
    assert caught.value.hint


# --- platforms ---------------------------------------------------------------------------

def _entry(name: str, os: str, arch: str, variant: str = "") -> dict[str, Any]:
    plat = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": OCI_MANIFEST, "digest": "sha256:" + name * 64, "size": 10,
            "platform": plat}


INDEX = {"manifests": [
    _entry("1", "linux", "amd64"), _entry("2", "linux", "arm64", "v8"),
    _entry("3", "linux", "arm", "v6"), _entry("4", "windows", "amd64"),
    {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "5" * 64, "size": 1,
     "platform": {"os": "unknown", "architecture": "unknown"}},
]}
ARM64_ONLY = {"manifests": [_entry("6", "linux", "arm64")]}
ARM_V7 = {"manifests": [_entry("7", "linux", "arm", "v7"), _entry("8", "linux", "arm", "v5")]}
AMD64_V2 = {"manifests": [_entry("9", "linux", "amd64", "v3"), _entry("a", "linux", "amd64",
                                                                        "v2")]}

SELECTIONS = [
    (INDEX, Platform("linux", "amd64"), "1"),
    (INDEX, Platform("linux", "amd64", "v3"), "1"),
    (INDEX, Platform("linux", "arm64"), "2"),
    (INDEX, Platform("linux", "arm64", "v8"), "2"),
    (INDEX, Platform("linux", "aarch64"), "2"),
    (INDEX, Platform("linux", "arm", "v7"), "3"),
    (INDEX, Platform("windows", "amd64"), "4"),
    (ARM64_ONLY, Platform("linux", "arm64", "v8"), "6"),
    (ARM_V7, Platform("linux", "arm64"), "7"),
    (ARM_V7, Platform("linux", "arm", "v6"), "8"),
    (ARM_V7, Platform("linux", "arm"), "7"),
    (AMD64_V2, Platform("linux", "amd64", "v2"), "a"),
    (AMD64_V2, Platform("linux", "amd64", "v4"), "9"),
]


@pytest.mark.parametrize(("index", "wanted", "chosen"), SELECTIONS)
def test_select_manifest(index: dict[str, Any], wanted: Platform, chosen: str) -> None:
    assert select_manifest(index, wanted, "U").digest == "sha256:" + chosen * 64


NO_MATCH = [
    (INDEX, Platform("linux", "s390x"), "U has no image for platform linux/s390x (it has: "
     "linux/amd64, linux/arm/v6, linux/arm64/v8, unknown/unknown, windows/amd64)"),
    (AMD64_V2, Platform("linux", "amd64"),
     "U has no image for platform linux/amd64 (it has: linux/amd64/v2, linux/amd64/v3)"),
    ({"manifests": []}, Platform("linux", "amd64"),
     "U has no image for platform linux/amd64 (it has: none)"),
    ({"manifests": [{"digest": "x"}]}, Platform("linux", "amd64"),
     "registry returned an invalid manifest at U: a descriptor without a valid digest and "
     "size: {'digest': 'x'}"),
]


@pytest.mark.parametrize(("index", "wanted", "message"), NO_MATCH)
def test_select_manifest_fails(index: dict[str, Any], wanted: Platform, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        select_manifest(index, wanted, "U")
    assert caught.value.message == message


def test_candidates_are_ordered_best_first() -> None:
    assert [str(p) for p in platform_candidates(Platform("linux", "arm64", "v8"))] == [
        "linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert [str(p) for p in platform_candidates(Platform("linux", "amd64", "v2"))] == [
        "linux/amd64/v2", "linux/amd64", "linux/386"]


def test_build_index_lists_platforms() -> None:
    data = build_index([Descriptor(OCI_MANIFEST, DIGEST, 5, Platform("linux", "arm64", "v8")),
                        Descriptor(OCI_MANIFEST, DIGEST, 6, Platform("linux", "amd64"))])
    media_type, parsed = parse_manifest(data, "", "U")
    assert media_type == OCI_INDEX
    assert select_manifest(parsed, Platform("linux", "arm64"), "U").size == 5
    assert parsed["manifests"][1]["platform"] == {"architecture": "amd64", "os": "linux"}


# --- error messages ----------------------------------------------------------------------

ERRORS = [
    (401, b"", "pulling x: U answered 401 unauthorized",
     "log in with 'docker login reg:5000' (credentials are read from $DOCKER_CONFIG or "
     "~/.docker/config.json)"),
    (403, b'{"errors":[{"code":"DENIED","message":"no"}]}', "pulling x: U answered 403 denied "
     "(DENIED: no)", "check that your account may access this repository"),
    (404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}',
     "image not found: x (U answered 404) (MANIFEST_UNKNOWN: manifest unknown)",
     "check the image name and tag, and that it was pushed to this registry"),
    (400, b"garbage", "pulling x: U answered 400", "check the registry's logs; retry later"),
]


@pytest.mark.parametrize(("status", "body", "message", "hint"), ERRORS)
def test_status_errors(status: int, body: bytes, message: str, hint: str) -> None:
    err = _status_error(status, "U", body, "pulling x", "reg:5000", "image not found: x")
    assert (err.message, err.hint) == (message, hint)


# --- the content cache (manifests and configs by digest) -----------------------------------

BLOBS = {name: (name * 4).encode() for name in "abcd"}  # 4 bytes each
REG, REPO = "reg:5000", "library/busybox"


def _manifest(name: str) -> FetchedManifest:
    return FetchedManifest(sha256_digest(BLOBS[name]), OCI_MANIFEST, BLOBS[name], {})


def _cache_step(cache: ContentCache, step: tuple[str, str, str]) -> object:
    """One operation: ``put``/``get`` of a manifest (``m``) or config (``c``) named by a
    letter of BLOBS, in repository ``where`` (``REPO``, ``other`` repo or ``far`` domain)."""
    action, name, where = step
    domain, repo = {"here": (REG, REPO), "other": (REG, "library/alpine"),
                    "far": ("ghcr.io", REPO)}[where]
    digest = sha256_digest(BLOBS[name[1]])
    if action == "put":
        if name[0] == "m":
            return cache.put_manifest(domain, repo, _manifest(name[1]))
        return cache.put_config(domain, repo, digest, BLOBS[name[1]])
    if name[0] == "m":
        found = cache.manifest(domain, repo, digest)
        return found is not None and found.data == BLOBS[name[1]]
    return cache.config(domain, repo, digest, 4) == BLOBS[name[1]]


# (capacity, steps, the result of each step, statistics at the end)
CACHE_CASES: list[tuple[int, list[tuple[str, str, str]], list[bool], dict[str, int]]] = [
    (16, [("put", "ma", "here"), ("get", "ma", "here"), ("get", "ca", "here")],
     [True, True, False],
     {"manifest_hits": 1, "config_hits": 0, "evictions": 0, "cached_bytes": 4,
      "cached_entries": 1}),
    # least recently used goes first: reading "ma" saves it, "cb" is evicted
    (8, [("put", "ma", "here"), ("put", "cb", "here"), ("get", "ma", "here"),
         ("put", "mc", "here"), ("get", "cb", "here"), ("get", "ma", "here"),
         ("get", "mc", "here")],
     [True, True, True, True, False, True, True],
     {"manifest_hits": 3, "config_hits": 0, "evictions": 1, "cached_bytes": 8,
      "cached_entries": 2}),
    # keyed by domain and repository: no content crosses to a repository not shown to hold it
    (16, [("put", "ma", "here"), ("get", "ma", "other"), ("get", "ma", "far"),
          ("put", "cb", "far"), ("get", "cb", "here"), ("get", "cb", "far")],
     [True, False, False, True, False, True],
     {"manifest_hits": 0, "config_hits": 1, "evictions": 0, "cached_bytes": 8,
      "cached_entries": 2}),
    # storing again replaces, without counting the bytes twice
    (16, [("put", "ma", "here"), ("put", "ma", "here"), ("get", "ma", "here")],
     [True, True, True],
     {"manifest_hits": 1, "config_hits": 0, "evictions": 0, "cached_bytes": 4,
      "cached_entries": 1}),
    # an entry larger than the whole cache is not kept; capacity 0 keeps nothing
    (3, [("put", "ma", "here"), ("get", "ma", "here")], [False, False],
     {"manifest_hits": 0, "config_hits": 0, "evictions": 0, "cached_bytes": 0,
      "cached_entries": 0}),
    (0, [("put", "cd", "here"), ("get", "cd", "here")], [False, False],
     {"manifest_hits": 0, "config_hits": 0, "evictions": 0, "cached_bytes": 0,
      "cached_entries": 0}),
]


@pytest.mark.parametrize(("capacity", "steps", "results", "stats"), CACHE_CASES)
def test_content_cache(capacity: int, steps: list[tuple[str, str, str]], results: list[bool],
                       stats: dict[str, int]) -> None:
    cache = ContentCache(capacity)
    assert [_cache_step(cache, step) for step in steps] == results
    assert cache.statistics() == stats


def test_content_cache_keeps_only_what_matches_its_digest() -> None:
    cache = ContentCache()
    forged = FetchedManifest(sha256_digest(b"other"), OCI_MANIFEST, b"forged", {})
    assert not cache.put_manifest(REG, REPO, forged)
    assert not cache.put_config(REG, REPO, sha256_digest(b"other"), b"forged")
    assert cache.manifest(REG, REPO, forged.digest) is None
    assert cache.config(REG, REPO, forged.digest, 6) is None
    assert len(cache) == 0


def test_content_cache_config_needs_its_descriptor_size() -> None:
    cache = ContentCache()
    digest = sha256_digest(BLOBS["a"])
    assert cache.put_config(REG, REPO, digest, BLOBS["a"])
    assert cache.config(REG, REPO, digest, 5) is None  # a descriptor that lies: fetch, fail
    assert cache.config(REG, REPO, digest, 4) == BLOBS["a"]
    assert cache.statistics()["config_hits"] == 1
