"""Imports point one way (docs STYLE.md, habit 13): no module of ``workers`` imports
``cluster``, except the worker actor's known, older ones (to be moved below)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import workers

WORKERS = Path(workers.__file__).parent
#: modules that still import cluster (debt, not to grow)
KNOWN = {"_actor.py"}


def _imports_cluster(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and
                 not node.level else [])
        if any(name == "cluster" or name.startswith("cluster.") for name in names):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", sorted(p for p in WORKERS.rglob("*.py")
                                        if p.name not in KNOWN), ids=lambda p: p.name)
def test_workers_do_not_import_cluster(path: Path) -> None:
    assert _imports_cluster(path) == []


def test_the_check_sees_an_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\ndef f():\n    from cluster._context import x\n")
    assert _imports_cluster(module) == [3]
