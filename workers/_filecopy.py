"""Copying one regular file's bytes the cheapest way the kernel offers.

``copy_bytes`` moves a whole file between two open descriptors with ``copy_file_range``
(a reflink on filesystems that share extents, XFS and btrfs; an in-kernel copy
elsewhere), falling back to ``sendfile`` where the pair of filesystems refuses it (across
filesystem types since Linux 5.19, overlayfs on some kernels).  ``copy_new_file`` makes
the copy as a new file and sets its owner, mode and times on the open descriptor: no
path is looked up again, which for a tree of small files is most of the cost
(``shutil.copyfile`` stats both paths and wraps both in Python file objects).
"""

from __future__ import annotations

import errno
import os

__all__ = ["copy_bytes", "copy_new_file"]

_CHUNK = 1 << 30
#: errors after which ``copy_file_range`` is not tried again for this pair of files
_UNSUPPORTED = frozenset((errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                          errno.EBADF))
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SOURCE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def copy_bytes(reader: int, writer: int) -> None:
    """Every byte from ``reader``'s offset to its end, appended at ``writer``'s offset.
    Where ``copy_file_range`` stops short of the size ``fstat`` gives (some filesystems
    answer 0 for a file they cannot copy in the kernel), ``sendfile`` does the rest."""
    try:
        while os.copy_file_range(reader, writer, _CHUNK):
            pass
    except OSError as err:
        if err.errno not in _UNSUPPORTED:
            raise
    else:
        if os.lseek(reader, 0, os.SEEK_CUR) >= os.fstat(reader).st_size:
            return
    while os.sendfile(writer, reader, None, _CHUNK):
        pass


def copy_new_file(source: str | os.PathLike[str], target: str | os.PathLike[str], *,
                  mode: int, owner: tuple[int, int] | None = None,
                  times: bool = True) -> os.stat_result:
    """Copy the regular file ``source`` to the new file ``target`` (an existing one is an
    error): owned by ``owner`` when given, with the permission bits of ``mode`` (set after
    the owner: a chown clears setuid), and ``source``'s access and modification times
    when ``times``.  Returns the ``fstat`` of ``source`` taken once its bytes were
    read (the times given to ``target``)."""
    reader = os.open(source, _SOURCE)
    try:
        writer = os.open(target, _NEW, 0o600)
        try:
            copy_bytes(reader, writer)
            info = os.fstat(reader)
            if owner is not None:
                os.fchown(writer, *owner)
            os.fchmod(writer, mode & 0o7777)
            if times:
                os.utime(writer, ns=(info.st_atime_ns, info.st_mtime_ns))
        finally:
            os.close(writer)
    finally:
        os.close(reader)
    return info
