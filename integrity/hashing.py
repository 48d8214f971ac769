"""Hashing of segment files: while writing (the fMP4 muxer writes strictly sequentially) and after the fact."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashingWriter:
    """A write-only, append-only file that hashes what it writes.

    It refuses to seek backwards: a muxer that rewrote earlier bytes would make the running hash wrong, and
    failing loudly is better than recording a hash that does not match the file. ``fsync`` makes the bytes
    durable before the segment's row is written (crash-safety order, docs/design/crash-safety.md).
    """

    def __init__(self, path: Path) -> None:
        # O_EXCL: a path derived from camera and time must never overwrite an existing file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._f = os.fdopen(fd, "wb", buffering=0)
        self._h = hashlib.sha256()
        self.path = path
        self.size = 0

    # The file-like protocol PyAV's output needs.
    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        total = len(view)
        written = 0
        while written < total:
            written += self._f.write(view[written:])
        self._h.update(view)
        self.size += total
        return total

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = {os.SEEK_SET: offset, os.SEEK_CUR: self.size + offset, os.SEEK_END: self.size + offset}[whence]
        if target != self.size:
            raise OSError(f"segment writer is append-only; refused seek to {target} at {self.size}")
        return self.size

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def fsync(self) -> None:
        os.fsync(self._f.fileno())

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed
