"""Platforms (``os/architecture[/variant]``), normalised the way containerd does.

``parse_platform("linux/aarch64")`` gives ``Platform("linux", "arm64")``: BuildKit and
buildx parse a specifier and then normalise it, so spellings that name the same
platform compare equal (``x86_64`` = ``amd64``, ``arm64/v8`` = ``arm64``, a bare ``arm``
is ``arm/v7``).  A one-word specifier is an OS (the machine's architecture is added) when
it is a known OS, otherwise an architecture (on the machine's OS).
"""

from __future__ import annotations

import platform as _host
import re
import sys
from dataclasses import dataclass

from ._errors import UsageError

__all__ = ["Platform", "default_platform", "normalize_arch", "parse_platform", "parse_platforms"]

_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+")

_KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js",
    "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos",
})
_KNOWN_ARCH = frozenset({
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le",
    "loong64", "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc",
    "riscv", "riscv64", "s390", "s390x", "sparc", "sparc64", "wasm",
})

# Python's machine() spellings -> the Go architecture names.
_HOST_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}


@dataclass(frozen=True, slots=True, order=True)
class Platform:
    """A target platform; ``str()`` is ``os/architecture[/variant]``.

    Construct it with ``parse_platform`` to get containerd's normalisation; the
    constructor takes the fields as given.
    """

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def _normalize_os(name: str) -> str:
    name = name.lower()
    return "darwin" if name == "macos" else name


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        return "arm", "v" + variant if variant in ("5", "6", "8") else variant
    return arch, variant


def _host_os() -> str:
    if sys.platform.startswith("win"):
        return "windows"
    return "darwin" if sys.platform == "darwin" else "linux"


def _host_arch() -> tuple[str, str]:
    machine = _host.machine().lower()
    arch = _HOST_ARCH.get(machine, machine)
    if arch == "arm":
        return "arm", "v6" if machine.startswith("armv6") else "v7"
    return arch, ""


def default_platform() -> Platform:
    """The platform of this machine (``linux/amd64`` on a usual x86 Linux box)."""
    arch, variant = _host_arch()
    return Platform(_host_os(), arch, variant)


def _parse_one_word(word: str, specifier: str) -> Platform:
    os_name = _normalize_os(word)
    if os_name in _KNOWN_OS:
        host = default_platform()
        return Platform(os_name, host.architecture, host.variant)
    arch, variant = normalize_arch(word, "")
    if arch in _KNOWN_ARCH:
        return Platform(_host_os(), arch, variant)
    raise UsageError(f"invalid platform {specifier!r}: unknown operating system or architecture",
                     hint="use os/arch[/variant], e.g. linux/amd64 or linux/arm64")


def parse_platform(specifier: str) -> Platform:
    """Parse and normalise ``os[/arch[/variant]]``, or a lone known architecture."""
    text = specifier.strip()
    parts = text.split("/")
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            raise UsageError(
                f"invalid platform {specifier!r}: component {part!r} must match [A-Za-z0-9_.-]+",
                hint="use os/arch[/variant], e.g. linux/amd64 or linux/arm64")
    if len(parts) == 1:
        return _parse_one_word(parts[0], specifier)
    if len(parts) > 3:
        raise UsageError(f"invalid platform {specifier!r}: too many components",
                         hint="use os/arch[/variant], e.g. linux/arm/v7")
    arch, variant = normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
    return Platform(_normalize_os(parts[0]), arch, variant)


def parse_platforms(specifiers: str) -> list[Platform]:
    """Parse a comma-separated list (``linux/amd64,linux/arm64``), dropping duplicates
    and keeping the first-seen order."""
    seen: list[Platform] = []
    for item in specifiers.split(","):
        if not item.strip():
            raise UsageError(f"invalid platform list {specifiers!r}: empty entry")
        parsed = parse_platform(item)
        if parsed not in seen:
            seen.append(parsed)
    return seen
