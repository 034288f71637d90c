"""A blob streamed from S3 by one GET that picks up where it broke: a dropped connection
or a timeout mid-body reopens the object from the next byte (a ranged GET, retried as
every call is), a bounded number of times.  What the pieces add up to is checked against
the digest by the reader above (``verified_stream``), so a splice of two different objects
cannot pass."""

from __future__ import annotations

import io
from typing import IO, Final

from botocore.exceptions import BotoCoreError

from dockyard.cache_backends._s3_client import S3Objects, transient
from dockyard.scheduler._errors import CacheError

__all__ = ["ResumingBody"]

#: How many times one body may be reopened after it broke.
RESUMES: Final = 5


class ResumingBody(io.RawIOBase):
    """The bytes of ``key`` (``size`` of them); raises ``CacheError`` when it cannot go on."""

    def __init__(self, objects: S3Objects, key: str, size: int) -> None:
        super().__init__()
        self._objects = objects
        self._key = key
        self._size = size
        # bytes delivered so far; a reopen starts here
        self._offset = 0
        # reopens left
        self._resumes = RESUMES
        self._body: IO[bytes] | None = self._open()

    def _open(self) -> IO[bytes]:
        opened = self._objects.open(self._key, self._offset)
        if opened is None:
            raise CacheError(f"S3 cache: s3://{self._objects.bucket}/{self._key} vanished "
                             "while it was read",
                             hint="a prune ran meanwhile; the build treats it as a miss")
        return opened[0]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._offset >= self._size:
            return 0
        data = self._read(len(view))
        view[:len(data)] = data
        self._offset += len(data)
        return len(data)

    def _read(self, size: int) -> bytes:
        """The next bytes; a body that ends before ``size`` bytes is a broken transfer
        (reopened), never a short blob for the digest check to condemn."""
        while True:
            assert self._body is not None, "read after close"
            try:
                data = self._body.read(size)
            except (BotoCoreError, OSError) as err:
                self._resume(err)
                continue
            if data:
                return data
            self._resume(None)

    def _resume(self, err: BaseException | None) -> None:
        if self._resumes <= 0 or (err is not None and not transient(err)):
            cause = err or EOFError(f"the body ended at byte {self._offset} of {self._size}")
            raise self._objects.error("read", self._key, cause) from err
        self._resumes -= 1
        self._reopen()

    def _reopen(self) -> None:
        if self._body is not None:
            self._body.close()
        self._body = None
        self._body = self._open()

    def close(self) -> None:
        try:
            if self._body is not None:
                self._body.close()
                self._body = None
        finally:
            super().close()
