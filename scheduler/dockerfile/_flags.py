"""Flag and value parsing for the instruction layer, as BuildKit's Go code does it.

``Flags`` reads an instruction's ``--name[=value]`` words the way BuildKit's BFlags does
(instructions/bflag.go); the ``go_*`` functions reproduce the Go parsers whose error texts
reach the user (strconv.ParseBool/ParseUint/ParseInt, time.ParseDuration, go-units
RAMInBytes) and ``suggest`` is BuildKit's "did you mean" wrapper.  Everything rejected
raises ``Invalid``, which the instruction layer turns into a positioned
``DockerfileError``; nothing here knows about nodes or files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from ._suggest import closest

__all__ = [
    "BOOL", "STRING", "STRINGS", "Flags", "Invalid", "go_bool", "go_duration", "go_int32",
    "go_quote", "go_uint", "ram_in_bytes", "suggest",
]


class Invalid(Exception):
    """A rejected input, turned into a positioned ``DockerfileError`` by the instruction
    layer (``_instructions``) before it leaves the frontend.  ``at`` is the text to point at."""

    def __init__(self, message: str, at: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.at = at


# --------------------------------------------------------------------------- Go values

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_quote(text: str) -> str:
    """Go's ``%q`` for the texts that appear in messages."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def go_bool(text: str) -> bool | None:
    """strconv.ParseBool; None when invalid."""
    if text in _GO_TRUE:
        return True
    return False if text in _GO_FALSE else None


def go_uint(text: str, base: int, bits: int = 32) -> int | None:
    """strconv.ParseUint(text, base, bits); None when invalid or out of range."""
    digits = "01234567" if base == 8 else "0123456789"
    if not text or len(text) > 40 or any(ch not in digits for ch in text):
        return None
    value = int(text, base)
    return value if value < 1 << bits else None


def go_int32(text: str, flag: str) -> int:
    """strconv.ParseInt(text, 10, 32) with Go's error texts."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise Invalid(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax", flag)
    value = int(text) if len(text) < 40 else 1 << 40
    if not -(1 << 31) <= value < 1 << 31:
        raise Invalid(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range", flag)
    return value


_DURATION_UNITS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6,
                   "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")


def go_duration(text: str, at: str) -> int:
    """time.ParseDuration, in nanoseconds, with Go's error texts."""
    rest, sign = text, 1
    if rest[:1] in ("+", "-"):
        sign, rest = (-1 if rest[0] == "-" else 1), rest[1:]
    if rest == "0":
        return 0
    invalid = Invalid(f"time: invalid duration {go_quote(text)}", at)
    if not rest:
        raise invalid
    total = Fraction(0)
    while rest:
        number = _NUMBER.match(rest)
        assert number is not None  # the pattern matches the empty string
        whole, frac = number.group(1), number.group(2) or ""
        if (not whole and not frac) or len(whole) > 30:
            raise invalid  # Go: no digits, or an overflowing integer part
        frac = frac[:30]  # Go ignores digits beyond its precision
        rest = rest[number.end():]
        unit = _UNIT.match(rest)
        assert unit is not None
        if not unit.group(0):
            raise Invalid(f"time: missing unit in duration {go_quote(text)}", at)
        if unit.group(0) not in _DURATION_UNITS:
            raise Invalid(f"time: unknown unit {go_quote(unit.group(0))} in duration "
                           f"{go_quote(text)}", at)
        value = Fraction(int(whole or "0")) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
        total += value * _DURATION_UNITS[unit.group(0)]
        rest = rest[unit.end():]
    if total >= 1 << 63:
        raise invalid
    return sign * int(total)


_RAM = re.compile(r"([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?")


def ram_in_bytes(text: str) -> int | None:
    """go-units RAMInBytes (binary multiples); None when invalid."""
    match = _RAM.fullmatch(text)
    if match is None or match.group(1).count(".") > 1:
        return None
    power = " kmgtp".index(match.group(2).lower()) if match.group(2) else 0
    size = float(match.group(1)[:30]) * 1024**power
    return int(size) if size < 2**63 else None


def suggest(message: str, value: str, options: Sequence[str]) -> str:
    """BuildKit's suggest.WrapError (case-sensitive): the closest option under distance 3."""
    best = closest(value, options)
    return f"{message} (did you mean {best}?)" if best else message



# --------------------------------------------------------------------------- flags

BOOL, STRING, STRINGS = "bool", "string", "strings"


class Flags:
    """The flags one instruction accepts, parsed as BuildKit's BFlags parses them."""

    def __init__(self, words: Sequence[str], spec: dict[str, str]) -> None:
        self.spec = spec
        self.used: dict[str, str] = {}
        self.values: dict[str, list[str]] = {}
        for raw in words:
            if raw == "--":
                break
            self._take(raw)

    def _take(self, raw: str) -> None:
        word = raw  # the parser has removed quotes and escapes, as BuildKit's does
        if not word.startswith("--"):
            raise Invalid(f"arg should start with -- : {word}", raw)
        name, has_value, value = word[2:].partition("=")
        kind = self.spec.get(name)
        if kind is None:
            raise Invalid(suggest(f"unknown flag: --{name}", name, list(self.spec)), raw)
        if name in self.used and kind != STRINGS:
            raise Invalid(f"duplicate flag specified: {name}", raw)
        self.used[name] = raw
        self.values.setdefault(name, []).append(self._value(kind, name, has_value, value, raw))

    @staticmethod
    def _value(kind: str, name: str, has_value: str, value: str, raw: str) -> str:
        if kind == BOOL:
            if has_value and not value:
                raise Invalid(f"missing a value on flag: {name}", raw)
            if value.lower() not in ("", "true", "false"):
                raise Invalid(f"expecting boolean value for flag {name}, not: {value}", raw)
            return value.lower() or "true"
        if not has_value:
            raise Invalid(f"missing a value on flag: {name}", raw)
        return value

    def string(self, name: str) -> str | None:
        values = self.values.get(name)
        return values[-1] if values else None

    def strings(self, name: str) -> tuple[str, ...]:
        return tuple(self.values.get(name, ()))

    def bool(self, name: str) -> bool:
        return self.string(name) == "true"

