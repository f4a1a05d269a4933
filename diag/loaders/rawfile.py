"""Positional reads from a checkpoint file, with readahead kept ahead of the reader.

Statistics are computed in cache-sized blocks while the disk fetches the next ones, so a
cold read overlaps computing with I/O instead of alternating between them. Reads go into
caller-owned buffers: no file is memory-mapped, so pages already visited never count
towards the process's resident memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from diag.errors import InputError

# How far ahead of the last read the kernel is asked to fetch. Enough to keep the disk busy
# while a block is being reduced; small enough not to evict what we still need.
READAHEAD_BYTES = 32 * 1024 * 1024
_ADVICE_STEP = 8 * 1024 * 1024


class RawFile:
    """One open file, read by offset. Opened lazily, closed by `close()`."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.path = path
        self.size = path.stat().st_size if size is None else size
        self._fd: int | None = None
        self._advised = 0  # file offset up to which readahead has been requested

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return self._fd

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._open(), length, offset)

    def readinto(self, offset: int, view: memoryview, what: str = "a tensor") -> None:
        """Fill `view` from `offset`; a short read means the file was truncated."""
        fd = self._open()
        self._readahead(offset + len(view))
        got = 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n <= 0:
                raise InputError(self.path, f"truncated: {what}'s bytes end early")
            got += n

    def _readahead(self, end: int) -> None:
        if not hasattr(os, "posix_fadvise") or self._fd is None:
            return
        if end < self._advised - 2 * READAHEAD_BYTES:
            self._advised = end  # a jump backwards: start a new window here
        want = min(end + READAHEAD_BYTES, self.size)
        if want - self._advised >= _ADVICE_STEP or (want == self.size > self._advised):
            start = max(end, self._advised)
            os.posix_fadvise(self._fd, start, want - start, os.POSIX_FADV_WILLNEED)
            self._advised = want

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class FileSpan:
    """Where a tensor's bytes lie, contiguous and in row-major order, inside a file."""

    file: RawFile
    offset: int
    nbytes: int
    # The CRC-32 these bytes must have, when they are exactly one zip entry (torch zips).
    crc32: int | None = None
