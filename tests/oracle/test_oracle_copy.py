"""COPY path semantics as BuildKit 20.10 applies them, recorded for the executor's tests.

A small table (10 rows) of ``FROM scratch`` builds, nothing run: a directory's contents
vs the directory, a trailing-slash destination, an existing directory as destination,
wildcards, several sources, destinations relative to WORKDIR, ``--from`` a stage, modes
with ``--chmod``/``--chown``, symlinks.  Each folder of ``copy_cases/`` is one row:

- ``Dockerfile``: the input;
- ``context``: the build context, one entry a line as :func:`_buildkit.write_tree` reads
  it (``path``, ``dir/``, ``path 0755``, ``link -> target``), plus the Dockerfile;
- ``buildkit.txt``: the image's filesystem BuildKit made, from its saved layers, one line
  an entry as :func:`_buildkit.tree_listing` writes it (``<d|f|l> <mode> <uid>:<gid>
  <path>[ -> <target>]``).

Until the executor exists, ``test_buildkit_agrees`` (marker ``oracle``) only re-checks
BuildKit against the recording; the executor's tests are meant to build the same rows and
compare their tree with ``buildkit.txt``.  To record a new row:
``python tests/oracle/test_oracle_copy.py [case ...]``; read the diff before committing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _buildkit import PrivateDockerd, make_oracle_root, write_tree

CASES = Path(__file__).parent / "copy_cases"


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "Dockerfile").is_file())


def context_spec(name: str) -> list[str]:
    return (CASES / name / "context").read_text().splitlines()


def recorded(name: str) -> list[str]:
    return (CASES / name / "buildkit.txt").read_text().splitlines()


def buildkit_tree(daemon: PrivateDockerd, name: str) -> list[str]:
    """The filesystem BuildKit builds for the row (its error as the only line if none)."""
    context = daemon.new_context_dir()
    write_tree(context, context_spec(name))
    (context / "Dockerfile").write_bytes((CASES / name / "Dockerfile").read_bytes())
    result = daemon.build_dir(context)
    if not result.ok:
        return [f"error: {result.error_text.splitlines()[-1:]}"]
    return daemon.image_tree(str(result.image["Id"]))


@pytest.mark.oracle
@pytest.mark.parametrize("name", case_names())
def test_buildkit_agrees(buildkit: PrivateDockerd, name: str) -> None:
    assert buildkit_tree(buildkit, name) == recorded(name)


def test_table() -> None:
    names = case_names()
    assert 8 <= len(names) <= 15, "keep the table small (see the module docstring)"
    for name in names:
        listing = recorded(name)
        assert listing and not listing[0].startswith("error"), name
        assert all(line.split(" ")[0] in ("d", "f", "l") for line in listing), name


def _record(names: list[str]) -> None:
    daemon = PrivateDockerd(make_oracle_root())
    daemon.start()
    try:
        for name in names or case_names():
            listing = buildkit_tree(daemon, name)
            (CASES / name / "buildkit.txt").write_text("".join(f"{x}\n" for x in listing))
            print(name, len(listing), "entries")
    finally:
        daemon.stop()


if __name__ == "__main__":
    _record(sys.argv[1:])
