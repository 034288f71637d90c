"""Docker image references, parsed and normalised as docker's distribution/reference does.

``parse_reference("alpine")`` is ``docker.io/library/alpine:latest``: a name without a
registry host lives on Docker Hub (``index.docker.io`` is the same place), a one-part Hub
name is an official image under ``library/``, and a reference with neither tag nor
digest gets the ``latest`` tag.  The first path part is a registry host when it holds a
``.`` or ``:``, is ``localhost``, or has upper-case letters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import ImageReferenceError

__all__ = ["Reference", "parse_reference"]

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_DEFAULT_TAG = "latest"
_NAME_MAX = 255

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = rf"{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?P<name>(?P<domain>{_DOMAIN})/(?P<path>{_PATH}))"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?",
    re.ASCII,  # Go's \w is ASCII-only
)
_HEX64 = re.compile(r"[a-f0-9]{64}")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised reference: ``domain/path[:tag][@digest]``.

    ``tag`` is "" only when a digest pins the image and no tag was written."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        return self.name + self._suffix()

    def familiar(self) -> str:
        """The short form docker shows: ``alpine:3.19``, ``user/app:latest``."""
        return _familiar_name(self.domain, self.path) + self._suffix()

    def _suffix(self) -> str:
        text = f":{self.tag}" if self.tag else ""
        return text + (f"@{self.digest}" if self.digest else "")


def _familiar_name(domain: str, path: str) -> str:
    if domain != DEFAULT_DOMAIN:
        return f"{domain}/{path}"
    rest = path.removeprefix(_OFFICIAL_PREFIX)
    return rest if "/" not in rest else path


def _split_domain(text: str) -> tuple[str, str]:
    first, slash, rest = text.partition("/")
    is_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    domain, remainder = (first, rest) if slash and is_host else (DEFAULT_DOMAIN, text)
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = _OFFICIAL_PREFIX + remainder
    return domain, remainder


def _error(text: str, reason: str) -> ImageReferenceError:
    return ImageReferenceError(f"invalid reference format {text!r}: {reason}")


def _check_digest(text: str, digest: str) -> None:
    algorithm, _, hex_part = digest.partition(":")
    if algorithm not in _DIGEST_HEX_LENGTH:
        raise _error(text, f"unsupported digest algorithm {algorithm!r}")
    if len(hex_part) != _DIGEST_HEX_LENGTH[algorithm]:
        raise _error(text, "invalid checksum digest length")
    if hex_part != hex_part.lower():
        raise _error(text, "invalid checksum digest format")


def _match(text: str, full: str) -> re.Match[str]:
    match = _REFERENCE.fullmatch(full)
    if match is None:
        if _REFERENCE.fullmatch(full.lower()):
            raise _error(text, "repository name must be lowercase")
        raise _error(text, "expected [host[:port]/]name[:tag][@algorithm:hex]")
    if len(match["name"]) > _NAME_MAX:
        raise _error(text, f"repository name must not be more than {_NAME_MAX} characters")
    return match


def parse_reference(text: str) -> Reference:
    """Parse and normalise ``text``; ``ImageReferenceError`` when it is not a reference."""
    if not text:
        raise _error(text, "repository name must have at least one component")
    if _HEX64.fullmatch(text):
        raise _error(text, "cannot specify 64-byte hexadecimal strings as a repository name")
    domain, remainder = _split_domain(text)
    remote = remainder.split("@", 1)[0].split(":", 1)[0]
    if remote != remote.lower():
        raise _error(text, f"repository name ({remote}) must be lowercase")
    match = _match(text, f"{domain}/{remainder}")
    digest = match["digest"] or ""
    if digest:
        _check_digest(text, digest)
    tag = match["tag"] or ("" if digest else _DEFAULT_TAG)
    return Reference(match["domain"], match["path"], tag, digest)
