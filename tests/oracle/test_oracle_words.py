"""Word expansion: one table, checked against BuildKit (Docker 20.10) and against ours.

Each case is ``(escape, word, expected)``: ``expected`` is the expanded string, or ``ERROR``
when the word must be rejected.  The environment is ``ENV`` below (plus the ``PATH`` that
BuildKit gives a ``FROM scratch`` stage).  ``test_buildkit_agrees`` builds
``FROM scratch`` / ``ENV <ENV>`` / ``ENV R=<word>`` and reads ``R`` from the image config;
``test_process_word_agrees`` runs ``dockyard.scheduler.dockerfile.shell.process_word`` on the same
case, so the table is the contract between the two.

20.10's frontend knows only ``${v:-w}``, ``${v:+w}``, ``${v:?m}`` and ``${v?m}``: it rejects
``${v-w}``, ``${v+w}``, ``#``, ``%`` and ``/`` patterns ("missing ':' in substitution"),
which newer BuildKit accepts.  Those forms are therefore not in this table (the unit tests
of the shell module pin them from BuildKit's source instead).
"""

from __future__ import annotations

import pytest
from _buildkit import PrivateDockerd

from dockyard.scheduler._errors import DockerfileError
from dockyard.scheduler.dockerfile.shell import process_word

ERROR = object()  # the word must be rejected
SCRATCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV = {"A": "hello", "E": "", "S": "a b", "Q": "it's", "D": "$A", "N": "x\\y"}
FULL_ENV = {"PATH": SCRATCH_PATH, **ENV}
BS, BT = "\\", "`"

WORDS: list[tuple[str, str, object]] = [
    # plain references
    (BS, "$A", "hello"),
    (BS, "${A}", "hello"),
    (BS, "$Z", ""),
    (BS, "${Z}", ""),
    (BS, "x$A", "xhello"),
    (BS, "$A.x", "hello.x"),
    (BS, "${A}_$A", "hello_hello"),
    (BS, "$A_x", ""),
    (BS, "$D", "$A"),
    (BS, "$N", "x\\y"),
    (BS, "$PATH", SCRATCH_PATH),
    (BS, "$", "$"),
    (BS, "a$", "a$"),
    (BS, "$1", ""),
    (BS, "$$", ""),
    (BS, "$-x", "x"),
    (BS, "${A}${E}${Z}", "hello"),
    # ${v:-w} and ${v:+w}
    (BS, "${A:-x}", "hello"),
    (BS, "${E:-x}", "x"),
    (BS, "${Z:-x}", "x"),
    (BS, "${Z:-}", ""),
    (BS, "${A:+x}", "x"),
    (BS, "${E:+x}", ""),
    (BS, "${Z:+x}", ""),
    (BS, "${Z:-$A}", "hello"),
    (BS, "${Z:-${A}}", "hello"),
    (BS, "${Z:-${E:-deep}}", "deep"),
    (BS, "${A:+${A}!}", "hello!"),
    (BS, "${Z:-'q'}", "q"),
    (BS, '${Z:-"q r"}', "q r"),
    (BS, "${Z:-a\\}b}", "a}b"),
    (BS, "${Z:-\\$A}", "$A"),
    # ${v:?m} and ${v?m}
    (BS, "${A:?boom}", "hello"),
    (BS, "${Z:?boom}", ERROR),
    (BS, "${E:?boom}", ERROR),
    (BS, "${E?boom}", ""),
    (BS, "${Z?boom}", ERROR),
    (BS, "${Z:?}", ERROR),
    # malformed substitutions
    (BS, "${A", ERROR),
    (BS, "${", ERROR),
    (BS, "${}", ERROR),
    (BS, "${A:1:2}", ERROR),
    (BS, "${Z:=x}", ERROR),
    (BS, "${A^^}", ERROR),
    (BS, "${Z:-x", ERROR),
    # quotes
    (BS, "'$A'", "$A"),
    (BS, '"$A"', "hello"),
    (BS, '"${A}x"', "hellox"),
    (BS, '"$S"', "a b"),
    (BS, '"a\\"b"', 'a"b'),
    (BS, '"a\\$A"', "a$A"),
    (BS, '"a\\xb"', "a\\xb"),
    (BS, '"a\\\\b"', "a\\b"),
    (BS, "'a\\b'", "a\\b"),
    (BS, "'a\"b'", 'a"b'),
    (BS, "\"a'b\"", "a'b"),
    (BS, "\"$Q\"", "it's"),
    (BS, "'a'\"b\"c", "abc"),
    (BS, "''", ""),
    (BS, '""', ""),
    (BS, "'unterminated", ERROR),
    (BS, '"unterminated', ERROR),
    # escapes outside quotes
    (BS, "\\$A", "$A"),
    (BS, "a\\ b", "a b"),
    (BS, "a\\\\b", "a\\b"),
    (BS, "a\\b", "ab"),
    (BS, "\\'$A\\'", "'hello'"),
    (BS, "a\\", "a"),
    # the backtick escape (# escape=`)
    (BT, "$A", "hello"),
    (BT, "`$A", "$A"),
    (BT, "C:\\dir\\$A", "C:\\dir\\hello"),
    (BT, "a``b", "a`b"),
    (BT, '"a`"b"', 'a"b'),
    (BT, '"a\\b"', "a\\b"),
    (BT, "${Z:-a`}b}", "a}b"),
]


def _escape_value(value: str, escape: str) -> str:
    """``value`` written so that the ENV line that sets it keeps it verbatim."""
    specials = {escape, "$", '"', "'", " "}
    return "".join(escape + ch if ch in specials else ch for ch in value)


def _dockerfile(escape: str, word: str) -> str:
    directive = "# escape=`\n" if escape == BT else ""
    setters = " ".join(f"{key}={_escape_value(value, escape)}" for key, value in ENV.items())
    return f"{directive}FROM scratch\nENV {setters}\nENV R={word}\n"


def _ours(escape: str, word: str) -> object:
    try:
        return process_word(word, FULL_ENV, escape=escape)
    except DockerfileError:
        return ERROR


def _show(value: object) -> str:
    return "ERROR" if value is ERROR else repr(value)


def _case_id(case: tuple[str, str, object]) -> str:
    escape, word, _ = case
    return f"{'bt:' if escape == BT else ''}{word}"


@pytest.mark.oracle
@pytest.mark.parametrize("case", WORDS, ids=[_case_id(c) for c in WORDS])
def test_buildkit_agrees(buildkit: PrivateDockerd, case: tuple[str, str, object]) -> None:
    escape, word, expected = case
    result = buildkit.build(_dockerfile(escape, word))
    if not result.ok:
        assert expected is ERROR, f"BuildKit rejected {word!r}: {result.error_text}"
        return
    assert result.env == {"PATH": SCRATCH_PATH, **ENV, "R": result.env.get("R", "")}
    assert _show(result.env.get("R")) == _show(expected)


@pytest.mark.parametrize("case", WORDS, ids=[_case_id(c) for c in WORDS])
def test_process_word_agrees(case: tuple[str, str, object]) -> None:
    escape, word, expected = case
    assert _show(_ours(escape, word)) == _show(expected)
