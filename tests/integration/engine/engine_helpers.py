"""Helpers of the end-to-end engine tests: an event recorder, and running an exported
image's command under runc."""

from __future__ import annotations

import asyncio
import json
import tarfile
from pathlib import Path
from typing import Any

from dockyard.workers._executor import Executor
from dockyard.workers._spec import ProcessSpec


def oci_config(image_tar: Path) -> dict[str, Any]:
    """The image config of the single-platform OCI layout tar ``image_tar``."""
    with tarfile.open(image_tar) as tar:
        def load(name: str) -> Any:
            member = tar.extractfile(name)
            assert member is not None
            return json.loads(member.read())
        index = load("index.json")
        manifest = load("blobs/sha256/" + index["manifests"][0]["digest"][7:])
        config: dict[str, Any] = load("blobs/sha256/" + manifest["config"]["digest"][7:])
        return config


def layer_bytes(image_tar: Path) -> list[bytes]:
    """Every blob of an OCI layout tar, as stored."""
    with tarfile.open(image_tar) as tar:
        blobs = []
        for member in tar.getmembers():
            if member.name.startswith("blobs/sha256/") and member.isfile():
                stream = tar.extractfile(member)
                assert stream is not None
                blobs.append(stream.read())
        return blobs


def run_image(rootfs: Path, config: dict[str, Any], state: Path) -> tuple[int, str]:
    """Run the image's Cmd (with its Env, User, WorkingDir) over ``rootfs`` under runc."""
    settings = config["config"]
    process = ProcessSpec(args=tuple(settings.get("Entrypoint") or ())
                          + tuple(settings.get("Cmd") or ()),
                          env=tuple(settings.get("Env") or ()),
                          cwd=settings.get("WorkingDir") or "/",
                          user=settings.get("User") or "")
    out: list[bytes] = []
    code = asyncio.run(Executor(state).run(process, rootfs, stdout=out.append,
                                           stderr=out.append))
    return code, b"".join(out).decode()
