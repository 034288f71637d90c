"""pyproject.toml's package list and package-dir against the folders: every package of the
four top-level folders is installed under ``dockyard.``, and the source tree's ``dockyard/``
symlinks lead to the same folders the wheel maps."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("scheduler", "workers", "cache_backends", "cluster")


def _setuptools() -> dict[str, object]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return dict(config["tool"]["setuptools"])


def test_every_package_folder_is_listed_under_dockyard() -> None:
    found = {"dockyard"}
    for folder in FOLDERS:
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO).parts
            found.add(".".join(("dockyard", *parts)))
    assert set(_setuptools()["packages"]) == found  # type: ignore[arg-type]


def test_package_dir_maps_each_folder_and_the_symlinks_agree() -> None:
    mapping = _setuptools()["package-dir"]
    assert mapping == {"dockyard": "dockyard",
                       **{f"dockyard.{folder}": folder for folder in FOLDERS}}
    for folder in FOLDERS:
        link = REPO / "dockyard" / folder
        assert link.is_symlink() and link.resolve() == (REPO / folder).resolve()


def test_no_module_imports_a_top_level_folder_by_its_old_name() -> None:
    """``import scheduler`` would find PyPI's package of that name next to a wheel."""
    offenders = []
    paths = [path for top in (*FOLDERS, "tests", "benchmarks", "devkit", "examples", "helm")
             for path in (REPO / top).rglob("*.py")]
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split()
            if (len(words) >= 2 and words[0] in ("import", "from")
                    and words[1].split(".")[0] in FOLDERS):
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert offenders == []
