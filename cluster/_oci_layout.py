"""``--build-context NAME=oci-layout://PATH[:TAG][@DIGEST]`` on the client: the image an
OCI image layout directory holds, chosen as buildx chooses it.

``read_layout`` picks the manifest (``@DIGEST``; else the ``index.json`` entry whose
``org.opencontainers.image.ref.name`` is ``TAG``; else the only entry, or ``latest``),
an index's entry for the build's platform, and returns the blobs the image needs
(its manifest, config and layers), each checked against its digest.  The build sends
only those blobs, as the context ``context:NAME`` (so a worker fetches only the ones it
lacks, by digest, like any context file); the worker makes the image of them
(workers/_layout_source.py).  Every failure is a ``UsageError`` naming the layout.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.scheduler._errors import DockyardError, UsageError
from dockyard.scheduler._platform import Platform

__all__ = ["LAYOUT_SCHEME", "Layout", "read_layout"]

LAYOUT_SCHEME = "oci-layout://"
_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True, slots=True)
class Layout:
    """The image chosen in the layout ``directory``: its manifest's digest, its config
    and the ``blobs/sha256/<hex>`` paths it needs (manifest, config, layers)."""

    directory: Path
    digest: str
    config: bytes
    blobs: tuple[str, ...]


def split_layout(value: str) -> tuple[str, str, str]:
    """``oci-layout://PATH[:TAG][@DIGEST]`` as (path, tag, digest)."""
    rest = value.removeprefix(LAYOUT_SCHEME)
    path, _, digest = rest.partition("@")
    head, colon, tag = path.rpartition(":")
    if colon and head and "/" not in tag:
        return head, tag, digest
    return path, "", digest


def read_layout(value: str, platform: Platform) -> Layout:
    path, tag, digest = split_layout(value)
    reader = _Reader(Path(path), value)
    try:
        chosen = digest or reader.pick(tag)
        media_type, document = reader.document(chosen)
        if isinstance(document.get("manifests"), list):  # an index: this platform's image
            from dockyard.workers._manifests import select_manifest  # noqa: PLC0415

            chosen = select_manifest(document, platform, value).digest
            media_type, document = reader.document(chosen)
        config_digest = str(document["config"]["digest"])
        layers = [str(layer["digest"]) for layer in document["layers"]]
    except UsageError:
        raise
    except DockyardError as err:  # the manifest's own checks (workers/_manifests.py)
        raise UsageError(f"invalid --build-context {value}: {err.message}",
                         hint=err.hint) from None
    except (KeyError, TypeError) as err:
        raise UsageError(f"invalid --build-context {value}: the manifest {chosen} has no "
                         f"config and layers ({err})") from None
    del media_type
    config = reader.blob(config_digest)
    for layer in layers:
        reader.check(layer)
    blobs = tuple(_blob_path(d) for d in (chosen, config_digest, *layers))
    return Layout(Path(path), chosen, config, blobs)


def _blob_path(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


class _Reader:
    """Blobs of one layout, each checked against its digest."""

    def __init__(self, directory: Path, value: str) -> None:
        self.directory = directory
        self.value = value

    def _error(self, what: str) -> UsageError:
        return UsageError(f"invalid --build-context {self.value}: {what}",
                          hint="name an OCI image layout directory (with index.json), "
                               "e.g. one written by -o type=oci,tar=false")

    def pick(self, tag: str) -> str:
        try:
            index = json.loads((self.directory / "index.json").read_bytes())
            entries: list[dict[str, Any]] = list(index["manifests"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self._error(f"cannot read its index.json ({err})") from None
        named = {str((e.get("annotations") or {}).get(_REF_NAME, "")): e for e in entries}
        if tag:
            if tag not in named:
                raise self._error(f"no image is tagged {tag!r} in index.json")
            return str(named[tag]["digest"])
        if len(entries) == 1:
            return str(entries[0]["digest"])
        if "latest" in named:
            return str(named["latest"]["digest"])
        raise self._error(f"index.json lists {len(entries)} images: name one with :TAG or "
                          "@DIGEST")

    def blob(self, digest: str) -> bytes:
        algorithm, _, hex_ = digest.partition(":")
        if algorithm != "sha256" or len(hex_) != 64:
            raise self._error(f"unsupported digest {digest!r}")
        try:
            data = (self.directory / _blob_path(digest)).read_bytes()
        except OSError as err:
            raise self._error(f"blob {digest} is missing ({err.strerror})") from None
        if hashlib.sha256(data).hexdigest() != hex_:
            raise self._error(f"blob {digest} does not match its digest")
        return data

    def check(self, digest: str) -> None:
        path = self.directory / _blob_path(digest)
        if not path.is_file():
            raise self._error(f"blob {digest} is missing")

    def document(self, digest: str) -> tuple[str, dict[str, Any]]:
        from dockyard.workers._manifests import parse_manifest  # noqa: PLC0415

        return parse_manifest(self.blob(digest), "", f"{self.value} ({digest})")
