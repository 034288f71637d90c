"""The Dockerfile parser, as data.

- ``parser_cases/<case>/Dockerfile`` with ``result`` (the dump below) or ``error`` (the
  exact ``str()`` of the DockerfileError, caret included), walked by one test, like
  BuildKit's parser/testfiles; the cases taken from those testfiles also keep BuildKit's own
  expected dump in ``buildkit-result``;
- ``ERRORS``: exact messages with their line and column, inline;
- a property: any text or bytes gives a ParseResult or a DockerfileError, nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.scheduler._errors import DockerfileError
from dockyard.scheduler.dockerfile._ast import Heredoc, Node, ParseResult
from dockyard.scheduler.dockerfile._parser import MAX_LINE_BYTES, parse

CASES = Path(__file__).parent / "parser_cases"


def _j(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _dump_heredoc(doc: Heredoc) -> str:
    return (f"heredoc name={_j(doc.name)} expand={_j(doc.expand)} chomp={_j(doc.chomp)} "
            f"fd={_j(doc.file_descriptor)} content={_j(doc.content)}")


def _dump_node(node: Node, indent: str = "") -> list[str]:
    head = f"{indent}{node.start_line}-{node.end_line}:{node.column} {node.instruction}"
    if node.keyword != node.instruction.upper():
        head += f" keyword={_j(node.keyword)}"
    if node.flags:
        head += f" flags={_j(list(node.flags))}"
    head += f" args={_j(list(node.args))}"
    head += " json" if node.json else ""
    head += " legacy_kv" if node.legacy_kv else ""
    out = [head]
    if node.comments:
        out.append(f"{indent}  comments={_j(list(node.comments))}")
    if node.empty_continuation_lines:
        out.append(f"{indent}  empty_continuation_lines={list(node.empty_continuation_lines)}")
    out += [f"{indent}  {_dump_heredoc(doc)}" for doc in node.heredocs]
    if node.sub is not None:
        out += _dump_node(node.sub, indent + "  sub ")
    return out


def dump(result: ParseResult) -> str:
    """One line per node (and per heredoc/comment/sub-node), directives first if any."""
    d = result.directives
    lines = []
    if d.lines:
        lines.append(f"directives escape={_j(d.escape)} syntax={_j(d.syntax)} "
                     f"check={_j(d.check)} lines={_j(d.lines)}")
    for node in result.nodes:
        lines += _dump_node(node)
    return "\n".join(lines) + "\n"


def outcome(source: bytes) -> tuple[str, str]:
    """("result", dump) or ("error", message) for one Dockerfile."""
    try:
        return "result", dump(parse(source))
    except DockerfileError as exc:
        return "error", str(exc) + "\n"


def _case_dirs() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if p.is_dir())


@pytest.mark.parametrize("case", _case_dirs(), ids=lambda p: p.name)
def test_parser_case(case: Path) -> None:
    kind, text = outcome((case / "Dockerfile").read_bytes())
    expected = [name for name in ("result", "error") if (case / name).exists()]
    assert expected == [kind], f"{case.name}: got {kind}:\n{text}"
    assert (case / kind).read_text(encoding="utf-8") == text


def _sexp(node: Node) -> str:
    """BuildKit's ``Node.Dump()`` format (for nodes without sub-nodes or pairs)."""
    flags = f" [{' '.join(_j(f) for f in node.flags)}]" if node.flags else ""
    return f"({node.instruction}{flags}{''.join(' ' + _j(a) for a in node.args)})"


@pytest.mark.parametrize("case", [p for p in _case_dirs() if (p / "buildkit-result").exists()],
                         ids=lambda p: p.name)
def test_same_tree_as_buildkit(case: Path) -> None:
    """Cases copied from BuildKit's parser/testfiles also match its own expected dump."""
    result = parse((case / "Dockerfile").read_bytes())
    dumped = "".join(_sexp(node) + "\n" for node in result.nodes)
    assert dumped == (case / "buildkit-result").read_text(encoding="utf-8")


def test_enough_cases() -> None:
    assert len(_case_dirs()) >= 40


# (Dockerfile, message, line, column): the exact message BuildKit gives, where it points.
ERRORS: list[tuple[str, str, int, int]] = [
    ("", "file with no instructions", 1, 1),
    ("# just a comment\n\n", "file with no instructions", 2, 1),
    ("FROM a\nRUNN echo hi\n", "unknown instruction: RUNN (did you mean RUN?)", 2, 1),
    ("FROM a\n  runn echo\n", "unknown instruction: runn (did you mean run?)", 2, 3),
    ("FROM a\nCopi a b\n", "unknown instruction: Copi (did you mean copy?)", 2, 1),
    ("FROM a\nFOOBAR x\n", "unknown instruction: FOOBAR", 2, 1),
    ("FROM a\n\\\n", "unknown instruction: ", 2, 1),
    ("# escape=x\nFROM a\n", "invalid escape token 'x' does not match ` or \\", 1, 1),
    ("# escape=\\\n# escape=`\nFROM a\n", "only one escape parser directive can be used",
     2, 1),
    ("# syntax=a\n#SYNTAX = b\nFROM a\n", "only one syntax parser directive can be used",
     2, 1),
    ("# check=skip=all\n# check=error=true\nFROM a\n",
     "only one check parser directive can be used", 2, 1),
    ("FROM a\nENV\tfoo\n", "ENV must have two arguments", 2, 1),
    ("FROM a\nLABEL single\n", "LABEL must have two arguments", 2, 1),
    ("FROM a\nENV a=b c\n",
     "Syntax error - can't find = in \"c\". Must be of the form: name=value", 2, 9),
    ("FROM a\nLABEL x=1 \\\n  \"y z\"\n",
     "Syntax error - can't find = in \"\\\"y z\\\"\". Must be of the form: name=value", 3, 3),
    ("FROM a\nENV =b\n", "ENV names can not be blank", 2, 5),
    ("FROM a\nLABEL a=1 =2\n", "LABEL names can not be blank", 2, 11),
    ("FROM a\nCMD [\"a\", 1]\n",
     "when using JSON array syntax, arrays must be comprised of strings only", 2, 1),
    ("FROM a\nCOPY [[\"a\"], \"b\"]\n",
     "when using JSON array syntax, arrays must be comprised of strings only", 2, 1),
    ("FROM a\nHEALTHCHECK CMD [null]\n",
     "when using JSON array syntax, arrays must be comprised of strings only", 2, 1),
    ("FROM a\nRUN <<EOF\nhello\n", "unterminated heredoc", 2, 5),
    ("FROM a\nCOPY <<A <<B /\na\nA\nb\n", "unterminated heredoc", 2, 10),
    ("FROM a\nRUN <<-EOF\n  EOF\n", "unterminated heredoc", 2, 5),
    ("FROM a\nRUN <<EOF " + "${a:-" * 70 + "\nEOF\n",
     "variable expansions nested deeper than 64 levels", 2, 1),
]


@pytest.mark.parametrize(("source", "message", "line", "column"), ERRORS)
def test_error(source: str, message: str, line: int, column: int) -> None:
    with pytest.raises(DockerfileError) as info:
        parse(source, filename="df")
    assert (info.value.message, info.value.filename, info.value.line, info.value.column) == (
        message, "df", line, column)


MAX = MAX_LINE_BYTES  # 65,535: bytes a line may hold before its "\n" (BuildKit's scanner)
_ENV = b"ENV A="
# (Dockerfile, line of the error or None when it parses): each physical line is counted
# alone, in bytes, up to its "\n" -- a CRLF's "\r", the BOM and multi-byte characters too.
LINE_LENGTHS: list[tuple[bytes, int | None]] = [
    (b"FROM a\n" + _ENV + b"x" * (MAX - len(_ENV)) + b"\n", None),
    (b"FROM a\n" + _ENV + b"x" * (MAX - len(_ENV) + 1) + b"\n", 2),
    (b"FROM a\n" + _ENV + b"x" * (MAX - len(_ENV)), None),  # last line, no "\n"
    (b"FROM a\n" + _ENV + b"x" * (MAX - len(_ENV) + 1), 2),
    (b"FROM a\r\n" + _ENV + b"x" * (MAX - len(_ENV) - 1) + b"\r\n", None),
    (b"FROM a\r\n" + _ENV + b"x" * (MAX - len(_ENV)) + b"\r\n", 2),
    (b"FROM a\r" + _ENV + b"x" * (MAX - len(_ENV)) + b"\r", 1),  # old Mac: one Go line
    (b"\xef\xbb\xbfFROM a" + b" " * (MAX - 9), None),
    (b"\xef\xbb\xbfFROM a" + b" " * (MAX - 8), 1),
    (b"FROM a\n" + _ENV + "\u00e9".encode() * ((MAX - len(_ENV)) // 2) + b"\n", None),
    (b"FROM a\n" + _ENV + "\u00e9".encode() * ((MAX - len(_ENV)) // 2 + 1) + b"\n", 2),
    (b"FROM a\n# " + b"c" * MAX + b"\nRUN x\n", 2),  # a comment line too
    (b"FROM a\nENV A=1 \\\n  B=" + b"x" * (MAX - 6) + b" \\\n  C=" + b"y" * (MAX - 5)
     + b"\n", None),  # continuations: each line alone; the logical line may be longer
    (b"FROM a\nENV A=1 \\\n  B=" + b"x" * MAX + b"\n", 3),
    (b"FROM a\nRUN <<EOF\n" + b"y" * MAX + b"\nEOF\n", None),
    (b"FROM a\nRUN <<EOF\n" + b"y" * (MAX + 1) + b"\nEOF\n", 3),  # BuildKit: unterminated
    (b"FROM a\n" + b"\n" * 100 + b"RUN " + b"z" * (1 << 20) + b"\n", 102),
]


@pytest.mark.parametrize(("source", "line"), LINE_LENGTHS,
                         ids=[f"case{i}" for i in range(len(LINE_LENGTHS))])
def test_line_length_limit(source: bytes, line: int | None) -> None:
    for given_as in (source, source.decode("utf-8")):
        if line is None:
            assert parse(given_as).nodes
            continue
        with pytest.raises(DockerfileError) as info:
            parse(given_as, filename="df")
        error = info.value
        assert (error.message, error.filename, error.line, error.column) == (
            "dockerfile line greater than max allowed size of 65535", "df", line, 1)
        assert error.hint is not None and "line continuation" in error.hint
        assert len(str(error)) < 600  # the long line is shown cut short


def test_invalid_utf8_points_at_the_byte() -> None:
    with pytest.raises(DockerfileError) as info:
        parse(b"FROM a\nRUN echo \xff\n")
    assert str(info.value) == (
        "Dockerfile:2:10: invalid UTF-8 (byte 0xff): a Dockerfile must be UTF-8 text\n"
        "  2 | RUN echo \ufffd\n"
        "    |          ^")


_DOCKERFILE_ALPHABET = st.sampled_from(
    list("\\`#=\"'<-$ {}[]:,\t\n\r") + ["FROM ", "RUN ", "COPY ", "ENV ", "ONBUILD ",
                                        "HEALTHCHECK ", "LABEL ", "ARG ", "<<EOF", "EOF",
                                        "--mount=", "# escape=`\n", "a", "1", "\u00a0"])


def _never_crashes(source: bytes | str) -> None:
    try:
        result = parse(source)
    except DockerfileError as exc:
        assert exc.line >= 1 and exc.column >= 1
        str(exc)
    else:
        assert result.nodes
        for node in result.nodes:
            assert 1 <= node.start_line <= node.end_line <= len(result.source_lines)


@given(st.lists(_DOCKERFILE_ALPHABET, max_size=40).map("".join))
def test_dockerfile_like_text_never_crashes(source: str) -> None:
    _never_crashes(source)


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_input_never_crashes(source: bytes | str) -> None:
    _never_crashes(source)
