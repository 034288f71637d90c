"""Rewrite imports and module paths from the four top-level packages to ``dockyard.*``.

The folders scheduler/, workers/, cache_backends/ and cluster/ stay at the top of the
repository; the wheel installs them as ``dockyard.scheduler`` and so on (pyproject.toml's
package-dir).  This script is the mechanical part of that rename, idempotent, so it can be
run again over files written before it (``python devkit/namespace_rename.py [PATH...]``;
no argument: every file git tracks).  What it rewrites:

- ``from cluster._x import y``, ``from cluster import y``, ``import cluster._x as m``
  -> the same under ``dockyard.``; a bare ``import workers`` -> ``from dockyard import workers``
- a dotted path to a real module or subpackage anywhere (strings, docs, monkeypatch
  targets, ``importlib.import_module``): ``cluster._daemon`` -> ``dockyard.cluster._daemon``
- ``-m cluster`` and ``"-m", "cluster"`` -> ``-m dockyard`` (dockyard/__main__.py);
  ``-m cluster._daemon`` -> ``-m dockyard.cluster._daemon``
- the named loggers ``"cluster.daemon"``, ``"cluster.endpoint"``, ``"cluster.coordinator"``
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("scheduler", "workers", "cache_backends", "cluster")
LOGGERS = ("daemon", "endpoint", "coordinator")
SUFFIXES = {".py", ".md", ".txt", ".toml", ".yaml", ".yml", ".sh", ".cfg", ".ini", ".tpl",
            ".json", ".j2", ""}
SKIP = {"devkit/namespace_rename.py"}


def _children(package: str) -> set[str]:
    """The modules and subpackages directly inside a package folder, by name."""
    folder = REPO / package
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
    return names


def _rules() -> list[tuple[re.Pattern[str], str]]:
    pkgs = "|".join(PACKAGES)
    loggers = "|".join(LOGGERS)
    rules = [
        # import statements (the module path after them is left to the dotted-path rule)
        (re.compile(rf"^(\s*)from ({pkgs})(?=[\s.])", re.M), r"\1from dockyard.\2"),
        (re.compile(rf"^(\s*)import ({pkgs})\s*$", re.M), r"\1from dockyard import \2"),
        (re.compile(rf"^(\s*)import ({pkgs})(?=\.)", re.M), r"\1import dockyard.\2"),
        # python -m PACKAGE, in text and in argv lists
        # (``python -m dockyard`` is the CLI, as ``python -m cluster`` was)
        (re.compile(r"(?<![\w.])-m(\s+)cluster\b(?![./])"), r"-m\1dockyard"),
        (re.compile(r"""(["'])-m\1(\s*,\s*)(["'])cluster(?=["'])"""), r"\1-m\1\2\3dockyard"),
        (re.compile(rf"(?<![\w.])-m(\s+)({pkgs})(?=\.)"), r"-m\1dockyard.\2"),
        (re.compile(rf"""(["'])-m\1(\s*,\s*)(["'])({pkgs})(?=\.)"""), r"\1-m\1\2\3dockyard.\4"),
        # named loggers
        (re.compile(rf"(?<![\w./-])cluster\.({loggers})\b"),
         r"dockyard.cluster.\1"),
    ]
    for package in PACKAGES:
        children = "|".join(sorted(_children(package), key=len, reverse=True))
        rules.append((re.compile(rf"(?<![\w./-])({package})\.({children})(?!\w)"),
                      r"dockyard.\1.\2"))
    return rules


def rewrite(text: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def main(argv: list[str]) -> int:
    if argv:
        files = [Path(a).resolve() for a in argv]
    else:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                                capture_output=True).stdout.decode().split("\0")
        files = [REPO / name for name in listed if name and name not in SKIP]
    rules = _rules()
    changed = 0
    for path in files:
        if path.suffix not in SUFFIXES or path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        new = rewrite(text, rules)
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"{changed} files rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
