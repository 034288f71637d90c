"""A layer tar with its entries' times clamped to an epoch (``rewrite-timestamp``).

``clamp_tar_times`` reads an uncompressed tar and writes it again (PAX format) with every
modification, access and change time later than ``epoch`` set to ``epoch``, as BuildKit's
exporter rewrites a layer for ``rewrite-timestamp=true``; names, owners, modes, links,
extended attributes and contents stay as they were.  It says whether any time changed: a
layer with none later than the epoch is kept as it is (its bytes, its digest).
"""

from __future__ import annotations

import tarfile
from typing import IO, Protocol, cast

from dockyard.scheduler._errors import LayerError

__all__ = ["clamp_tar_times"]

_TIMES = ("mtime", "atime", "ctime")


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _clamp_member(member: tarfile.TarInfo, epoch: int) -> bool:
    """Clamp ``member``'s times (its header's and its PAX records'); whether any changed."""
    changed = False
    if member.mtime > epoch:
        member.mtime = epoch
        changed = True
    for key in _TIMES:
        text = member.pax_headers.get(key)
        if text is None:
            continue
        try:
            later = float(text) > epoch
        except ValueError:
            later = True  # unreadable: written again as the epoch
        if later:
            member.pax_headers = {**member.pax_headers, key: str(epoch)}
            changed = True
    return changed


def clamp_tar_times(plain: _Readable, out: _Writable, epoch: int) -> bool:
    """The tar ``plain`` written to ``out`` with its times clamped to ``epoch``; whether
    any entry had a later time.  A malformed tar is a ``LayerError``."""
    changed = False
    try:
        with tarfile.open(fileobj=cast(IO[bytes], plain), mode="r|", encoding="utf-8",
                          errors="surrogateescape") as source, \
                tarfile.open(fileobj=cast(IO[bytes], out), mode="w|", encoding="utf-8",
                             errors="surrogateescape", format=tarfile.PAX_FORMAT) as target:
            for member in source:
                changed = _clamp_member(member, epoch) or changed
                target.addfile(member, source.extractfile(member) if member.isreg() else None)
    except tarfile.TarError as err:
        raise LayerError(f"cannot rewrite the timestamps of a layer: {err}",
                         hint="the cached layer is damaged; rebuild with --no-cache") from err
    return changed
