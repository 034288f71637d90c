"""Platform specifiers, normalised as containerd's Parse + Normalize do (what buildx and
BuildKit apply to --platform and FROM --platform)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.scheduler._errors import UsageError
from dockyard.scheduler._platform import Platform, default_platform, parse_platform, parse_platforms

HOST = default_platform()

# specifier -> str() of the normalised platform
NORMALISED = [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/x86-64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v2", "linux/amd64/v2"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/aarch64", "linux/arm64"),
    ("linux/arm64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/arm64/8", "linux/arm64"),
    ("linux/aarch64/v8", "linux/arm64"),
    ("linux/arm64/v9", "linux/arm64/v9"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/v7", "linux/arm/v7"),
    ("linux/arm/v6", "linux/arm/v6"),
    ("linux/arm/6", "linux/arm/v6"),
    ("linux/arm/5", "linux/arm/v5"),
    ("linux/arm/8", "linux/arm/v8"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"),
    ("linux/i386", "linux/386"),
    ("linux/386", "linux/386"),
    ("linux/ppc64le", "linux/ppc64le"),
    ("linux/s390x", "linux/s390x"),
    ("linux/riscv64", "linux/riscv64"),
    ("LINUX/ARM64", "linux/arm64"),
    ("Linux/AArch64/V8", "linux/arm64"),
    ("macos/arm64", "darwin/arm64"),
    ("windows/amd64", "windows/amd64"),
    ("linux/unknownarch", "linux/unknownarch"),   # two parts: not checked against a list
    (" linux/amd64 ", "linux/amd64"),
    # one word: a known OS takes the machine's arch; otherwise a known arch, the machine's OS
    ("linux", f"linux/{HOST.architecture}" + (f"/{HOST.variant}" if HOST.variant else "")),
    ("amd64", f"{HOST.os}/amd64"),
    ("x86_64", f"{HOST.os}/amd64"),
    ("aarch64", f"{HOST.os}/arm64"),
    ("arm", f"{HOST.os}/arm/v7"),
    ("armel", f"{HOST.os}/arm/v6"),
]


@pytest.mark.parametrize(("specifier", "expected"), NORMALISED)
def test_parse_platform(specifier: str, expected: str) -> None:
    assert str(parse_platform(specifier)) == expected


# specifier -> exact message
BAD = [
    ("", "invalid platform '': component '' must match [A-Za-z0-9_.-]+"),
    ("linux/", "invalid platform 'linux/': component '' must match [A-Za-z0-9_.-]+"),
    ("linux//amd64", "invalid platform 'linux//amd64': component '' must match [A-Za-z0-9_.-]+"),
    ("linux/am d64", "invalid platform 'linux/am d64': component 'am d64' must match "
                     "[A-Za-z0-9_.-]+"),
    ("linux/amd64/v8/x", "invalid platform 'linux/amd64/v8/x': too many components"),
    ("foo", "invalid platform 'foo': unknown operating system or architecture"),
]


@pytest.mark.parametrize(("specifier", "message"), BAD)
def test_bad_platform(specifier: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_platform(specifier)
    assert caught.value.message == message


LISTS = [
    ("linux/amd64", [Platform("linux", "amd64")]),
    ("linux/amd64,linux/arm64", [Platform("linux", "amd64"), Platform("linux", "arm64")]),
    ("linux/arm64, linux/aarch64,linux/amd64",
     [Platform("linux", "arm64"), Platform("linux", "amd64")]),
    ("linux/arm,linux/arm/v7,linux/arm/v6",
     [Platform("linux", "arm", "v7"), Platform("linux", "arm", "v6")]),
]


@pytest.mark.parametrize(("specifiers", "expected"), LISTS)
def test_parse_platforms(specifiers: str, expected: list[Platform]) -> None:
    assert parse_platforms(specifiers) == expected


@pytest.mark.parametrize("specifiers", ["linux/amd64,", ",linux/amd64", "linux/amd64,,x"])
def test_empty_entry_in_platform_list(specifiers: str) -> None:
    with pytest.raises(UsageError, match="empty entry"):
        parse_platforms(specifiers)


def test_default_platform_is_normalised() -> None:
    assert parse_platform(str(HOST)) == HOST


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_usage_error(text: str) -> None:
    try:
        parsed = parse_platforms(text)
    except UsageError:
        return
    assert all(parse_platform(str(p)) == p for p in parsed)
