"""The shared "did you mean" helper: value, options -> the suggestion ("" for none)."""

from __future__ import annotations

import pytest

from dockyard.scheduler.dockerfile._suggest import closest

CASES: list[tuple[str, tuple[str, ...], str]] = [
    ("rn", ("run", "cmd"), "run"),                      # one insertion
    ("cpy", ("copy", "cmd"), "copy"),                   # nearer than cmd (2)
    ("xyz", ("run", "copy"), ""),                       # distance 3: too far
    ("ab", ("abcd",), "abcd"),                          # two insertions
    ("ab", ("abcde",), ""),                             # three insertions
    ("bnd", ("bind", "band"), "bind"),                  # a tie: the first option wins
    ("bind", ("bnd", "bind"), ""),                      # the value itself is an option
    ("Run", ("run",), "run"),                           # case-sensitive: one substitution
    ("RUN", ("run",), ""),                              # three substitutions
    ("x", (), ""),                                      # no options
    ("", ("ab", "abc"), "ab"),                          # no special case for "" (nor in BuildKit)
]


@pytest.mark.parametrize(("value", "options", "expected"), CASES,
                         ids=[f"{v!r}-{','.join(o)}" for v, o, _ in CASES])
def test_closest(value: str, options: tuple[str, ...], expected: str) -> None:
    assert closest(value, options) == expected
