"""Copying a regular file's bytes the cheapest way the kernel offers.

``kernel_copy`` moves bytes between two open descriptors with ``copy_file_range`` (a
reflink on filesystems that share extents, XFS and btrfs; an in-kernel copy elsewhere),
falling back to ``sendfile`` where the pair of files refuses it (across filesystem types
since Linux 5.19, overlayfs on some kernels) or where it stops short (some filesystems
answer 0 for a file they cannot copy in the kernel).  ``copy_new_file`` makes a copy as
a new file and sets its owner, mode and times on the open descriptor: no path is looked
up again, which for a tree of small files is most of the cost (``shutil.copyfile`` stats
both paths and wraps both in Python file objects).  The exporter copies layer blobs into
tar outputs with ``kernel_copy`` too.
"""

from __future__ import annotations

import errno
import os

__all__ = ["copy_bytes", "copy_new_file", "kernel_copy"]

#: ``copy_file_range`` errors that mean "not between these files": ``sendfile`` then.
_NO_COPY_RANGE = frozenset((errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                            errno.EBADF, errno.EPERM))
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SOURCE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def kernel_copy(source: int, dest: int, size: int, offset: int = 0) -> int:
    """Up to ``size`` bytes of ``source`` from ``offset``, written at ``dest``'s position
    (which moves on; ``source``'s does not); the bytes copied, fewer only when ``source``
    ends first.  An ``OSError`` other than a refusal is the caller's to translate."""
    copied = 0
    use_range = True
    while copied < size:
        try:
            if use_range:
                done = os.copy_file_range(source, dest, size - copied, offset + copied)
            else:
                done = os.sendfile(dest, source, offset + copied, size - copied)
        except OSError as err:
            if use_range and err.errno in _NO_COPY_RANGE:
                use_range = False
                continue
            raise
        if done == 0:
            if not use_range:
                break
            use_range = False  # short: sendfile reads what is really there
            continue
        copied += done
    return copied


def copy_bytes(reader: int, writer: int) -> None:
    """All of ``reader`` (its size now), written at ``writer``'s position."""
    kernel_copy(reader, writer, os.fstat(reader).st_size)


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
