"""Attestations of a build's images, as BuildKit makes and attaches them
(docs/attestations in moby/buildkit): in-toto statements of SLSA provenance v0.2
(``--provenance``) and of an SPDX document (``--sbom``, workers/_sbom.py).

- Image, oci, docker and registry outputs: each image gets an *attestation manifest*, an
  OCI manifest whose layers are its statements (``application/vnd.in-toto+json``,
  annotated ``in-toto.io/predicate-type``), listed in the image index after the images
  with platform ``unknown/unknown`` and the annotations ``vnd.docker.reference.type:
  attestation-manifest`` and ``vnd.docker.reference.digest: <the image's manifest>``.
  The statements' subject is the image manifest (named ``pkg:docker/NAME@TAG?platform=``
  for each ``-t`` name, ``_`` without one).
- local and tar outputs: the statements as files beside the image's files
  (``provenance.json``, ``sbom.spdx.json``; in each platform's directory when there are
  several), their subjects the output's regular files with their SHA-256.

Provenance (``mode=min``): the builder, the build type, ``invocation.configSource``
(the Dockerfile's name as ``entryPoint``), ``invocation.parameters`` (frontend, target,
and the locals: context and Dockerfile), ``invocation.environment`` (the worker's
platform), ``materials`` (every base image, as a purl with its digest, and every remote
source the image's steps read), ``metadata`` (invocation id, started and finished times,
completeness, and BuildKit's ``#hermetic``: no RUN of the image had a network).
``mode=max`` adds the build args, the ids of the secrets and ssh agents the image's RUNs
mount (never a value: the graph names them by id only) and ``buildConfig`` (the image's
steps as dockyard's graph has them, ``llbDefinition``-shaped: ``stepN`` ids and inputs)
with their Dockerfile locations.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from dockyard.scheduler._build_request import Annotation, AttestSpec
from dockyard.scheduler._errors import DockyardError, ImageReferenceError
from dockyard.scheduler._graph import BuildGraph, ExecOp, SourceOp, Vertex
from dockyard.scheduler._platform import Platform, default_platform
from dockyard.scheduler._reference import parse_reference

from ._exporters import BlobSource, platform_dir
from ._image import (
    AttestationArtifacts,
    ImageArtifacts,
    IndexArtifacts,
    build_index,
    canonical_json,
    format_time,
)
from ._manifests import OCI_CONFIG, OCI_MANIFEST, Descriptor, sha256_digest
from ._sbom import Inventory, scan_layers, spdx_document

__all__ = [
    "IN_TOTO", "PREDICATE_ANNOTATION", "PROVENANCE_TYPE", "REFERENCE_DIGEST",
    "REFERENCE_TYPE", "SPDX_TYPE", "STATEMENT_TYPE", "Attested", "BuildFacts", "Statement",
    "PROVENANCE_KEY", "attest_images", "attestation_manifest", "image_purl", "local_files",
    "materials", "metadata_provenance",
    "provenance_predicate",
    "sbom_predicate", "statement",
]

STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v0.1"
PROVENANCE_TYPE: Final = "https://slsa.dev/provenance/v0.2"
SPDX_TYPE: Final = "https://spdx.dev/Document"
BUILD_TYPE: Final = "https://mobyproject.org/buildkit@v1"
IN_TOTO: Final = "application/vnd.in-toto+json"
PREDICATE_ANNOTATION: Final = "in-toto.io/predicate-type"
REFERENCE_TYPE: Final = "vnd.docker.reference.type"
REFERENCE_DIGEST: Final = "vnd.docker.reference.digest"
ATTESTATION_MANIFEST: Final = "attestation-manifest"
UNKNOWN_PLATFORM: Final = Platform("unknown", "unknown")
#: The file each predicate is written to in a local or tar output.
FILE_NAMES: Final = {PROVENANCE_TYPE: "provenance.json", SPDX_TYPE: "sbom.spdx.json"}
_IMAGE_SCHEME: Final = "docker-image://"
_REMOTE_SCHEMES: Final = ("https://", "http://", "git://", "git@", "ssh://")


@dataclass(frozen=True)
class BuildFacts:
    """What the provenance says of the build beyond its graph (plain values only)."""

    filename: str = "Dockerfile"
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = ()  # the -t names: the statements' subjects
    started: float = 0.0  # unix seconds (0: unknown)
    invocation_id: str = ""


@dataclass(frozen=True)
class Statement:
    """One in-toto statement of one image: its predicate type and its predicate."""

    predicate_type: str
    predicate: Mapping[str, Any]


# --- provenance --------------------------------------------------------------------------


def _reachable(graph: BuildGraph, root: str | None) -> list[Vertex]:
    """The vertices ``root`` depends on (itself included), in the graph's order."""
    if root is None:
        return []
    wanted, stack = set(), [root]
    while stack:
        digest = stack.pop()
        if digest not in wanted:
            wanted.add(digest)
            stack.extend(graph.vertices[digest].inputs)
    return [vertex for digest, vertex in graph.vertices.items() if digest in wanted]


def image_purl(ref_text: str, platform: Platform | None) -> tuple[str, str]:
    """(purl, digest) of an image reference as BuildKit names a material:
    ``pkg:docker/busybox@latest?platform=linux%2Famd64`` and its pinned digest."""
    ref = parse_reference(ref_text)
    name = ref.familiar().split("@")[0].rsplit(":", 1)[0] if ref.tag else \
        ref.familiar().split("@")[0]
    path = "/".join(quote(part, safe="") for part in name.split("/"))
    text = f"pkg:docker/{path}@{quote(ref.tag or ref.digest, safe='')}"
    if platform is not None:
        text += f"?platform={quote(str(platform), safe='')}"
    return text, ref.digest


def _material(vertex: Vertex) -> dict[str, Any] | None:
    op = vertex.op
    if not isinstance(op, SourceOp):
        return None
    if op.identifier.startswith(_IMAGE_SCHEME):
        try:
            uri, digest = image_purl(op.identifier[len(_IMAGE_SCHEME):], vertex.platform)
        except ImageReferenceError:
            return None
        algorithm, _, hexa = digest.partition(":")
        return {"uri": uri, "digest": {algorithm: hexa} if hexa else {}}
    if op.identifier.startswith(_REMOTE_SCHEMES):
        attrs = dict(op.attrs)
        uri = op.identifier
        if "fullurl" in attrs:  # a git source: the URL as written, its ref after '#'
            ref = op.identifier.partition("#")[2]
            uri = attrs["fullurl"] + (f"#{ref}" if ref else "")
        algorithm, _, hexa = attrs.get("checksum", "").partition(":")
        return {"uri": uri, "digest": {algorithm: hexa} if hexa else {}}
    return None


def materials(graph: BuildGraph | None, root: str | None) -> list[dict[str, Any]]:
    """The external artifacts the image at ``root`` was made from, each once."""
    if graph is None:
        return []
    found: list[dict[str, Any]] = []
    for vertex in _reachable(graph, root):
        item = _material(vertex)
        if item is not None and item not in found:
            found.append(item)
    return found


def _hermetic(graph: BuildGraph | None, root: str | None) -> bool:
    """Whether no step of the image could reach the network: each RUN had none."""
    vertices = _reachable(graph, root) if graph is not None else []
    return all(vertex.op.network == "none" for vertex in vertices
               if isinstance(vertex.op, ExecOp))


def _mounted(graph: BuildGraph | None, root: str | None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The secrets and ssh agents the image's RUNs mount (ids, never a value), each once:
    ``optional`` unless the mount requires it."""
    secrets: dict[str, bool] = {}
    agents: dict[str, bool] = {}
    for vertex in _reachable(graph, root) if graph is not None else ():
        for mount in vertex.op.mounts if isinstance(vertex.op, ExecOp) else ():
            if mount.secret_id:
                secrets[mount.secret_id] = secrets.get(mount.secret_id, True) and \
                    not mount.required
            if mount.ssh_id:
                agents[mount.ssh_id] = agents.get(mount.ssh_id, True) and not mount.required
    return ([{"id": k, "optional": v} for k, v in sorted(secrets.items())],
            [{"id": k, "optional": v} for k, v in sorted(agents.items())])


def _build_config(graph: BuildGraph, root: str | None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``buildConfig`` (the image's steps, ``stepN`` each, inputs as ``stepK:0``) and the
    steps' Dockerfile locations."""
    vertices = _reachable(graph, root)
    steps = {vertex.digest: f"step{number}" for number, vertex in enumerate(vertices)}
    lines = (json.loads(line) for line in graph.to_json_lines().splitlines())
    by_digest = {line["digest"]: line for line in lines if "digest" in line}
    definition = []
    for vertex in vertices:
        line = dict(by_digest[vertex.digest])
        inputs = line.pop("inputs")
        line.pop("name", None)
        line.pop("location", None)
        definition.append({"id": steps[vertex.digest], "digest": line.pop("digest"),
                           "op": line, "inputs": [f"{steps[i]}:0" for i in inputs]})
    locations = {steps[v.digest]: {"locations": [v.location]} for v in vertices if v.location}
    return {"llbDefinition": definition, "digestMapping": {
        vertex.digest: steps[vertex.digest] for vertex in vertices}}, locations


def provenance_predicate(facts: BuildFacts, graph: BuildGraph | None, root: str | None,
                         attrs: Mapping[str, str], finished: float) -> dict[str, Any]:
    """The SLSA v0.2 predicate of the image at ``root`` (see the module docstring)."""
    mode = attrs.get("mode", "min")
    args: dict[str, str] = {}
    if facts.target:
        args["target"] = facts.target
    if mode == "max":
        args |= {f"build-arg:{k}": v for k, v in sorted(facts.build_args.items())}
    parameters: dict[str, Any] = {
        "frontend": "dockerfile.v0", "args": args,
        "locals": [{"name": "context"}, {"name": "dockerfile"}]}
    if mode == "max":
        parameters["secrets"], parameters["ssh"] = _mounted(graph, root)
    metadata: dict[str, Any] = {
        "buildInvocationID": facts.invocation_id,
        "completeness": {"parameters": mode == "max", "environment": True,
                         "materials": False},
        "reproducible": attrs.get("reproducible") == "true",
        f"{BUILD_TYPE}#hermetic": _hermetic(graph, root),
    }
    if facts.started:
        metadata["buildStartedOn"] = _rfc3339(facts.started)
    metadata["buildFinishedOn"] = _rfc3339(finished)
    predicate: dict[str, Any] = {
        "builder": {"id": attrs.get("builder-id", "")},
        "buildType": BUILD_TYPE,
        "materials": materials(graph, root),
        "invocation": {"configSource": {"entryPoint": facts.filename},
                       "parameters": parameters,
                       "environment": {"platform": str(default_platform())}},
        "metadata": metadata,
    }
    if mode == "max" and graph is not None:
        config, locations = _build_config(graph, root)
        predicate["buildConfig"] = config
        metadata[f"{BUILD_TYPE}#metadata"] = {"source": {"locations": locations}}
    return predicate


def _rfc3339(seconds: float) -> str:
    return format_time(int(seconds))


def sbom_predicate(inventory: Inventory, image: ImageArtifacts, facts: BuildFacts,
                   finished: float) -> dict[str, Any]:
    name = facts.names[0] if facts.names else f"sha256-{image.manifest_digest[7:19]}"
    return spdx_document(inventory, name, _rfc3339(finished), image.manifest_digest)


# --- statements and where they go ----------------------------------------------------------


def statement(predicate_type: str, predicate: Mapping[str, Any],
              subjects: Sequence[tuple[str, str]]) -> bytes:
    """An in-toto v0.1 statement of ``predicate`` about ``subjects`` ((name, sha256
    digest) pairs)."""
    return canonical_json({
        "_type": STATEMENT_TYPE, "predicateType": predicate_type,
        "subject": [{"name": name, "digest": {"sha256": digest.removeprefix("sha256:")}}
                    for name, digest in subjects],
        "predicate": predicate})


def image_subjects(image: ImageArtifacts, names: Sequence[str]) -> list[tuple[str, str]]:
    """The subjects of an image's statements: its manifest, once per name."""
    if not names:
        return [("_", image.manifest_digest)]
    found = []
    for name in names:
        try:
            purl, _ = image_purl(name, image.platform)
        except DockyardError:
            purl = "_"
        found.append((purl, image.manifest_digest))
    return found


def attestation_manifest(image: ImageArtifacts, statements: Sequence[Statement],
                         names: Sequence[str]) -> AttestationArtifacts:
    """The attestation manifest of ``image`` holding ``statements`` (see the module
    docstring), with its index descriptor."""
    subjects = image_subjects(image, names)
    blobs = [(s.predicate_type, statement(s.predicate_type, s.predicate, subjects))
             for s in statements]
    layers = [Descriptor(IN_TOTO, sha256_digest(data), len(data),
                         annotations=((PREDICATE_ANNOTATION, kind),)) for kind, data in blobs]
    config = canonical_json({"architecture": "unknown", "os": "unknown", "config": {},
                             "rootfs": {"type": "layers",
                                        "diff_ids": [layer.digest for layer in layers]}})
    config_desc = Descriptor(OCI_CONFIG, sha256_digest(config), len(config))
    manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": config_desc.to_json(),
                               "layers": [layer.to_json() for layer in layers]})
    digest = sha256_digest(manifest)
    descriptor = Descriptor(OCI_MANIFEST, digest, len(manifest), UNKNOWN_PLATFORM,
                            ((REFERENCE_DIGEST, image.manifest_digest),
                             (REFERENCE_TYPE, ATTESTATION_MANIFEST)))
    return AttestationArtifacts(
        manifest=manifest, digest=digest, descriptor=descriptor, config=config,
        config_digest=config_desc.digest,
        blobs=tuple((layer.digest, data) for layer, (_, data) in zip(layers, blobs, strict=True)))


def local_files(statements: Sequence[Statement], inventory: Inventory,
                prefix: str = "") -> dict[str, bytes]:
    """A local or tar output's statement files (under ``prefix``, a platform's directory
    or ""), their subjects the output's regular files."""
    subjects = [(path.lstrip("/"), entry.sha256)
                for path, entry in sorted(inventory.files.items())]
    return {prefix + FILE_NAMES[s.predicate_type]:
            json.dumps(json.loads(statement(s.predicate_type, s.predicate, subjects)),
                       indent=2).encode() + b"\n" for s in statements}


#: The ``--metadata-file`` key of an image's provenance (``/<platform>`` appended when
#: the build made several images), as buildx writes it.
PROVENANCE_KEY: Final = "buildx.build.provenance"


def _min_form(predicate: Mapping[str, Any]) -> dict[str, Any]:
    """The predicate as buildx's default ``BUILDX_METADATA_PROVENANCE=min`` keeps it: no
    build definition, no source map."""
    kept = {key: value for key, value in predicate.items() if key != "buildConfig"}
    meta = dict(kept.get("metadata") or {})
    meta.pop(f"{BUILD_TYPE}#metadata", None)
    kept["metadata"] = meta
    return kept


def metadata_provenance(exported: ImageArtifacts | IndexArtifacts) -> dict[str, Any]:
    """The ``--metadata-file`` keys of the provenance attached to ``exported`` (none when
    it has no provenance)."""
    if not isinstance(exported, IndexArtifacts):
        return {}
    found: dict[str, Any] = {}
    platforms = {image.manifest_digest: image.platform for image in exported.images}
    for attestation in exported.attestations:
        subject = dict(attestation.descriptor.annotations).get(REFERENCE_DIGEST, "")
        for _, data in attestation.blobs:
            document = json.loads(data)
            if document.get("predicateType") == PROVENANCE_TYPE:
                key = PROVENANCE_KEY if len(exported.images) == 1 else \
                    f"{PROVENANCE_KEY}/{platforms.get(subject, UNKNOWN_PLATFORM)}"
                found[key] = _min_form(document["predicate"])
    return found



# --- one build's attestations --------------------------------------------------------------


@dataclass(frozen=True)
class Attested:
    """The index with the images and their attestation manifests, and the statement
    files of local and tar outputs (relative paths)."""

    exported: IndexArtifacts
    files: dict[str, bytes]


def attest_images(images: Sequence[ImageArtifacts], roots: Sequence[str | None],
                  attests: Sequence[AttestSpec], facts: BuildFacts,
                  graph: BuildGraph | None, source: BlobSource, *,
                  local: bool, annotations: Sequence[Annotation] = ()) -> Attested:
    """The ``attests`` of ``images`` (``roots``: their final vertices in ``graph``); the
    image files are scanned (from ``source``) for an SBOM, and for the statement files'
    subjects when ``local`` (the build has a local or tar output).  The index carries the
    build's ``annotations`` (``--annotation index:``...)."""
    if not facts.invocation_id:
        facts = dataclasses.replace(facts, invocation_id=uuid.uuid4().hex)
    finished = time.time()
    specs = {spec.type: spec for spec in attests}
    manifests: list[AttestationArtifacts] = []
    files: dict[str, bytes] = {}
    for image, root in zip(images, roots, strict=True):
        scan = "sbom" in specs or local
        inventory = scan_layers(image.layers, source) if scan else Inventory()
        statements = []
        if "provenance" in specs:
            statements.append(Statement(PROVENANCE_TYPE, provenance_predicate(
                facts, graph, root, dict(specs["provenance"].attrs), finished)))
        if "sbom" in specs:
            statements.append(Statement(SPDX_TYPE, sbom_predicate(inventory, image, facts,
                                                                  finished)))
        manifests.append(attestation_manifest(image, statements, facts.names))
        if local:
            prefix = f"{platform_dir(image.platform)}/" if len(images) > 1 else ""
            files |= local_files(statements, inventory, prefix)
    return Attested(build_index(images, manifests, annotations), files)
