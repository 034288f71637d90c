"""Hostile Dockerfiles, as a table: each with the clear error it gets (message and line,
pinned) or the build it makes, and what BuildKit does with it ("checked": run on the
oracle's BuildKit 20.10, tests/oracle; the line-limit rows are in test_oracle_accept.py).

Every case runs under a generous timeout (pytest-timeout): before the frontend's work was
bounded, the slow ones took 30 s to minutes (noted per case), now each takes well under a
second or a few; a timeout is a failure, so a quadratic path coming back fails here
without the test depending on how fast the machine is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dockyard.scheduler._errors import DockerfileError
from dockyard.scheduler.dockerfile import build_graph, parse
from dockyard.scheduler.dockerfile._convert import _context
from dockyard.scheduler.dockerfile.shell import MAX_WORD_SIZE

LINE_LIMIT = "dockerfile line greater than max allowed size of 65535"
WORD_LIMIT = f"the expanded word would be longer than {MAX_WORD_SIZE} characters"
NESTED = "expansions nested more than 64 deep"
NEST = "${a:-" * 10_000 + "x" + "}" * 10_000  # 60,001 bytes: fits in one line
# 100,000 levels over 100 continuation lines of 6,000 bytes each
NEST_CONTINUED = "\\\n".join(["${a:-" * 1000] * 100) + "x" + "\\\n".join(["}" * 1000] * 100)


@dataclass(frozen=True)
class Hostile:
    """``message``/``line``: the DockerfileError expected (its message starts with
    ``message``), None for a build that succeeds; ``buildkit``: what BuildKit does."""

    name: str
    dockerfile: str | bytes
    message: str | None
    line: int = 0
    buildkit: str = ""
    build_args: dict[str, str] = field(default_factory=dict)


def _doubling(times: int) -> str:
    """ARG A=x, then A doubled ``times`` times, then used: 2**times characters."""
    return "FROM scratch\nARG A=x\n" + "ARG A=$A$A\n" * times + "RUN echo $A\n"


CASES: list[Hostile] = [
    Hostile("100,000 lines of ENV, each a new variable",  # was quadratic: ~150 s
            "FROM scratch\n" + "".join(f"ENV V{i}={i}\n" for i in range(100_000)), None,
            buildkit="20.10: not done after 120 s (no limit on lines; quadratic too)"),
    Hostile("100,000 comment and blank lines", "# c\n\n" * 50_000 + "FROM scratch\n", None,
            buildkit="builds"),
    Hostile("one instruction continued over 100,000 lines",
            "FROM scratch\nENV A=1 \\\n" + "  \\\n" * 100_000 + "  B=2\n", None,
            buildkit="builds (empty continuation lines are a warning)"),
    Hostile("a line of 65,536 bytes", "FROM scratch\nENV A=" + "x" * 65_530 + "\n",
            LINE_LIMIT, 2, buildkit="the same error (20.10, checked), at the line before"),
    Hostile("a 1 MiB ENV value in one line",  # was 30 s, then built
            "FROM scratch\nENV A=" + "x" * (1 << 20) + "\n", LINE_LIMIT, 2,
            buildkit="the same error"),
    Hostile("a heredoc line of 70,000 bytes",
            "FROM scratch\nRUN <<EOF\n" + "y" * 70_000 + "\nEOF\n", LINE_LIMIT, 3,
            buildkit="unterminated heredoc (the scanner stops at the long line)"),
    Hostile("an ARG doubled 20 times", _doubling(20),  # was 98 s, then built
            f'failed to process "$A$A": {WORD_LIMIT} ($A alone is {MAX_WORD_SIZE} '
            "characters)", 21, buildkit="20.10: not done after 120 s"),
    Hostile("an ARG doubled 18 times: 256 KiB, at the limit", _doubling(18), None,
            buildkit="builds"),
    Hostile("a 256 KiB --build-arg used twice",  # was 9 s, then built
            "FROM scratch\nARG A\nENV B=$A$A\n",
            f'failed to process "$A$A": {WORD_LIMIT} ($A alone is {MAX_WORD_SIZE} '
            "characters)", 3, build_args={"A": "x" * MAX_WORD_SIZE},
            buildkit="builds a 512 KiB ENV"),
    Hostile("${v//?/$big}: a value multiplied by a replacement",
            "FROM scratch\nARG A\nARG B\nENV C=${A//?/$B}\n",
            f'failed to process "${{A//?/$B}}": {WORD_LIMIT} ($B alone is 60001 '
            "characters)", 4, build_args={"A": "a" * 60_000, "B": "b" * 60_001},
            buildkit="builds a 3.6 GB value, if memory allows"),
    Hostile("10,000 nested ${a:-...} in ENV", "FROM scratch\nENV A=" + NEST + "\n",
            'failed to process "${a:-${a:-', 2, buildkit="builds A=x"),
    Hostile("100,000 nested ${a:-...} over continuation lines",
            "FROM scratch\nENV A=" + NEST_CONTINUED + "\n",
            'failed to process "${a:-${a:-', 2, buildkit="builds A=x"),
    Hostile("10,000 nested ${a:-...} in FROM", "FROM " + NEST + "\n",
            'failed to process "${a:-${a:-', 1, buildkit="FROM x: pulls image x"),
    Hostile("10,000 nested ${a:-...} in a heredoc word",
            "FROM scratch\nRUN <<EOF " + NEST + "\nEOF\n",
            "variable expansions nested deeper than 64 levels", 2,
            buildkit="runs the heredoc"),
    Hostile("10,000 nested ${a:-...} in an expanded heredoc body",
            "FROM scratch\nCOPY <<EOF /x\n" + NEST + "\nEOF\n",
            'failed to process "${a:-${a:-', 2, buildkit="writes x"),
    Hostile("a COPY heredoc of 400 KB, expanded: a body may hold more than a word",
            "FROM scratch\nARG A=a\nCOPY <<EOF /x\n" + ("$A" + "y" * 49_998 + "\n") * 8
            + "EOF\n", None, buildkit="builds"),
    Hostile("a COPY heredoc that grows by more than 256 KiB",
            "FROM scratch\nARG A\nCOPY <<EOF /x\n" + "$A$A\n" * 3 + "EOF\n",
            'failed to process "$A$A\\n$A$A\\n$A$A\\n": the expanded word would be longer '
            f"than {MAX_WORD_SIZE + 15} characters ($A alone is 50000 characters)", 3,
            build_args={"A": "z" * 50_000}, buildkit="builds"),
    Hostile("10,000 nested ${a:-...} in RUN: never expanded, only named",
            "FROM scratch\nRUN echo " + NEST + "\n", None, buildkit="runs it"),
    Hostile("60,000 '{' and 60,000 '$'",
            "FROM scratch\nENV A=" + "{" * 60_000 + "\nENV B=" + "$" * 60_000 + "\n", None,
            buildkit="builds"),
    Hostile("a NUL byte in an ENV value", b"FROM scratch\nENV A=a\x00b\n", None,
            buildkit="builds; the value keeps the NUL (20.10, checked)"),
    Hostile("a NUL byte in a RUN", b"FROM scratch\nRUN echo a\x00b\n",
            "RUN holds a NUL byte, which a command line cannot carry", 2,
            buildkit="the frontend accepts it; the exec fails (invalid argument)"),
    Hostile("a NUL byte in an instruction", b"FROM scratch\nRU\x00N x\n",
            "unknown instruction: RU\x00N (did you mean RUN?)", 2,
            buildkit="the same error"),
    Hostile("a NUL byte in FROM", b"FROM scr\x00atch\n",
            'failed to parse stage name "scr\x00atch": invalid reference format', 1,
            buildkit="invalid reference format"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_dockerfile(case: Hostile) -> None:
    source = case.dockerfile if isinstance(case.dockerfile, bytes) else case.dockerfile.encode()
    if case.message is None:
        assert build_graph(source, build_args=case.build_args).graph.results
        return
    with pytest.raises(DockerfileError) as caught:
        build_graph(source, build_args=case.build_args)
    error = caught.value
    assert error.message.startswith(case.message)
    assert (error.filename, error.line) == ("Dockerfile", case.line)
    assert len(str(error)) < 1200  # a huge line or word is shown cut short


@pytest.mark.timeout(60)
def test_100000_instruction_lines_parse() -> None:
    source = "FROM scratch\n" + "".join(f"RUN echo {i} $X\n" for i in range(100_000))
    assert len(parse(source).nodes) == 100_001


@pytest.mark.timeout(60)
def test_what_variables_expand_to_is_bounded_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Words within the word limit, used many times, are held to a total per conversion:
    here each RUN copies a 200 KB ENV value into its environment."""
    monkeypatch.setattr(_context, "MAX_EXPANDED_TOTAL", 4_000_000)
    source = "FROM scratch\nARG BIG\nENV BIG=$BIG\n" + "RUN true\n" * 100
    with pytest.raises(DockerfileError) as caught:
        build_graph(source.encode(), build_args={"BIG": "b" * 200_000})
    error = caught.value
    assert error.message == ("the values expanded from variables would pass 4000000 "
                             "characters in all ($BIG is 200000 characters)")
    assert error.line == 4 + 4_000_000 // 200_004 - 1  # the RUN that passes the total
    assert error.hint is not None and "COPY it in as a file" in error.hint


def test_the_total_is_large_enough_for_real_dockerfiles() -> None:
    assert _context.MAX_EXPANDED_TOTAL == 128 * 1024 * 1024
