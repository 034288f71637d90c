"""The dockyard side: ``cluster/_local_build.py``'s ``build_local`` in this process, with
its own ``DOCKYARD_ROOT`` per case (so cache mounts and records start empty, as on the
BuildKit side), the base image from the loopback registry, and a ``docker`` output read
back by :func:`conf_tree.read_archive` exactly as BuildKit's ``docker save``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conf_compare import Built, Failed, Result
from conf_corpus import Case, dockyard_dockerfile, materialise
from conf_tree import read_archive

from dockyard.cluster._local_build import LocalBuildOptions, Output, build_local
from dockyard.scheduler._errors import DockyardError
from dockyard.scheduler._platform import parse_platform


def build(case: Case, scratch: Path, base_reference: str) -> Result:
    """The case's result (its second build for a ``rebuild`` case)."""
    context = materialise(case, scratch / "context")
    dockerfile = dockyard_dockerfile(case.dockerfile, base_reference).encode()
    result = _build_once(case, dockerfile, context, scratch, case.build_args)
    if case.rebuild_args is not None and isinstance(result, Built):
        result = _build_once(case, dockerfile, context, scratch, case.rebuild_args)
    return result


def _build_once(case: Case, dockerfile: bytes, context: Path, scratch: Path,
                build_args: dict[str, str]) -> Result:
    archive = scratch / "image.tar"
    options = LocalBuildOptions(
        root=scratch / "root", platforms=(parse_platform(case.platform),),
        target=case.target, build_args=build_args,
        secrets={key: value.encode() for key, value in case.secrets.items()},
        outputs=(Output("docker", archive),))
    try:
        asyncio.run(build_local(dockerfile, context, options))
    except DockyardError as exc:
        return Failed(str(exc))
    tree, config = read_archive(archive)
    archive.unlink()
    return Built(tree, config)
