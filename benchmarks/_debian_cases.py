"""Issue 10's real Dockerfiles on a real distribution: typical images on Debian bookworm.

Both tools build each case from the same Debian base (benchmarks/_debian_base.py: a
debootstrap minbase with this host's mirror settings, in the bench's loopback registry),
``apt-get`` and ``pip`` in its RUNs reaching the real mirrors; timed as the scale cases are
(benchmarks/_scale_cases.py: cold ``--no-cache``, warm, after a one-line change):

- ``debian-c``: ``apt-get install gcc libc6-dev make``, ``COPY . /src``, ``make -C /src``
  of a one-file C program; the edit is the ``printf`` line of ``hello.c``.
- ``debian-py``: ``apt-get install python3-venv``, a venv, ``pip install -r
  requirements.txt`` (a cache mount on pip's cache) of a few small pure-Python packages,
  ``COPY app.py``, a ``RUN`` of it; the edit is ``app.py``'s ``VERSION`` line.
- ``debian-multistage``: ``debian-c``'s build as a stage, then a slim stage on the same
  base with ``COPY --from=build /src/hello``; the same edit.

After the timed rounds each tool exports its last image (BuildKit: ``docker save``;
dockyard: ``--output type=docker``) and the two root filesystems are compared with the
conformance suite's reader and diff (tests/conformance/conf_tree.py, conf_compare.py).
Each figure's plain progress gives the step times that explain it (:func:`step_times`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conf_compare import tree_diff
from conf_tree import read_archive

from benchmarks._scale_cases import ScaleCase, ScaleResult
from benchmarks._stats import Row, ratio

__all__ = ["DEBIAN_CASES", "RootfsDiff", "Step", "c_dockerfile", "multistage_dockerfile",
           "py_dockerfile", "rootfs_diff", "rootfs_row", "step_table", "step_times"]

APT_C = "apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make"
APT_PY = "apt-get update && apt-get install -y --no-install-recommends python3-venv"
REQUIREMENTS = ("six==1.16.0", "idna==3.7", "attrs==23.2.0", "packaging==24.1",
                "tomli==2.0.1")
MAKEFILE = "CC = gcc\nCFLAGS = -O2 -Wall\n\nhello: hello.c\n\t$(CC) $(CFLAGS) -o $@ $<\n"


def hello_c(version: str) -> str:
    return ("#include <stdio.h>\n\nint main(void) {\n"
            f'    printf("hello from the benchmark, version %s\\n", "{version}");\n'
            "    return 0;\n}\n")


def app_py(version: str) -> str:
    return ('"""The debian-py case\'s app: imports its requirements, prints one line."""\n'
            "import attrs\nimport idna\nimport packaging.version\nimport six\nimport tomli\n\n"
            f'VERSION = "{version}"\n\n\n'
            "def main() -> None:\n"
            '    print(f"app {VERSION}:", attrs.__version__, idna.__version__,\n'
            '          packaging.version.Version("1.0"), six.__version__, tomli.__name__)\n\n\n'
            'if __name__ == "__main__":\n    main()\n')


def c_dockerfile(base: str) -> str:
    return f"FROM {base}\nRUN {APT_C}\nCOPY . /src\nRUN make -C /src\n"


def multistage_dockerfile(base: str) -> str:
    return (f"FROM {base} AS build\nRUN {APT_C}\nCOPY . /src\nRUN make -C /src\n\n"
            f"FROM {base}\nCOPY --from=build /src/hello /usr/local/bin/hello\n"
            'CMD ["hello"]\n')


def py_dockerfile(base: str) -> str:
    return (f"FROM {base}\nRUN {APT_PY}\nRUN python3 -m venv /venv\n"
            "ENV PATH=/venv/bin:$PATH\nWORKDIR /app\nCOPY requirements.txt .\n"
            "RUN --mount=type=cache,target=/root/.cache/pip pip install -r requirements.txt\n"
            'COPY app.py .\nRUN python app.py\nCMD ["python", "app.py"]\n')


def _case(dockerfile: Callable[[str], str], fixed: dict[str, str], edited: str,
          source: Callable[[str], str]) -> Callable[[Path, str], Callable[[str], None]]:
    def setup(context: Path, base: str) -> Callable[[str], None]:
        context.mkdir(parents=True, exist_ok=True)
        for name, text in {"Dockerfile": dockerfile(base), **fixed}.items():
            (context / name).write_text(text)

        def edit(version: str) -> None:
            (context / edited).write_text(source(version))

        edit("0")
        return edit
    return setup


_C_FILES = {"Makefile": MAKEFILE}
_ALL = frozenset({"cold", "warm", "edit"})
DEBIAN_CASES: dict[str, ScaleCase] = {
    "debian-c": ScaleCase("Debian: apt-get gcc, COPY, make",
                          _case(c_dockerfile, _C_FILES, "hello.c", hello_c), _ALL),
    "debian-py": ScaleCase("Debian: apt-get python3-venv, pip install (cache mount), COPY",
                           _case(py_dockerfile,
                                 {"requirements.txt": "\n".join(REQUIREMENTS) + "\n"},
                                 "app.py", app_py), _ALL),
    "debian-multistage": ScaleCase("Debian: the C build stage, a slim stage COPY --from",
                                   _case(multistage_dockerfile, _C_FILES, "hello.c",
                                         hello_c), _ALL),
}

# --- step times -------------------------------------------------------------------------

_DONE = re.compile(r"^(DONE|CACHED)(?: (\d+(?:\.\d+)?)s)?$")
_OUTPUT = re.compile(r"^(\d+\.\d+) ")  # an output line: seconds since the step started


@dataclass
class Step:
    """One step of a plain progress output: ``state`` is ``12.3s``, ``CACHED`` or ``?`` (no
    end line); ``first``/``last``: when its first and last output lines came (seconds since
    it started; None without output): the time before the first is the step's set-up, the
    time after the last (to its DONE) what the tool did once the process had written all."""

    name: str
    state: str = "?"
    first: float | None = None
    last: float | None = None

    def read(self, rest: str) -> None:
        if (done := _DONE.match(rest.strip())) is not None:
            self.state = f"{done[2]}s" if done[1] == "DONE" and done[2] else done[1]
        elif (output := _OUTPUT.match(rest)) is not None:
            at = float(output[1])
            self.first = at if self.first is None else self.first
            self.last = at

    @property
    def output_span(self) -> str:
        return "" if self.first is None else f"{self.first:.1f}-{self.last:.1f}s"


def step_times(progress: str) -> list[Step]:
    """Each step of a ``--progress=plain`` output (``[internal] load ...``, ``[2/4] RUN
    ...``, ``exporting to image``) in order of first news, its name shortened."""
    steps: dict[str, Step] = {}
    for line in progress.splitlines():
        number, _, rest = line.partition(" ")
        if not number.startswith("#"):
            continue
        if number not in steps:
            steps[number] = Step(_short(rest))
        else:
            steps[number].read(rest)
    return list(steps.values())


def _short(name: str, width: int = 60) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


def step_table(case: str, results: list[ScaleResult]) -> str:
    """A Markdown table of each tool's step times for the cold and the edit figure."""
    lines = [f"Step times, `{case}` (the last timed round; `--progress=plain`; output: when "
             "the step's first and last output lines came, seconds after it started):", "",
             "| tool | figure | step | time | output |", "|---|---|---|---|---|"]
    for result in results:
        for figure in ("cold", "edit"):
            for step in step_times(result.progress.get(figure, "")):
                lines.append(f"| {result.tool} | {figure} | `{step.name.replace('|', '/')}` "
                             f"| {step.state} | {step.output_span} |")
    return "\n".join(lines)

# --- root filesystems -------------------------------------------------------------------


@dataclass(frozen=True)
class RootfsDiff:
    """The two images' root filesystems compared (conf_tree listings, BuildKit's first)."""

    buildkit_paths: int
    dockyard_paths: int
    lines: list[str]  # conf_compare.tree_diff: "-" BuildKit only, "+" dockyard only

    @property
    def differing_paths(self) -> list[str]:
        """Every path that has a line on either side, once, sorted."""
        return sorted({_path_of(line[1:]) for line in self.lines})

    @property
    def content_only(self) -> list[str]:
        """The differing paths that are regular files of the same kind, mode, owner, mtime
        class and size on both sides: only their bytes differ (a log's timestamps)."""
        sides: dict[str, dict[str, list[str]]] = {}
        for line in self.lines:
            fields = line[1:].split(" ")
            sides.setdefault(_path_of(line[1:]), {})[line[0]] = fields
        return sorted(path for path, side in sides.items()
                      if set(side) == {"-", "+"} and side["-"][0] == "f"
                      and side["-"][:-1] == side["+"][:-1] and len(side["-"]) == 7)


def _path_of(line: str) -> str:
    return line.split(" ", 5)[4]


def rootfs_diff(buildkit_tree: list[str], dockyard_tree: list[str]) -> RootfsDiff:
    return RootfsDiff(len(buildkit_tree), len(dockyard_tree),
                      tree_diff(buildkit_tree, dockyard_tree))


def compare_archives(buildkit_archive: Path, dockyard_archive: Path) -> RootfsDiff:
    """Read both docker-archives as the conformance suite does and diff their trees."""
    return rootfs_diff(read_archive(buildkit_archive)[0], read_archive(dockyard_archive)[0])


def rootfs_row(case: str, diff: RootfsDiff, path: str) -> Row:
    """An info row: the path counts (their ratio) and how many paths differ, how many of
    them in their bytes only."""
    differing = len(diff.differing_paths)
    detail = f", {len(diff.content_only)} in content only; listed below" if differing else ""
    return Row(f"{DEBIAN_CASES[case].title}: root filesystem vs BuildKit's "
               f"({differing} paths differ{detail})",
               f"{diff.dockyard_paths:,} paths", f"{diff.buildkit_paths:,} paths",
               ratio(diff.dockyard_paths, diff.buildkit_paths), None, True, path)


def diff_section(case: str, diff: RootfsDiff, limit: int = 40) -> str:
    """One case's differences as Markdown: every line of a path that differs in more than
    its bytes (at most ``limit``), then the content-only paths, counted by suffix."""
    if not diff.lines:
        return f"Root filesystems, `{case}`: identical listings ({diff.dockyard_paths:,} paths)."
    content = set(diff.content_only)
    other = [line for line in diff.lines if _path_of(line[1:]) not in content]
    parts = [f"Root filesystems, `{case}`: {len(diff.differing_paths)} paths differ."]
    if other:
        more = len(other) - limit
        parts.append("Beyond their content (`-` BuildKit only, `+` dockyard only; kind, mode, "
                     "owner, mtime class, path, size, sha256):\n\n```\n" +
                     "\n".join(other[:limit]) + (f"\n... {more} more lines" if more > 0
                                                  else "") + "\n```")
    if content:
        parts.append(f"In content only (same kind, mode, owner, size; {_by_suffix(content)}): "
                     + ", ".join(f"`{path}`" for path in sorted(content)[:8])
                     + (", ..." if len(content) > 8 else ""))
    return "\n\n".join(parts)


def _by_suffix(paths: set[str]) -> str:
    counts: dict[str, int] = {}
    for path in paths:
        suffix = Path(path).suffix
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,4}", suffix) else "other"
        counts[suffix] = counts.get(suffix, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{n} {suffix}" for suffix, n in ranked)
