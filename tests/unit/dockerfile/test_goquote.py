"""Go's strconv.Quote: text -> quoted text, as Go prints it."""

from __future__ import annotations

import pytest

from dockyard.scheduler.dockerfile._goquote import go_quote

CASES: list[tuple[str, str]] = [
    ("", '""'),
    ("plain text", '"plain text"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("a\\b", '"a\\\\b"'),
    ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
    ("\x00\x1b\x7f", '"\\x00\\x1b\\x7f"'),
    ("\x85\xa0\xad", '"\\u0085\\u00a0\\u00ad"'),     # C1, NBSP, soft hyphen: \u, not \x
    ("é ünï 中文", '"é ünï 中文"'),                     # printable: kept
    ("\u2028\ufeff", '"\\u2028\\ufeff"'),
    ("\U000e0001", '"\\U000e0001"'),
    ("\U0001f600", '"\U0001f600"'),
    ("a\udcffb", '"a\\xffb"'),                          # an undecodable byte (surrogateescape)
    ("\ud800", '"\\ufffd"'),                            # any other lone surrogate
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[repr(t) for t, _ in CASES])
def test_go_quote(text: str, expected: str) -> None:
    assert go_quote(text) == expected
