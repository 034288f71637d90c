"""The whole frontend never crashes: parse -> instructions -> build_graph -> build checks,
on random text and on mutated valid Dockerfiles, either succeeds or raises a
``DockerfileError`` (``UsageError`` for a bad BUILDKIT_DOCKERFILE_CHECK build arg) whose
line is in the file and whose message is not empty.  Any other exception is a bug.

The corpus is every Dockerfile of the parser and lint folder cases plus ``SEEDS``; a
mutation deletes, duplicates or swaps lines, inserts characters that stress the grammar
(quotes, escapes, ``${``, ``<<EOF``, flags, JSON brackets) or changes the case of a line.

Runs in a few seconds by default.  For a long hunt::

    .venv/bin/python -m pytest tests/unit/dockerfile/test_fuzz.py --hypothesis-profile=long

(the ``long`` profile: many more examples, no deadline; it is registered in
``tests/conftest.py`` because pytest loads profiles before collecting this module).
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.scheduler._errors import DockerfileError, UsageError
from dockyard.scheduler._platform import Platform
from dockyard.scheduler.dockerfile._frontend import build_graph

AMD64 = Platform("linux", "amd64")
HERE = Path(__file__).parent
CORPUS: list[bytes] = sorted(
    path.read_bytes() for folder in ("parser_cases", "lint_cases")
    for path in (HERE / folder).glob("*/Dockerfile"))
SEEDS = [
    b"FROM alpine AS base\nARG V=1\nENV A=$V B=${V:-x}\nRUN --mount=type=cache,target=/c "
    b"echo $A\nWORKDIR /app\nCOPY --from=base --chown=1:1 --chmod=755 a b /dst/\n",
    b"ARG IMG=alpine\nFROM --platform=$BUILDPLATFORM ${IMG} AS b\nRUN <<EOF bash\n"
    b"echo hi\nEOF\nFROM b\nCOPY <<-EOT /x\n\tdata\nEOT\nCMD [\"sh\"]\n",
    b"# escape=`\nFROM alpine\nRUN echo a `\n  b\nHEALTHCHECK --interval=5s CMD true\n"
    b"ONBUILD RUN x\nEXPOSE 80/tcp\nVOLUME [\"/v\"]\nUSER me\nSTOPSIGNAL SIGTERM\n",
    b"# check=skip=all;error=true\nFROM scratch\nADD --checksum=sha256:"
    + b"a" * 64 + b" https://e.com/f /f\nSHELL [\"/bin/sh\", \"-c\"]\nLABEL a=b c d\n",
]
CORPUS += SEEDS
SNIPPETS = ["\\", "`", "'", '"', "${", "}", "$", "<<EOF", "<<-'EOF'", "3<<E", "EOF", "--",
            "--from=", "--mount=", "--platform=", "[", "]", "[\"", "=", " AS ", "#", "\t",
            "\n", "\r", "\\\n", "\n\n", "ONBUILD ", "FROM ", "ARG ", "${A:-${B", "\x00",
            "\u00e9", "\ufeff", " ", ":", "/", "0", "-1"]
BUILD_ARGS = st.dictionaries(
    st.sampled_from(["V", "IMG", "HTTP_PROXY", "BUILDKIT_DOCKERFILE_CHECK", "TARGETARCH"]),
    st.sampled_from(["", "x", "1", "skip=all", "error=true", "bogus", "linux/arm64"]),
    max_size=2)


def _examples(default: int) -> int:
    """``default`` examples, unless the ``long`` profile is loaded (its own count wins)."""
    current = settings.default
    if settings.get_current_profile_name() == "long" and current is not None:
        return current.max_examples
    return default


FUZZ = settings(max_examples=_examples(500), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    lines = draw(st.sampled_from(CORPUS)).decode("utf-8", "replace").split("\n")
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, max(len(lines) - 1, 0)))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "case"]))
        if kind == "delete" and lines:
            del lines[where]
        elif kind == "duplicate" and lines:
            lines.insert(where, lines[where])
        elif kind == "swap" and len(lines) > 1:
            other = draw(st.integers(0, len(lines) - 1))
            lines[where], lines[other] = lines[other], lines[where]
        elif kind == "insert" and lines:
            line = lines[where]
            at = draw(st.integers(0, len(line)))
            lines[where] = line[:at] + draw(st.sampled_from(SNIPPETS)) + line[at:]
        elif kind == "case" and lines:
            lines[where] = draw(st.sampled_from([str.upper, str.lower, str.swapcase]))(
                lines[where])
    return "\n".join(lines).encode("utf-8", "surrogatepass")


_RANDOM = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(SNIPPETS + ["RUN ", "COPY ", "ENV ", "a", "b=c", " ", "\n"]),
             max_size=60).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
)


def _line_count(data: bytes) -> int:
    return data.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").replace(
        b"\r", b"\n").count(b"\n") + 1


def _run(data: bytes, target: str | None, build_args: dict[str, str], check_only: bool
         ) -> None:
    lines = _line_count(data)
    try:
        result = build_graph(data, platforms=[AMD64], build_platform=AMD64, target=target,
                             build_args=build_args, check_only=check_only)
    except DockerfileError as error:
        assert error.message and 1 <= error.line <= lines, (error.line, lines, str(error))
        return
    except UsageError as error:
        assert error.message and "BUILDKIT_DOCKERFILE_CHECK" in build_args
        return
    for warning in result.warnings:
        assert warning.rule and warning.message and 1 <= warning.line <= lines, warning


@FUZZ
@given(data=_mutated(), target=st.sampled_from([None, "base", "b", "nope"]),
       build_args=BUILD_ARGS, check_only=st.booleans())
def test_mutated_dockerfiles(data: bytes, target: str | None, build_args: dict[str, str],
                             check_only: bool) -> None:
    _run(data, target, build_args, check_only)


@FUZZ
@given(data=_RANDOM, build_args=BUILD_ARGS, check_only=st.booleans())
def test_random_input(data: bytes, build_args: dict[str, str], check_only: bool) -> None:
    _run(data, None, build_args, check_only)


def test_corpus_is_not_empty() -> None:
    assert len(CORPUS) > 20
