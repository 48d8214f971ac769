"""Hashing of segment files: while writing (the fMP4 muxer writes strictly sequentially) and after the fact."""

from __future__ import annotations

import io
import os
from pathlib import Path

from integrity import suites
from integrity.suites import CHUNK, DEFAULT_HASH

__all__ = ["CHUNK", "AppendOnlyFile", "HashingWriter", "file_digest", "open_exclusive", "sha256_file"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    return suites.file_digest("sha256", path)


def file_digest(path: str | os.PathLike[str], alg: str = DEFAULT_HASH) -> str:
    """Digest of a file's bytes with ``alg`` (``sha256`` or ``sm3``; integrity.suites)."""
    return suites.file_digest(alg, path)


class AppendOnlyFile:
    """The file-like protocol PyAV's output needs, for writers that only ever append: ``tell`` is ``size`` (what
    the muxer has written), a seek anywhere else is refused, ``fsync`` makes the bytes durable. Subclasses set
    ``_f`` (an unbuffered file opened ``O_EXCL``) and ``size``, and implement ``write``."""

    _f: io.FileIO
    size: int

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

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed


def open_exclusive(path: Path) -> io.FileIO:
    # O_EXCL: a path derived from camera and time must never overwrite an existing file.
    return io.FileIO(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), "wb")


class HashingWriter(AppendOnlyFile):
    """A write-only, append-only file that hashes what it writes.

    It refuses to seek backwards: a muxer that rewrote earlier bytes would make the running hash wrong, and
    failing loudly is better than recording a hash that does not match the file. ``fsync`` makes the bytes
    durable before the segment's row is written (crash-safety order, docs/design/crash-safety.md).
    """

    def __init__(self, path: Path, hash_alg: str = DEFAULT_HASH) -> None:
        self._f = open_exclusive(path)
        self._h = suites.new_hash(hash_alg)
        self.hash_alg = hash_alg
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

    def hexdigest(self) -> str:
        return self._h.hexdigest()
