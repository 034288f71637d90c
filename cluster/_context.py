"""The build context on the client: which ignore file applies, and which files are sent.

This is the client side of context transfer (it reads the user's filesystem); the
matching rules themselves are pure and live in ``dockyard.scheduler.dockerfile._dockerignore``,
and the walk (``ContextEntry``, ``walk_context``) in ``dockyard.workers._context_walk``, re-exported
here.

BuildKit's rule, kept here: the ignore file is ``<Dockerfile's directory>/<Dockerfile's
name>.dockerignore`` when it exists (``build/app.Dockerfile`` ->
``build/app.Dockerfile.dockerignore``), and then it replaces the context's
``.dockerignore``; otherwise ``<context>/.dockerignore``.
"""

from __future__ import annotations

from pathlib import Path

from dockyard.scheduler._errors import DockyardError
from dockyard.scheduler.dockerfile._dockerignore import PatternMatcher, parse_ignore_lines
from dockyard.workers._context_walk import ContextEntry, walk_context

__all__ = ["CONTEXT_HASHED_KEY", "ContextEntry", "default_dockerfile", "directory_ignore_patterns",
           "ignore_file_for", "load_ignore_patterns", "walk_context"]

#: The ``--metadata-file`` key of the context bytes read to digest its files: those whose
#: stat changed since the context's stat index was written (workers/_context_index.py).
CONTEXT_HASHED_KEY = "dockyard.context.bytes-hashed"
DOCKERIGNORE = ".dockerignore"
DEFAULT_DOCKERFILE = "Dockerfile"
#: BuildKit's dockerui falls back to this name when the default one is missing
#: (moby/moby#10858, testDockerfileLowercase).
LOWERCASE_DOCKERFILE = "dockerfile"


def default_dockerfile(context_dir: Path) -> Path:
    """The Dockerfile a build of ``context_dir`` reads when none is named: ``Dockerfile``,
    or ``dockerfile`` when only that one exists (BuildKit's fallback)."""
    default = context_dir / DEFAULT_DOCKERFILE
    lowercase = context_dir / LOWERCASE_DOCKERFILE
    if not default.exists() and lowercase.is_file():
        return lowercase
    return default


def ignore_file_for(context_dir: Path, dockerfile: Path) -> Path | None:
    """The ignore file that applies to a build of ``dockerfile`` with ``context_dir``.

    ``<dockerfile>.dockerignore`` next to the Dockerfile wins over the context's
    ``.dockerignore``; None when neither exists.
    """
    specific = dockerfile.with_name(dockerfile.name + DOCKERIGNORE)
    if specific.is_file():
        return specific
    shared = context_dir / DOCKERIGNORE
    return shared if shared.is_file() else None


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as error:
        raise DockyardError(f"cannot read {path}: {error.strerror or error}") from error


def load_ignore_patterns(context_dir: Path, dockerfile: Path
                         ) -> tuple[list[str], Path | None]:
    """The patterns of the ignore file that applies (see ``ignore_file_for``) and its path.

    The patterns are checked here, so a malformed one raises ``DockerfileError`` naming
    the ignore file, the line and the column.  No ignore file: ``([], None)``.
    """
    path = ignore_file_for(context_dir, dockerfile)
    if path is None:
        return [], None
    return _patterns_of(path), path


def directory_ignore_patterns(context_dir: Path) -> list[str]:
    """The patterns of ``context_dir``'s own ``.dockerignore`` (a named context's: no
    Dockerfile goes with it), checked as ``load_ignore_patterns`` checks them."""
    path = context_dir / DOCKERIGNORE
    return _patterns_of(path) if path.is_file() else []


def _patterns_of(path: Path) -> list[str]:
    lines = parse_ignore_lines(_read_text(path))
    PatternMatcher(lines, filename=str(path))
    return [entry.pattern for entry in lines]
