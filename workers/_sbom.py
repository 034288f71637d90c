"""dockyard's own SBOM scanner: an image's files and the packages its package databases
list, as an SPDX 2.3 JSON document (``--sbom``; BuildKit runs a scanner image for this,
dockyard scans on the worker that exports).

``scan_layers`` reads the image's layer blobs in order (tar streams, compressed or not)
and keeps the final filesystem's regular files with their SHA-1 and SHA-256 (whiteouts
and opaque directories of an upper layer hide what lower layers had; a hard link shares
its target's content) and the bytes of the package databases it knows:

- dpkg: ``var/lib/dpkg/status`` (packages whose status is ``installed``);
- apk: ``lib/apk/db/installed``;
- Python: ``*.dist-info/METADATA`` and ``*.egg-info/PKG-INFO`` (or an ``.egg-info`` file);
- npm: ``node_modules/NAME/package.json`` (and ``node_modules/@SCOPE/NAME/package.json``).

``spdx_document`` turns the inventory into the document: one package for the image
(what the document describes), one per package found with its purl, one file entry per
regular file; the image contains them all.  Nothing here runs anything from the image.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from dockyard.cache_backends._records import LayerDescriptor
from dockyard.scheduler._errors import ExportError

from ._layer_stream import open_layer_reader

__all__ = ["FileEntry", "Inventory", "Package", "scan_layers", "spdx_document"]

SPDX_VERSION: Final = "SPDX-2.3"
#: A package database larger than this is not read (a hostile image cannot make the
#: scanner hold gigabytes).
MAX_DATABASE_BYTES: Final = 64 * 1024 * 1024
_CHUNK: Final = 1 << 20
_WHITEOUT: Final = ".wh."
_OPAQUE: Final = ".wh..wh..opq"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One regular file of the image: its path (absolute), size and checksums."""

    path: str
    size: int
    sha1: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Package:
    """One package a database lists: ``kind`` deb, apk, pypi or npm; ``source`` the
    database file it came from."""

    kind: str
    name: str
    version: str
    source: str
    purl: str
    license: str = ""
    description: str = ""


@dataclass
class Inventory:
    """The final filesystem of an image, as the scanner saw it."""

    files: dict[str, FileEntry] = field(default_factory=dict)  # path -> the file
    databases: dict[str, bytes] = field(default_factory=dict)  # path -> its bytes
    distro: str = ""  # os-release ID (debian, alpine, ...) when the image has one

    def packages(self) -> list[Package]:
        found: list[Package] = []
        for path in sorted(self.databases):
            found += _parse_database(path, self.databases[path], self.distro)
        return found


# --- reading the layers ------------------------------------------------------------------


def _is_database(path: str) -> bool:
    if path in ("/var/lib/dpkg/status", "/lib/apk/db/installed", "/etc/os-release",
                "/usr/lib/os-release"):
        return True
    parent, name = posixpath.split(path)
    if name == "METADATA" and parent.endswith(".dist-info"):
        return True
    if (name == "PKG-INFO" and parent.endswith(".egg-info")) or name.endswith(".egg-info"):
        return True
    return name == "package.json" and _npm_package_dir(parent)


def _npm_package_dir(parent: str) -> bool:
    head, name = posixpath.split(parent)
    if posixpath.basename(head) == "node_modules":
        return bool(name) and not name.startswith("@")
    top, scope = posixpath.split(head)
    return scope.startswith("@") and posixpath.basename(top) == "node_modules"


def _clean(name: str) -> str:
    """A member's name as an absolute path (``./a``, ``a`` and ``/a`` are ``/a``)."""
    return posixpath.normpath("/" + name.lstrip("/"))


@dataclass
class _Layer:
    """One layer's changes: whiteouts and opaque directories, then its own entries."""

    hidden: set[str] = field(default_factory=set)  # paths it removes
    opaque: set[str] = field(default_factory=set)  # directories whose lower content goes
    entries: dict[str, FileEntry | None] = field(default_factory=dict)  # None: not a file
    data: dict[str, bytes] = field(default_factory=dict)  # databases it writes
    links: dict[str, str] = field(default_factory=dict)  # hard link -> its target


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str,
                 layer: _Layer) -> None:
    stream = tar.extractfile(member)
    sha1, sha256, size = hashlib.sha1(usedforsecurity=False), hashlib.sha256(), 0
    keep = _is_database(path) and member.size <= MAX_DATABASE_BYTES
    kept: list[bytes] = []
    while stream is not None and (chunk := stream.read(_CHUNK)):
        sha1.update(chunk)
        sha256.update(chunk)
        size += len(chunk)
        if keep:
            kept.append(chunk)
    layer.entries[path] = FileEntry(path, size, sha1.hexdigest(), sha256.hexdigest())
    if keep:
        layer.data[path] = b"".join(kept)


def _read_layer(blob: Any, digest: str) -> _Layer:
    layer = _Layer()
    _, plain = open_layer_reader(blob)
    try:
        with tarfile.open(fileobj=plain, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                _member(tar, member, layer)
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise ExportError(f"cannot scan layer {digest} for the SBOM: {err}",
                          hint="the cached blob is damaged; rebuild with --no-cache") from None
    return layer


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo, layer: _Layer) -> None:
    path = _clean(member.name)
    parent, name = posixpath.split(path)
    if name == _OPAQUE:
        layer.opaque.add(parent)
    elif name.startswith(_WHITEOUT):
        layer.hidden.add(posixpath.join(parent, name[len(_WHITEOUT):]))
    elif member.isreg():
        _read_member(tar, member, path, layer)
    elif member.islnk():
        layer.links[path] = _clean(member.linkname)
    else:
        layer.entries[path] = None


def _hidden(path: str, layer: _Layer) -> bool:
    """Whether ``layer`` removes ``path`` of a lower layer: a whiteout of it or of a
    directory above it, or an opaque directory above it (one look per ancestor)."""
    if path in layer.hidden:
        return True
    parent = posixpath.dirname(path)
    while True:
        if parent in layer.hidden or parent in layer.opaque:
            return True
        if parent == "/":
            return False
        parent = posixpath.dirname(parent)


def _apply(inventory: Inventory, layer: _Layer) -> None:
    """``layer`` on top of what ``inventory`` holds (its whiteouts first)."""
    gone = [p for p in inventory.files if _hidden(p, layer)] if (
        layer.hidden or layer.opaque) else []
    for path in gone:
        inventory.files.pop(path, None)
        inventory.databases.pop(path, None)
    for path, entry in layer.entries.items():
        inventory.files.pop(path, None)
        inventory.databases.pop(path, None)
        if entry is not None:
            inventory.files[path] = entry
    inventory.databases.update(layer.data)
    for path, target in layer.links.items():
        known = inventory.files.get(target)
        if known is not None:
            inventory.files[path] = FileEntry(path, known.size, known.sha1, known.sha256)
            if target in inventory.databases:
                inventory.databases[path] = inventory.databases[target]


def scan_layers(layers: Iterable[LayerDescriptor], source: Any) -> Inventory:
    """The final filesystem of the image made of ``layers`` (base first), read from
    ``source`` (a ``BlobSource``)."""
    inventory = Inventory()
    for descriptor in layers:
        with source.open_blob(descriptor.digest) as blob:
            _apply(inventory, _read_layer(blob, descriptor.digest))
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        if path in inventory.databases:
            inventory.distro = _os_release_id(inventory.databases.pop(path))
            break
    inventory.databases.pop("/usr/lib/os-release", None)
    return inventory


def _os_release_id(data: bytes) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ID":
            return value.strip().strip("\"'").lower()
    return ""


# --- package databases -------------------------------------------------------------------


def _parse_database(path: str, data: bytes, distro: str) -> list[Package]:
    text = data.decode("utf-8", "replace")
    if path == "/var/lib/dpkg/status":
        return list(_dpkg(text, path, distro or "debian"))
    if path == "/lib/apk/db/installed":
        return list(_apk(text, path, distro or "alpine"))
    if path.endswith("package.json"):
        return list(_npm(text, path))
    return list(_python(text, path))


def _paragraphs(text: str) -> Iterator[list[str]]:
    block: list[str] = []
    for line in text.splitlines():
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


def _deb_fields(block: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in block:
        if line[:1] in (" ", "\t"):
            continue  # a continuation (a long description): the first line is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _dpkg(text: str, path: str, distro: str) -> Iterator[Package]:
    for block in _paragraphs(text):
        fields = _deb_fields(block)
        name, version = fields.get("Package", ""), fields.get("Version", "")
        if not name or not version or not fields.get("Status", "").endswith(" installed"):
            continue
        arch = fields.get("Architecture", "")
        yield Package("deb", name, version, path,
                      _purl("deb", distro, name, version, arch),
                      description=fields.get("Description", ""))


def _apk(text: str, path: str, distro: str) -> Iterator[Package]:
    for block in _paragraphs(text):
        fields = {line[0]: line[2:] for line in block if len(line) > 1 and line[1] == ":"}
        name, version = fields.get("P", ""), fields.get("V", "")
        if name and version:
            yield Package("apk", name, version, path,
                          _purl("apk", distro, name, version, fields.get("A", "")),
                          license=fields.get("L", ""), description=fields.get("T", ""))


def _python(text: str, path: str) -> Iterator[Package]:
    headers = email.parser.Parser().parsestr(text, headersonly=True)
    name, version = str(headers.get("Name") or ""), str(headers.get("Version") or "")
    if name and version:
        normal = re.sub(r"[-_.]+", "-", name).lower()
        yield Package("pypi", name, version, path, f"pkg:pypi/{quote(normal)}@{quote(version)}",
                      license=str(headers.get("License") or ""),
                      description=str(headers.get("Summary") or ""))


def _npm(text: str, path: str) -> Iterator[Package]:
    try:
        data = json.loads(text)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    name, version = data.get("name"), data.get("version")
    if isinstance(name, str) and isinstance(version, str) and name and version:
        scope, _, base = name.rpartition("/")
        where = f"{quote(scope)}/{quote(base)}" if scope else quote(base)
        license_ = data.get("license")
        yield Package("npm", name, version, path, f"pkg:npm/{where}@{quote(version)}",
                      license=license_ if isinstance(license_, str) else "",
                      description=str(data.get("description") or ""))


def _purl(kind: str, distro: str, name: str, version: str, arch: str) -> str:
    text = f"pkg:{kind}/{quote(distro)}/{quote(name)}@{quote(version, safe='')}"
    return text + (f"?arch={quote(arch)}" if arch else "")


# --- the SPDX document -------------------------------------------------------------------

_LICENSE_ID = re.compile(r"[A-Za-z0-9.+-]+(?: (?:AND|OR|WITH) [A-Za-z0-9.+-]+)*")
_ID_CHARS = re.compile(r"[^A-Za-z0-9.-]+")


def _license(text: str) -> str:
    """A declared license when it reads as an SPDX expression, else NOASSERTION."""
    return text if _LICENSE_ID.fullmatch(text.strip() or "-") and text.strip() else \
        "NOASSERTION"


def _package_json(spdx_id: str, package: Package) -> dict[str, Any]:
    data: dict[str, Any] = {
        "SPDXID": spdx_id, "name": package.name, "versionInfo": package.version,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION", "licenseDeclared": _license(package.license),
        "copyrightText": "NOASSERTION",
        "sourceInfo": f"acquired package info from {package.source}",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER",
                          "referenceType": "purl", "referenceLocator": package.purl}],
    }
    if package.description:
        data["summary"] = package.description
    return data


def _file_json(spdx_id: str, entry: FileEntry) -> dict[str, Any]:
    return {"SPDXID": spdx_id, "fileName": entry.path,
            "checksums": [{"algorithm": "SHA1", "checksumValue": entry.sha1},
                          {"algorithm": "SHA256", "checksumValue": entry.sha256}],
            "licenseConcluded": "NOASSERTION", "copyrightText": "NOASSERTION"}


def spdx_document(inventory: Inventory, name: str, created: str,
                  namespace_key: str) -> dict[str, Any]:
    """The SPDX 2.3 document of ``inventory`` for the image called ``name``;
    ``namespace_key`` (the image's digest) makes its namespace unique."""
    root = "SPDXRef-DocumentRoot-Image-" + (_ID_CHARS.sub("-", name).strip("-") or "image")
    packages = [{"SPDXID": root, "name": name, "downloadLocation": "NOASSERTION",
                 "filesAnalyzed": False, "licenseConcluded": "NOASSERTION",
                 "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
                 "primaryPackagePurpose": "CONTAINER"}]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": root}]
    for number, package in enumerate(inventory.packages()):
        spdx_id = f"SPDXRef-Package-{package.kind}-{number}"
        packages.append(_package_json(spdx_id, package))
        relationships.append(_contains(root, spdx_id))
    files = []
    for number, path in enumerate(sorted(inventory.files)):
        spdx_id = f"SPDXRef-File-{number}"
        files.append(_file_json(spdx_id, inventory.files[path]))
        relationships.append(_contains(root, spdx_id))
    return {
        "spdxVersion": SPDX_VERSION, "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://dockyard.invalid/spdx/{quote(name, safe='')}-"
                             f"{namespace_key.removeprefix('sha256:')}",
        "creationInfo": {"created": created, "creators": ["Tool: dockyard"]},
        "packages": packages, "files": files, "relationships": relationships,
    }


def _contains(root: str, element: str) -> dict[str, str]:
    return {"spdxElementId": root, "relationshipType": "CONTAINS",
            "relatedSpdxElement": element}
