"""The README's buildx compatibility table against the CLI and the tests (issue 11).

The table is a promise to users switching from ``docker buildx build``: every flag of
buildx's build reference has a row, every row's flag is one ``dockyard build`` reads, a
refused flag is refused with its reason (not as an unknown flag), and each row names the
test file that checks its effect, which must exist and exercise that flag."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockyard.cluster._cli import build_parser, main

PROJECT = Path(__file__).resolve().parents[3]

#: The options of buildx's build reference (docs/reference/buildx_build.md, the table its
#: docs generate from the command), short and long forms.
BUILDX_FLAGS = (
    "--add-host", "--allow", "--annotation", "--attest", "--build-arg", "--build-context",
    "--builder", "--cache-from", "--cache-to", "--call", "--cgroup-parent", "--check",
    "-D", "--debug", "--detach", "-f", "--file", "--iidfile", "--label", "--load",
    "--metadata-file", "--network", "--no-cache", "--no-cache-filter", "-o", "--output",
    "--platform", "--progress", "--provenance", "--pull", "--push", "-q", "--quiet", "--root",
    "--sbom", "--secret", "--server-config", "--shm-size", "--ssh", "-t", "--tag", "--target",
    "--ulimit",
)

#: dockyard's own build flags (the cluster endpoint), which buildx has not.
DOCKYARD_FLAGS = ("--endpoint", "--token-file", "--tls-ca", "-h", "--help")

STATUSES = ("supported", "partly", "refused")


@dataclass(frozen=True)
class Row:
    cells: tuple[str, ...]  # the first cell's backticked items
    status: str
    why: str
    tests: tuple[str, ...]

    @property
    def attribute(self) -> bool:
        """An exporter attribute's row (```-o` `compression=```), not a flag's."""
        return self.cells[0] == "-o" and not self.cells[-1].startswith("-")

    @property
    def flags(self) -> tuple[str, ...]:
        """The command-line flags the row is about (``--progress=plain``: ``--progress``;
        none for a CONTEXT form, an environment variable or an output's behaviour)."""
        if self.attribute:
            return ("-o",)
        if self.cells[0] == "CONTEXT":
            return ()
        return tuple(cell.split("=")[0] for cell in self.cells if cell.startswith("-"))

    @property
    def evidence(self) -> tuple[str, ...]:
        """Words one of which the named test files must contain."""
        if self.cells[0] == "CONTEXT":
            return ()
        return (self.cells[1],) if self.attribute else self.cells


def _rows() -> Iterator[Row]:
    text = (PROJECT / "README.md").read_text()
    section = text.split("\n## buildx compatibility\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 4, line
        tests = tuple(path.strip() for path in cells[3].split(","))
        yield Row(tuple(re.findall(r"`([^`]+)`", cells[0])), cells[1], cells[2], tests)


ROWS = list(_rows())


def _build_options() -> set[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    build = subparsers.choices["build"]  # type: ignore[attr-defined]
    return set(build._option_string_actions)


def test_the_table_has_rows() -> None:
    assert len(ROWS) > len(BUILDX_FLAGS) // 2
    assert all(row.status in STATUSES for row in ROWS), [r for r in ROWS
                                                         if r.status not in STATUSES]


def test_every_flag_of_buildx_has_a_row() -> None:
    named = {flag for row in ROWS for flag in row.flags}
    assert sorted(set(BUILDX_FLAGS) - named) == []


def test_the_parser_reads_exactly_the_table_and_dockyard_flags() -> None:
    named = {flag for row in ROWS for flag in row.flags}
    assert sorted(named - _build_options()) == []
    assert sorted(_build_options() - named - set(DOCKYARD_FLAGS)) == []


@pytest.mark.parametrize("row", ROWS, ids=lambda row: " ".join(row.cells))
def test_each_row_names_a_test_that_exercises_it(row: Row) -> None:
    texts = []
    for test in row.tests:
        path = PROJECT / test
        assert path.is_file(), f"{test} (named by the README row {row.cells}) is missing"
        texts.append(path.read_text())
    if row.evidence:
        assert any(word in text for word in row.evidence for text in texts), row


REFUSED = [row for row in ROWS if row.status == "refused" and row.flags]


@pytest.mark.parametrize("row", REFUSED, ids=lambda row: row.cells[0])
def test_a_refused_flag_is_refused_with_its_reason(row: Row, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    flag = row.cells[0]
    argv = ["build", flag] if flag == "--detach" else ["build", flag, str(tmp_path / "x")]
    assert main([*argv, str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert f"{flag} is not supported: " in error, error
    assert "experimental" in row.why and "experimental controller server" in error
