"""Registry credentials and authentication challenges, as the docker CLI finds and answers them.

- ``load_docker_config`` reads ``$DOCKER_CONFIG/config.json`` (default ``~/.docker``):
  ``auths`` entries (base64 ``auth`` or ``username``/``password``), ``credHelpers`` per
  registry and ``credsStore`` for all, answered by ``docker-credential-<helper> get``.
- ``parse_challenges`` reads a ``WWW-Authenticate`` header (``Bearer realm=..,service=..,
  scope=..`` or ``Basic realm=..``) into ``Challenge`` values.
- ``TokenCache`` keeps Bearer tokens per (realm, service, scopes) until they expire.

Nothing here talks HTTP: the registry client (``_registry``) asks for credentials and
tokens and does the requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard.scheduler._errors import RegistryError

__all__ = [
    "Challenge",
    "Credentials",
    "DockerConfig",
    "TokenCache",
    "config_key",
    "load_docker_config",
    "parse_challenges",
]

#: The key docker writes in config.json for Docker Hub.
HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_HUB_DOMAINS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: Tokens are refreshed this many seconds before they expire.
_EXPIRY_MARGIN = 10.0
#: What a registry token lives when its response does not say (the distribution spec's value).
_DEFAULT_TOKEN_LIFETIME = 60.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and a secret (password or token) for one registry."""

    username: str
    password: str

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(username={self.username!r}, password='***')"


@dataclass(frozen=True, slots=True)
class Challenge:
    """One scheme of a ``WWW-Authenticate`` header: ``bearer`` or ``basic``, and its params."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def config_key(domain: str) -> str:
    """The key docker files a registry's credentials under in config.json."""
    return HUB_CONFIG_KEY if domain in _HUB_DOMAINS else domain


def _key_domain(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``: how docker matches an ``auths`` key."""
    bare = re.sub(r"^[a-z]+://", "", key.strip())
    domain = bare.split("/", 1)[0]
    return "docker.io" if domain in _HUB_DOMAINS else domain


def _decode_auth(entry: Mapping[str, Any], where: str) -> Credentials | None:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            text = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as err:
            raise RegistryError(f"{where}: the 'auth' value is not base64 of user:password",
                                hint="run 'docker login' again to rewrite it") from err
        user, colon, secret = text.partition(":")
        if not colon:
            raise RegistryError(f"{where}: the 'auth' value has no ':' between user and "
                                "password", hint="run 'docker login' again to rewrite it")
        return Credentials(user, secret)
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str) and username:
        return Credentials(username, password)
    return None


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """The parts of a docker config.json that name credentials.

    ``auths`` maps a registry domain (``docker.io`` for the Hub) to its raw entry;
    ``helpers`` a domain to a credential helper; ``store`` is the default helper."""

    path: Path
    auths: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    helpers: Mapping[str, str] = field(default_factory=dict)
    store: str = ""

    def helper_for(self, domain: str) -> str:
        """The credential helper for ``domain`` (``""`` if none)."""
        wanted = _key_domain(config_key(domain))
        for key, helper in self.helpers.items():
            if _key_domain(key) == wanted:
                return helper
        return self.store

    def stored(self, domain: str) -> Credentials | None:
        """The credentials written in ``auths`` for ``domain``, if any."""
        entry = self.auths.get(_key_domain(config_key(domain)))
        return None if entry is None else _decode_auth(entry, f"{self.path}: auths[{domain}]")

    async def credentials(self, domain: str) -> Credentials | None:
        """Credentials for ``domain``: its helper's answer when a helper is set and installed
        (docker's order), else the ``auths`` entry, else None (anonymous)."""
        helper = self.helper_for(domain)
        if helper:
            found = await _ask_helper(helper, config_key(domain))
            if found is not None:
                return found
        return self.stored(domain)


def _config_dir(env: Mapping[str, str]) -> Path:
    explicit = env.get("DOCKER_CONFIG")
    return Path(explicit) if explicit else Path(env.get("HOME", "~")).expanduser() / ".docker"


def _parse_config(path: Path, raw: Any) -> DockerConfig:
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: not a JSON object", hint="fix or remove the file")
    auths = raw.get("auths") or {}
    helpers = raw.get("credHelpers") or {}
    store = raw.get("credsStore") or ""
    if not isinstance(auths, dict) or not isinstance(helpers, dict) or not isinstance(store, str):
        raise RegistryError(f"{path}: 'auths', 'credHelpers' or 'credsStore' has the wrong type",
                            hint="fix or remove the file")
    entries = {_key_domain(key): value for key, value in auths.items() if isinstance(value, dict)}
    return DockerConfig(path, entries, {str(k): str(v) for k, v in helpers.items()}, store)


def load_docker_config(env: Mapping[str, str] | None = None) -> DockerConfig:
    """Read ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``); a missing file
    is an empty config, an unreadable or malformed one a ``RegistryError``."""
    path = _config_dir(os.environ if env is None else env) / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return DockerConfig(path)
    except OSError as err:
        raise RegistryError(f"cannot read {path}: {err.strerror}",
                            hint="check the file's permissions") from err
    try:
        return _parse_config(path, json.loads(text))
    except json.JSONDecodeError as err:
        raise RegistryError(f"{path}: invalid JSON at line {err.lineno}",
                            hint="fix or remove the file") from err


async def _ask_helper(helper: str, server: str) -> Credentials | None:
    """``docker-credential-<helper> get`` for ``server``; None when the helper is not
    installed or knows nothing of the server (docker falls back to anonymous there too)."""
    program = f"docker-credential-{helper}"
    try:
        proc = await asyncio.create_subprocess_exec(
            program, "get", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except (FileNotFoundError, PermissionError):
        return None
    out, err = await proc.communicate(server.encode())
    if proc.returncode != 0:
        if b"credentials not found" in (out + err).lower():
            return None
        raise RegistryError(f"{program} get {server} failed (exit {proc.returncode}): "
                            f"{err.decode(errors='replace').strip()[:200]}",
                            hint=f"check the helper with: echo {server} | {program} get")
    return _helper_answer(program, out)


def _helper_answer(program: str, out: bytes) -> Credentials | None:
    try:
        answer = json.loads(out)
        user, secret = answer["Username"], answer["Secret"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RegistryError(f"{program} returned an answer that is not "
                            '{"Username": .., "Secret": ..}',
                            hint="check or reinstall the credential helper") from err
    return Credentials(str(user), str(secret)) if secret else None


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')


def _parse_params(text: str) -> tuple[dict[str, str], str]:
    """Leading ``k=v`` / ``k="v"`` pairs of ``text`` and what follows them."""
    params: dict[str, str] = {}
    while (match := _PARAM.match(text)) is not None and match.end() > 0:
        value = match[2] if match[2] is not None else match[3]
        params[match[1].lower()] = re.sub(r"\\(.)", r"\1", value)
        text = text[match.end():]
    return params, text


def parse_challenges(header: str) -> list[Challenge]:
    """Every scheme of a ``WWW-Authenticate`` header, in order; unparseable parts are
    skipped (a registry's bad header then reads as no challenge)."""
    challenges: list[Challenge] = []
    rest = header.strip()
    while rest:
        scheme = re.match(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if scheme is None:
            break
        params, rest = _parse_params(rest[scheme.end():])
        challenges.append(Challenge(scheme[1].lower(), params))
        rest = rest.lstrip(" ,")
    return challenges


@dataclass(slots=True)
class _Token:
    value: str
    expires: float  # time.monotonic() after which the token is not used


class TokenCache:
    """Bearer tokens by (realm, service, scopes); a token is reused until shortly before it
    expires.  ``statistics()`` counts hits and stored tokens."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}  # live and stale
        self._hits = 0  # lookups answered from the cache

    def get(self, realm: str, service: str, scopes: tuple[str, ...]) -> str | None:
        token = self._tokens.get((realm, service, scopes))
        if token is None or token.expires <= time.monotonic():
            return None
        self._hits += 1
        return token.value

    def put(self, realm: str, service: str, scopes: tuple[str, ...], answer: Any) -> str:
        """Store a token endpoint's JSON answer (``token`` or ``access_token``,
        ``expires_in``) and return the token."""
        value = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) \
            else None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"token service {realm} answered without a token",
                                hint="check the registry's auth service")
        lifetime = answer.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 \
            else _DEFAULT_TOKEN_LIFETIME
        expires = time.monotonic() + max(seconds - _EXPIRY_MARGIN, 1.0)
        self._tokens[(realm, service, scopes)] = _Token(value, expires)
        return value

    def statistics(self) -> dict[str, int]:
        return {"tokens": len(self._tokens), "hits": self._hits}

    def __repr__(self) -> str:
        return f"<TokenCache tokens={len(self._tokens)} hits={self._hits}>"
