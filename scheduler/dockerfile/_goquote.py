"""Go's ``strconv.Quote`` (the ``%q`` verb), as BuildKit's messages and history lines
quote strings.

Part of the parser layer, so every layer of the frontend can use it.  A Go string is
bytes: a byte that is not UTF-8 shows as ``\\xNN``; here such a byte arrives as the lone
surrogate Python's ``surrogateescape`` makes of it (U+DC80..U+DCFF), and any other lone
surrogate as Go's replacement character.  Python's ``isprintable`` stands in for Go's
``strconv.IsPrint``.
"""

from __future__ import annotations

__all__ = ["go_quote", "quote_shown"]

_SHOWN = 120  # characters of a long text an error message shows

_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def _quote_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, escaped by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return "\\ufffd"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def go_quote(text: str) -> str:
    """``text`` in double quotes with Go's escapes."""
    return '"' + "".join(_quote_char(ch) for ch in text) + '"'


def quote_shown(text: str) -> str:
    """``go_quote(text)``; a text over 120 characters cut short, with its length, so that
    an error about a huge word stays readable."""
    if len(text) <= _SHOWN:
        return go_quote(text)
    return f"{go_quote(text[:_SHOWN])}... ({len(text)} characters)"
