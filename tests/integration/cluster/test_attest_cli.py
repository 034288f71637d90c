"""``dockyard build --provenance/--sbom/--attest`` end to end: the real CLI against the
embedded service (one root for the module, stopped at the end), the registry fixture's
busybox, and what a reader of BuildKit's attestations checks: the attestation manifest in
the index, the in-toto statements (validated against schemas of their required fields),
the SLSA materials, the SPDX files and packages, the statement files of a local output,
and ``--provenance=false`` leaving the image as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support.cluster import dockyard

DOCKERFILE = """\
FROM BUSYBOX
COPY status /var/lib/dpkg/status
RUN echo attested > /hello
"""

SECRET_DOCKERFILE = """\
FROM BUSYBOX
RUN --mount=type=secret,id=tok,required=true test -s /run/secrets/tok && echo used > /used
"""
SECRET = "tok-value-5d0c7e91"  # must appear nowhere in the output

# A dpkg database: one package installed, one removed (its config files left).
DPKG_STATUS = """\
Package: dockyard-demo
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 1.2-3
Description: a package the SBOM must list
 with a second line

Package: gone-demo
Status: deinstall ok config-files
Architecture: amd64
Version: 0.1
Description: removed, not listed
"""

#: in-toto Statement v0.1 (https://github.com/in-toto/attestation/blob/v0.1.0/spec):
#: the fields a reader requires.
STATEMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_type", "subject", "predicateType", "predicate"],
    "properties": {
        "_type": {"const": "https://in-toto.io/Statement/v0.1"},
        "predicateType": {"type": "string", "format": "uri"},
        "subject": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "digest"],
            "properties": {"name": {"type": "string"}, "digest": {
                "type": "object", "minProperties": 1,
                "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]+$"}}}}},
        "predicate": {"type": "object"},
    },
}
_DIGEST_SET = {"type": "object", "additionalProperties": {"type": "string"}}
#: SLSA Provenance v0.2 (https://slsa.dev/provenance/v0.2#schema).
SLSA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["builder", "buildType"],
    "properties": {
        "builder": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"}}},
        "buildType": {"type": "string"},
        "invocation": {"type": "object", "properties": {
            "configSource": {"type": "object", "properties": {
                "uri": {"type": "string"}, "digest": _DIGEST_SET,
                "entryPoint": {"type": "string"}}},
            "parameters": {"type": "object"}, "environment": {"type": "object"}}},
        "buildConfig": {"type": "object"},
        "metadata": {"type": "object", "properties": {
            "buildInvocationId": {"type": "string"},
            "buildStartedOn": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
            "buildFinishedOn": {"type": "string",
                                "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
            "completeness": {"type": "object", "properties": {
                k: {"type": "boolean"} for k in ("parameters", "environment", "materials")}},
            "reproducible": {"type": "boolean"}}},
        "materials": {"type": "array", "items": {"type": "object", "properties": {
            "uri": {"type": "string"}, "digest": _DIGEST_SET}}},
    },
}
#: SPDX 2.3 JSON (spdx-schema.json): the document's, packages' and files' required fields.
SPDX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spdxVersion", "dataLicense", "SPDXID", "name", "documentNamespace",
                 "creationInfo"],
    "properties": {
        "spdxVersion": {"const": "SPDX-2.3"}, "dataLicense": {"const": "CC0-1.0"},
        "SPDXID": {"const": "SPDXRef-DOCUMENT"},
        "creationInfo": {"type": "object", "required": ["created", "creators"]},
        "packages": {"type": "array", "items": {
            "type": "object", "required": ["SPDXID", "name", "downloadLocation"],
            "properties": {"SPDXID": {"type": "string", "pattern": "^SPDXRef-[A-Za-z0-9.-]+$"}}}},
        "files": {"type": "array", "items": {
            "type": "object", "required": ["SPDXID", "fileName", "checksums"],
            "properties": {"checksums": {"type": "array", "contains": {
                "type": "object", "properties": {"algorithm": {"const": "SHA1"}}}}}}},
        "relationships": {"type": "array", "items": {
            "type": "object",
            "required": ["spdxElementId", "relationshipType", "relatedSpdxElement"]}},
    },
}


class Root:
    def __init__(self, root: Path, work: Path, busybox: Any) -> None:
        self.root, self.work, self.busybox = root, work, busybox

    def build(self, *argv: str, ok: bool = True, env: dict[str, str] | None = None) -> str:
        done = dockyard(self.root, "build", "--progress=plain", *argv, check=False,
                        timeout=240, extra=env)
        text = done.stderr.decode(errors="replace")
        assert (done.returncode == 0) == ok, text
        return text


@pytest.fixture(scope="module")
def root(busybox_image: Any) -> Iterator[Root]:
    found = Root(Path(tempfile.mkdtemp(prefix="dya-", dir="/tmp")),
                 Path(tempfile.mkdtemp(prefix="dya-work-")), busybox_image)
    context = found.work / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE.replace("BUSYBOX", busybox_image.reference))
    (context / "status").write_text(DPKG_STATUS)
    (context / "Dockerfile.secret").write_text(
        SECRET_DOCKERFILE.replace("BUSYBOX", busybox_image.reference))
    try:
        yield found
    finally:
        dockyard(found.root, "stop", check=False, timeout=90)
        shutil.rmtree(found.root, ignore_errors=True)
        shutil.rmtree(found.work, ignore_errors=True)


def _layout(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


def _blob(files: dict[str, bytes], digest: str) -> Any:
    return json.loads(files["blobs/sha256/" + digest.removeprefix("sha256:")])


def _statements(files: dict[str, bytes], manifest: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.in-toto+json"
        document = _blob(files, layer["digest"])
        assert layer["annotations"] == {"in-toto.io/predicate-type": document["predicateType"]}
        jsonschema.validate(document, STATEMENT_SCHEMA)
        found[document["predicateType"]] = document
    return found


def test_provenance_and_sbom_attached_to_oci_and_pushed_index(root: Root,
                                                              registry: Any) -> None:
    out = root.work / "oci"
    out.mkdir()
    pushed = f"{registry.domain}/example/attested:1"
    root.build("--provenance=mode=max", "--sbom=true", "--build-arg", "FLAVOUR=plain",
               "-o", f"type=oci,dest={out}/image.tar", "--push", "-t", pushed,
               "--metadata-file", f"{out}/meta.json", str(root.work / "context"))
    files = _layout(out / "image.tar")
    top = json.loads(files["index.json"])["manifests"][0]
    index = _blob(files, top["digest"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    image, attestation = index["manifests"]
    assert image["platform"]["os"] == "linux" and "annotations" not in image
    assert attestation["platform"] == {"architecture": "unknown", "os": "unknown"}
    assert attestation["annotations"] == {"vnd.docker.reference.digest": image["digest"],
                                          "vnd.docker.reference.type": "attestation-manifest"}
    statements = _statements(files, _blob(files, attestation["digest"]))
    assert set(statements) == {"https://slsa.dev/provenance/v0.2", "https://spdx.dev/Document"}
    for document in statements.values():
        assert {s["digest"]["sha256"] for s in document["subject"]} == {
            image["digest"].removeprefix("sha256:")}

    provenance = statements["https://slsa.dev/provenance/v0.2"]["predicate"]
    jsonschema.validate(provenance, SLSA_SCHEMA)
    assert provenance["buildType"] == "https://mobyproject.org/buildkit@v1"
    assert provenance["invocation"]["configSource"]["entryPoint"] == "Dockerfile"
    when = provenance["metadata"]
    assert when["buildStartedOn"] <= when["buildFinishedOn"], when
    assert provenance["invocation"]["parameters"]["args"]["build-arg:FLAVOUR"] == "plain"
    base = root.busybox.index_digest.removeprefix("sha256:")
    busybox = [m for m in provenance["materials"] if m["uri"].startswith("pkg:docker/")]
    assert [m["digest"] for m in busybox] == [{"sha256": base}], provenance["materials"]
    assert "library/busybox@latest?platform=linux%2F" in busybox[0]["uri"]
    steps = provenance["buildConfig"]["llbDefinition"]
    assert any(step["op"].get("args", [""])[-1] == "echo attested > /hello" for step in steps)

    sbom = statements["https://spdx.dev/Document"]["predicate"]
    jsonschema.validate(sbom, SPDX_SCHEMA)
    by_name = {f["fileName"]: f for f in sbom["files"]}
    assert {"/bin/busybox", "/hello", "/var/lib/dpkg/status"} <= set(by_name)
    sha = {c["algorithm"]: c["checksumValue"] for c in by_name["/hello"]["checksums"]}
    assert sha["SHA256"] == hashlib.sha256(b"attested\n").hexdigest()
    packages = {p["name"]: p for p in sbom["packages"]}
    assert packages["dockyard-demo"]["versionInfo"] == "1.2-3"
    assert packages["dockyard-demo"]["externalRefs"][0]["referenceLocator"] == \
        "pkg:deb/debian/dockyard-demo@1.2-3?arch=amd64"
    assert "gone-demo" not in packages

    meta = json.loads((out / "meta.json").read_text())
    assert meta["containerimage.digest"] == top["digest"]
    assert meta["buildx.build.provenance"]["materials"] == provenance["materials"]
    assert "buildConfig" not in meta["buildx.build.provenance"]  # buildx's min form

    request = urllib.request.Request(
        f"http://{registry.domain}/v2/example/attested/manifests/1",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 -- loopback
        assert json.loads(answer.read()) == index


def _digest(root: Root, name: str, *flags: str) -> str:
    out = root.work / name
    out.mkdir()
    root.build(*flags, "-o", f"type=oci,dest={out}/image.tar", "--metadata-file",
               f"{out}/meta.json", str(root.work / "context"))
    digest: str = json.loads((out / "meta.json").read_text())["containerimage.digest"]
    return digest


def test_provenance_false_and_sbom_false_change_nothing(root: Root) -> None:
    plain = _digest(root, "plain")
    assert _digest(root, "off", "--provenance=false", "--sbom=false") == plain
    assert _digest(root, "off-attest", "--attest", "type=provenance,disabled=true") == plain
    assert _digest(root, "on", "--provenance=true") != plain


def test_local_output_gets_statement_files(root: Root) -> None:
    out = root.work / "local"
    root.build("--attest", "type=provenance", "-o", f"type=local,dest={out}",
               str(root.work / "context"))
    assert (out / "hello").read_text() == "attested\n"
    document = json.loads((out / "provenance.json").read_text())
    jsonschema.validate(document, STATEMENT_SCHEMA)
    jsonschema.validate(document["predicate"], SLSA_SCHEMA)
    subjects = {s["name"]: s["digest"]["sha256"] for s in document["subject"]}
    assert subjects["hello"] == hashlib.sha256(b"attested\n").hexdigest()
    assert "buildConfig" not in document["predicate"]  # mode=min
    assert "args" not in document["predicate"]["invocation"]["parameters"] or not any(
        k.startswith("build-arg:")
        for k in document["predicate"]["invocation"]["parameters"]["args"])
    assert not (out / "sbom.spdx.json").exists()


def test_max_provenance_names_secret_ids_never_values(root: Root) -> None:
    out = root.work / "secret"
    out.mkdir()
    root.build("-f", str(root.work / "context" / "Dockerfile.secret"), "--secret",
               "id=tok,env=DYA_TOKEN", "--provenance=mode=max", "-o",
               f"type=oci,dest={out}/image.tar", str(root.work / "context"),
               env={"DYA_TOKEN": SECRET})
    data = (out / "image.tar").read_bytes()
    assert SECRET.encode() not in data
    files = _layout(out / "image.tar")
    index = _blob(files, json.loads(files["index.json"])["manifests"][0]["digest"])
    statements = _statements(files, _blob(files, index["manifests"][1]["digest"]))
    predicate = statements["https://slsa.dev/provenance/v0.2"]["predicate"]
    assert predicate["invocation"]["configSource"]["entryPoint"] == "Dockerfile.secret"
    assert predicate["invocation"]["parameters"]["secrets"] == [{"id": "tok",
                                                                 "optional": False}]


@pytest.mark.parametrize(("flags", "says"), [
    (("--sbom", "generator=docker/buildkit-syft-scanner"), "generator images are not run"),
    (("--provenance", "mode=maximal"), "mode must be min or max"),
    (("--attest", "type=vuln"), "unsupported attestation type 'vuln'"),
])
def test_refused_attestations_say_why(root: Root, flags: tuple[str, ...], says: str) -> None:
    text = root.build(*flags, str(root.work / "context"), ok=False)
    assert says in text
    assert "Traceback" not in text
