"""Imports point one way (docs STYLE.md, habit 13): no module of ``workers`` imports
``cluster``; no module of ``scheduler`` imports ``workers`` or ``cluster``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dockyard import workers

WORKERS = Path(workers.__file__).parent
SCHEDULER = WORKERS.parent / "scheduler"


def _imports_cluster(path: Path, packages: tuple[str, ...] = ("dockyard.cluster",)) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and
                 not node.level else [])
        if isinstance(node, ast.ImportFrom) and node.module == "dockyard" and not node.level:
            names += [f"dockyard.{alias.name}" for alias in node.names]
        if any(name == package or name.startswith(package + ".")
               for name in names for package in packages):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", sorted(WORKERS.rglob("*.py")), ids=lambda p: p.name)
def test_workers_do_not_import_cluster(path: Path) -> None:
    assert _imports_cluster(path) == []


@pytest.mark.parametrize("path", sorted(SCHEDULER.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(SCHEDULER)))
def test_scheduler_imports_neither_workers_nor_cluster(path: Path) -> None:
    assert _imports_cluster(path, ("dockyard.cluster", "dockyard.workers")) == []


def test_the_check_sees_an_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\ndef f():\n    from dockyard.cluster._context import x\n"
                      "from dockyard import cluster\nimport cluster\n")
    assert sorted(_imports_cluster(module)) == [3, 4]
