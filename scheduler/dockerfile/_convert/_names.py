"""Texts as BuildKit writes them: vertex names and image-history lines (Go formatting)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..._platform import Platform
from .._goquote import go_quote
from ._state import StageState


def go_quote_list(items: Sequence[str]) -> str:
    """Go's ``%q`` of a ``[]string``: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(item) for item in items) + "]"


def go_list(items: Sequence[str]) -> str:
    """Go's ``%v`` of a ``[]string``: ``[a b]``."""
    return "[" + " ".join(items) + "]"


def go_duration(nanoseconds: int) -> str:
    """Go's ``time.Duration.String()``."""
    if nanoseconds == 0:
        return "0s"
    sign, value = ("-", -nanoseconds) if nanoseconds < 0 else ("", nanoseconds)
    if value < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if value >= size:
                return sign + _trim(value / size) + unit
    hours, rest = divmod(value, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _trim(rest / 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _trim(number: float) -> str:
    text = f"{number:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def uppercase_command(text: str) -> str:
    keyword, _, rest = text.partition(" ")
    return keyword.upper() + (" " + rest if rest else "")


def prefix_command(state: StageState, text: str, *, multi_platform: bool,
                   platform: Platform | None, target: Platform | None = None) -> str:
    """``[linux/arm64 build 2/4] RUN make``; counts the command (BuildKit's prefixCommand)."""
    if state.cmd_total == 0:
        return text
    out = "["
    if multi_platform and platform is not None:
        out += str(platform) + _cross_suffix(platform, target) + " "
    if state.stage_name:
        out += state.stage_name + " "
    state.cmd_index += 1
    width = int(1 + math.log10(state.cmd_total))
    out += f"{state.cmd_index:>{width}}/{state.cmd_total}] "
    if state.on_build_prefix:
        out += "ONBUILD "
    return out + text


def _cross_suffix(base: Platform, target: Platform | None) -> str:
    if target is None:
        return ""
    if target.os == base.os and target.architecture != base.architecture:
        variant = f"/{target.variant}" if target.variant else ""
        return f"->{target.architecture}{variant}"
    if target.os != base.os:
        return f"->{target}"
    return ""
