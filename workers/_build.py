"""The worker's share of a build, as plain steps: the options it executes and exports
with, its session, its record cache (local store plus ``--cache-from``/``--cache-to``),
and writing the results to the outputs.  ``dockyard.cluster._local_build`` composes these with the
frontend and the solver into a whole build in one process; the worker actor runs them
for the coordinator.

- ``prepared``: the outputs checked and ``SOURCE_DATE_EPOCH`` (given as a build arg)
  applied as the epoch that clamps every timestamp.
- ``write_results``: ``oci``, ``docker``, ``tar`` (files or a binary stream) and
  ``local`` (a directory), as buildx's ``--output type=...``; ``image`` outputs pushed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dockyard.cache_backends._cache_config import inline_value
from dockyard.cache_backends._credentials import S3Credentials
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor
from dockyard.scheduler._build_request import (
    DEFAULT_COMPRESSION,
    Annotation,
    AttestSpec,
    CacheSpec,
    Compression,
)
from dockyard.scheduler._errors import ExportError, UsageError
from dockyard.scheduler._graph import BuildGraph, ImageResult, Ulimit
from dockyard.scheduler._platform import Platform
from dockyard.scheduler._progress import EventSink

from ._arrivals import ArrivingBlobs
from ._attest import BuildFacts, attest_images
from ._exporters import export_docker, export_local, export_oci, export_tar, push_image
from ._image import ImageArtifacts, IndexArtifacts, build_image, build_index, check_single
from ._registry import RegistryConfig
from ._remote_cache import RemoteCache, RemoteRecords, open_backend
from ._runtime import BuildSession, WorkerRuntime
from ._secrets import DictSecrets

__all__ = [
    "DEFAULT_FORM", "LOCAL_AS_TAR", "Exported", "ImageForm", "LocalBuildOptions", "Output",
    "build_session", "exported_images", "prepared", "remote_records", "write_results",
]

Exported = ImageArtifacts | IndexArtifacts
#: A ``local`` output written as a tar of its files, for a client to unpack (the worker
#: does not share the client's disk).
LOCAL_AS_TAR = "local-tar"
_OUTPUT_TYPES = ("oci", "docker", "tar", "local", LOCAL_AS_TAR, "image")


@dataclass(frozen=True)
class ImageForm:
    """How an output's image is made of the build's layers (buildx's exporter attributes):
    their ``compression``, OCI media types or Docker's (``oci``), and ``rewrite_timestamp``
    (the layers not the base image's with their times clamped to the epoch)."""

    compression: Compression = DEFAULT_COMPRESSION
    oci: bool = True
    rewrite_timestamp: bool = False


DEFAULT_FORM = ImageForm()


@dataclass(frozen=True)
class Output:
    """One ``--output``: ``type`` oci, docker, tar or local with ``dest`` a path; or
    ``image`` with ``name`` (a reference), pushed to its registry when ``push`` (without a
    tag when ``by_digest``).  ``names``: the names an oci or docker output gives the image
    (None: the build's ``names``); ``form``: how its image is made; ``platform_split``:
    local and tar outputs, one directory per platform (None: when there are several)."""

    type: str
    dest: Path | None = None
    name: str = ""
    push: bool = False
    names: tuple[str, ...] | None = None
    form: ImageForm = DEFAULT_FORM
    platform_split: bool | None = None
    by_digest: bool = False


@dataclass(frozen=True)
class LocalBuildOptions:
    """What ``dockyard build`` was asked (buildx's flags); ``root`` is ``DOCKYARD_ROOT``."""

    root: Path
    filename: str = "Dockerfile"
    platforms: tuple[Platform, ...] = ()
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    ignore_patterns: Sequence[str] | None = None
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    ssh: Mapping[str, Path] = field(default_factory=dict)
    outputs: tuple[Output, ...] = ()
    names: tuple[str, ...] = ()
    no_cache: bool = False
    epoch: int | None = None
    registry: RegistryConfig | None = None
    insecure_registries: tuple[str, ...] = ()
    events: EventSink | None = None
    cache_to: tuple[CacheSpec, ...] = ()
    cache_from: tuple[CacheSpec, ...] = ()
    allow: tuple[str, ...] = ()  # entitlements granted (--allow)
    ulimits: tuple[Ulimit, ...] = ()  # every RUN's resource limits (--ulimit)
    shm_size: int = 0  # every RUN's /dev/shm in bytes (--shm-size; 0: the default)
    network: str = "default"  # a RUN's network when it names none (--network)
    extra_hosts: tuple[tuple[str, str], ...] = ()  # every RUN's /etc/hosts entries (--add-host)
    cgroup_parent: str = ""  # every RUN's cgroup parent (--cgroup-parent)
    no_cache_filter: tuple[str, ...] = ()  # stages whose steps skip the cache
    pull: bool = False  # base images resolved again (--pull)
    attests: tuple[AttestSpec, ...] = ()  # the attestations to attach (--attest)
    started: float = 0.0  # when the build started (unix seconds; 0: unknown)
    labels: tuple[tuple[str, str], ...] = ()  # the images' labels (--label)
    annotations: tuple[Annotation, ...] = ()  # --annotation: (type, platform, key, value)


def prepared(options: LocalBuildOptions) -> LocalBuildOptions:
    """``options`` checked (outputs) and with ``SOURCE_DATE_EPOCH`` applied."""
    _check_outputs(options.outputs)
    return _with_epoch(options)


def build_session(context_dir: Path, options: LocalBuildOptions) -> BuildSession:
    """The worker's session of one build: its context, secrets, ssh sockets and epoch."""
    return BuildSession(contexts={"context": context_dir},
                        secrets=DictSecrets(options.secrets),
                        ssh=options.ssh, epoch=options.epoch,
                        insecure_registries=frozenset(options.insecure_registries),
                        pull=options.pull)


def remote_records(engine: WorkerRuntime, options: LocalBuildOptions,
                   credentials: S3Credentials | None = None) -> RemoteRecords:
    """The build's records: the local store, and its ``--cache-from``/``--cache-to``
    (S3 ones with the client's ``credentials`` when it gave some; an inline cache is no
    backend: ``write_results`` puts it in the image)."""
    registry = engine.registry_for(options.insecure_registries)

    def remote(spec: CacheSpec) -> RemoteCache:
        attrs = dict(spec.attrs)
        return RemoteCache(open_backend(spec.type, attrs, engine.tmp, credentials, registry),
                           spec.mode, spec.ignore_error,
                           Compression(attrs["compression"]) if "compression" in attrs
                           else None)
    return RemoteRecords(engine, imports=[remote(spec) for spec in options.cache_from],
                         exports=[remote(spec) for spec in options.cache_to
                                  if spec.type != "inline"],
                         events=options.events)


async def write_results(engine: WorkerRuntime, results: Sequence[ImageResult],
                        records: Mapping[str, CacheRecord], options: LocalBuildOptions,
                        streams: Mapping[Path, BinaryIO] | None = None,
                        pushed: bool = False, form: ImageForm | None = None,
                        graph: BuildGraph | None = None,
                        cache: RemoteRecords | None = None) -> Exported:
    """The images of ``results`` (their roots' ``records``) written to every output; an
    output whose ``dest`` is in ``streams`` is written to that stream instead (the
    session channel to the client, workers/_output_send.py).  Each output's image is made
    in its own ``form``; the one returned is in ``form`` (None: the first output's).  The
    images name their layers compressed (``WorkerRuntime.compressed``) when there is an
    output, or when the caller will ``pushed`` them; else they are only described,
    nothing compressed.  ``options.attests`` are attached to each form's images
    (workers/_attest.py; ``graph`` names the images' materials): in the index for image,
    oci and docker outputs, as files for local and tar ones.  ``--cache-to type=inline``:
    each image's config carries the records of its layer chain (its root's, and those
    ``cache``, the build's records, knows whose layers are a prefix of the image's)."""
    if not options.outputs and not pushed:
        images = [_image(result, records, options.epoch, annotations=options.annotations)
                  for result in results]
        return images[0] if len(images) == 1 else build_index(
            images, annotations=options.annotations)
    forms = await _form_images(engine, results, records, options.epoch, [
        form or (options.outputs[0].form if options.outputs else DEFAULT_FORM),
        *(output.form for output in options.outputs)], options.annotations,
        cache if any(spec.type == "inline" for spec in options.cache_to) else None)
    made = {key: _exported(images, options) for key, images in forms.items()}
    exported = next(iter(made.values()))
    if not options.outputs and not options.attests:
        return exported
    # the blobs a remote cache holds come down while the file outputs are written
    fetches = engine.start_fetches(layer for result in results if result.root is not None
                                   for layer in records[result.root].result.layers)
    try:
        files: dict[ImageForm, dict[str, bytes]] = {}
        if options.attests:  # each form's images get their own statements (their subjects)
            facts = dataclasses.replace(_facts(options), invocation_id=uuid.uuid4().hex)
            for key, images in forms.items():
                attested = await asyncio.to_thread(
                    attest_images, images, [r.root for r in results], options.attests,
                    facts, graph, ArrivingBlobs(engine.blob_source(), fetches),
                    local=any(o.type in _FILE_TREES for o in options.outputs),
                    annotations=options.annotations)
                made[key], files[key] = attested.exported, attested.files
            exported = next(iter(made.values()))
        for output in options.outputs:
            if output.type == "image":
                await engine.settle(fetches)  # a push names every blob up front
                await _push(engine, made[output.form], output, options)
            else:
                source = ArrivingBlobs(engine.blob_source(), fetches)
                stream = (streams or {}).get(output.dest) if output.dest else None
                await asyncio.to_thread(_export, engine, source, made[output.form], output,
                                        options, stream, files.get(output.form, {}))
    except asyncio.CancelledError:
        for fetch in fetches.values():
            fetch.cancel()
        raise
    except Exception:
        await engine.settle(fetches)  # every lost blob in one BlobLost, as ensure_blobs
        raise
    await engine.settle(fetches)
    return exported


#: Outputs of the image's files: attestations go beside them as files.
_FILE_TREES = ("local", "tar", LOCAL_AS_TAR)


def _facts(options: LocalBuildOptions) -> BuildFacts:
    return BuildFacts(filename=options.filename, target=options.target,
                      build_args=dict(options.build_args), names=tuple(options.names),
                      started=options.started)


async def exported_images(engine: WorkerRuntime, results: Sequence[ImageResult],
                          records: Mapping[str, CacheRecord], epoch: int | None,
                          forms: Sequence[ImageForm], annotations: Sequence[Annotation] = ()
                          ) -> dict[ImageForm, Exported]:
    """The image (or index) of ``results`` in each of ``forms`` (once each, in order):
    its layers rewritten and compressed as the form says (made once and kept,
    ``WorkerRuntime.compressed``/``rewritten``)."""
    return {form: images[0] if len(images) == 1 else build_index(images,
                                                                  annotations=annotations)
            for form, images in (await _form_images(engine, results, records, epoch,
                                                    forms, annotations)).items()}


async def _form_images(engine: WorkerRuntime, results: Sequence[ImageResult],
                       records: Mapping[str, CacheRecord], epoch: int | None,
                       forms: Sequence[ImageForm], annotations: Sequence[Annotation] = (),
                       inline: RemoteRecords | None = None
                       ) -> dict[ImageForm, list[ImageArtifacts]]:
    """The images of ``results`` in each of ``forms`` (once each, in order); with
    ``inline`` (the build's records, for ``--cache-to type=inline``) each config carries
    its inline cache."""
    made: dict[ImageForm, list[ImageArtifacts]] = {}
    for form in forms:
        if form in made:
            continue
        images = []
        for result in results:
            layers = await _form_layers(engine, result, records, epoch, form)
            value = (await _inline_cache(engine, result, records, layers, inline)
                     if inline is not None else None)
            images.append(_image(result, records, epoch, layers, oci=form.oci,
                                 annotations=annotations, inline_cache=value))
        made[form] = images
    return made


async def _form_layers(engine: WorkerRuntime, result: ImageResult,
                       records: Mapping[str, CacheRecord], epoch: int | None,
                       form: ImageForm) -> tuple[LayerDescriptor, ...]:
    layers = _layers(result, records)
    if form.rewrite_timestamp and epoch is not None and layers:
        base = _base_diff_ids(records[str(result.root)].result.image_config)
        layers = await _rewritten(engine, layers, base, epoch)
    compression = None if form.compression == DEFAULT_COMPRESSION else form.compression
    return await engine.compressed(layers, compression)


async def _rewritten(engine: WorkerRuntime, layers: Sequence[LayerDescriptor],
                     base: Sequence[str], epoch: int) -> tuple[LayerDescriptor, ...]:
    """``layers`` with times clamped to ``epoch``, but for those the base image shares
    (the leading layers with the base's diff_ids, as BuildKit leaves them: a pull of the
    image still shares them with the base)."""
    shared = 0
    while shared < min(len(layers), len(base)) and layers[shared].diff_id == base[shared]:
        shared += 1
    return (*layers[:shared], *[await engine.rewritten(layer, epoch)
                                for layer in layers[shared:]])


def _base_diff_ids(config: bytes | None) -> list[str]:
    """The ``rootfs.diff_ids`` of a base image's config (none for scratch or unreadable)."""
    try:
        value = json.loads(config) if config else {}
        ids = value.get("rootfs", {}).get("diff_ids", [])
    except (ValueError, AttributeError):
        return []
    return [str(i) for i in ids] if isinstance(ids, list) else []


def _with_epoch(options: LocalBuildOptions) -> LocalBuildOptions:
    """``SOURCE_DATE_EPOCH`` given as a build arg clamps timestamps like ``epoch``."""
    text = options.build_args.get("SOURCE_DATE_EPOCH")
    if options.epoch is not None or not text:
        return options
    try:
        epoch = int(text)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {text!r}",
                         hint="use --build-arg SOURCE_DATE_EPOCH=$(date +%s)") from None
    return dataclasses.replace(options, epoch=epoch)


def _layers(result: ImageResult, records: Mapping[str, CacheRecord]
            ) -> tuple[LayerDescriptor, ...]:
    return () if result.root is None else records[result.root].result.layers


def _image(result: ImageResult, records: Mapping[str, CacheRecord], epoch: int | None,
           layers: Sequence[LayerDescriptor] | None = None, *, oci: bool = True,
           annotations: Sequence[Annotation] = (), inline_cache: str | None = None
           ) -> ImageArtifacts:
    """The image of ``result``: its record's layers, or ``layers`` (the same, compressed);
    Docker's media types unless ``oci``; the build's ``annotations`` on its manifest;
    ``inline_cache`` in its config."""
    if result.root is None:
        return build_image(None, result.config, (), result.platform, created=epoch or 0,
                           epoch=epoch, oci=oci, annotations=annotations,
                           inline_cache=inline_cache)
    record = records[result.root]
    chosen = record.result.layers if layers is None else tuple(layers)
    return build_image(record.result.image_config, result.config, chosen,
                       result.platform, created=record.created, epoch=epoch, oci=oci,
                       annotations=annotations, inline_cache=inline_cache)


def _exported(images: Sequence[ImageArtifacts], options: LocalBuildOptions) -> Exported:
    """One image as it is (refusing index annotations: nothing could hold them, unless
    attestations will put it in an index), several in an index (with the build's
    annotations)."""
    if len(images) == 1:
        if not options.attests:
            check_single(options.annotations)
        return images[0]
    return build_index(images, annotations=options.annotations)


async def _inline_cache(engine: WorkerRuntime, result: ImageResult,
                        records: Mapping[str, CacheRecord],
                        layers: Sequence[LayerDescriptor], cache: RemoteRecords
                        ) -> str | None:
    """The ``moby.buildkit.cache.v0`` value of ``result``'s image (its ``layers``, as
    compressed): the records whose layer chain is a prefix of the image's, their layers
    named as the image names them (so a reader fetches them from the image)."""
    if result.root is None:
        return None
    chosen = []
    for record in await cache.chain_of(records[result.root]):
        own = layers[:len(record.result.layers)]
        if tuple(await engine.compressed(record.result.layers)) == tuple(own):
            chosen.append(dataclasses.replace(record, result=dataclasses.replace(
                record.result, layers=tuple(own))))
    return inline_value(chosen, layers)


def _check_outputs(outputs: Sequence[Output]) -> None:
    for output in outputs:
        if output.type not in _OUTPUT_TYPES:
            raise UsageError(f"unknown output type {output.type!r}",
                             hint=f"use one of {', '.join(_OUTPUT_TYPES)}")
        if output.type == "image" and not output.name:
            raise UsageError("an image output needs a name",
                             hint="use --output type=image,name=REF,push=true")
        if output.type != "image" and output.dest is None:
            raise UsageError(f"a {output.type} output needs a destination",
                             hint=f"use --output type={output.type},dest=PATH")


async def _push(engine: WorkerRuntime, exported: Exported, output: Output,
                options: LocalBuildOptions) -> None:
    """An image output: pushed when asked (there is no local image store to load into)."""
    if output.push:
        registry = engine.registry_for(options.insecure_registries)
        await push_image(exported, engine.blob_source(), registry, output.name,
                         scratch=engine.tmp, by_digest=output.by_digest)


def _export(engine: WorkerRuntime, source: ArrivingBlobs, exported: Exported, output: Output,
            options: LocalBuildOptions, stream: BinaryIO | None = None,
            files: Mapping[str, bytes] | None = None) -> None:
    """``output`` written (to ``stream`` instead of its file when given); ``files`` go
    beside the image's files of a local or tar output."""
    if output.dest is None:  # checked before the build
        raise ExportError(f"a {output.type} output needs a destination")
    dest: Path | BinaryIO = output.dest if stream is None else stream
    names = options.names if output.names is None else output.names
    split = output.platform_split
    if output.type == "oci":
        export_oci(exported, source, dest, names=names, epoch=options.epoch)
    elif output.type == "docker":
        export_docker(exported, source, dest, names=names, epoch=options.epoch)
    elif output.type == "tar":
        export_tar(exported, source, dest, epoch=options.epoch, scratch=engine.tmp,
                   split=split, files=files)
    elif output.type == "local":
        export_local(exported, source, output.dest, split=split, scratch=engine.tmp,
                     files=files)
    elif output.type == LOCAL_AS_TAR:  # a local output handed to a client: times as they are
        export_tar(exported, source, dest, epoch=None, scratch=engine.tmp, split=split,
                   files=files)
    else:  # checked before the build
        raise ExportError(f"unknown output type {output.type!r}")
