"""examples/ builds with BuildKit: the project's example is a real, working Dockerfile.

The base image is a busybox image made on the private dockerd from the host's static busybox
and tagged ``busybox:stable`` (the example's default), so nothing is pulled.  Only
linux/amd64 here: the image store of Docker 20.10 holds one platform per tag.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _buildkit import PrivateDockerd, context_from_dir

EXAMPLE = Path(__file__).resolve().parents[2] / "examples"

EXPECTED_CONFIG = [
    ("Env", ["PATH=/bin", "GREETING=hello from dockyard"]),
    ("WorkingDir", "/app"),
    ("Cmd", ["/app/greet"]),
    ("Entrypoint", None),
]


@pytest.fixture(scope="module")
def example_image(buildkit: PrivateDockerd) -> dict[str, object]:
    buildkit.tag_busybox("busybox:stable")
    files = context_from_dir(EXAMPLE)
    result = buildkit.build(files.pop("Dockerfile").decode(), files, platform="linux/amd64")
    assert result.ok, result.error_text
    return result.image


@pytest.mark.oracle
@pytest.mark.parametrize(("key", "expected"), EXPECTED_CONFIG, ids=[k for k, _ in EXPECTED_CONFIG])
def test_example_config(example_image: dict[str, dict[str, object]], key: str,
                        expected: object) -> None:
    assert example_image["Config"][key] == expected


@pytest.mark.oracle
def test_example_runs(buildkit: PrivateDockerd, example_image: dict[str, object]) -> None:
    done = buildkit.docker("run", "--rm", "--network=none", str(example_image["Id"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from dockyard (greet 1.0.0, built for amd64, running on x86_64)\n"
