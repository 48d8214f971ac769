"""Reading a segment's media bytes whether it is stored plain or encrypted at rest.

Everything that needs a segment's fMP4 (playback planning, export copies, recovery, ``nvr verify`` with the master
key) opens it here, so encryption at rest is one decision in one place: :func:`open_plain` gives a seekable,
read-only view of the plaintext. For a plain segment that is the file itself; for an encrypted one
(storage.crypt) it decrypts only the records a read touches, authenticating each, with the data key unwrapped from
the segment's sidecar (storage.keyring) by a master key.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from integrity import suites
from nvr.errors import Kind
from storage import crypt, fmp4
from storage.keyring import SIDECAR_SUFFIX, Keyring, KeyringError, unwrap
from storage.volumes import fsync_dir


def sidecar_path(path: Path) -> Path:
    """The wrapped data key of the segment at ``path`` (``<segment>.key``)."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def segment_name(volume_id: str, rel_path: str) -> str:
    """The name a data key's wrap is bound to (its associated data): a sidecar copied to another segment fails."""
    return f"{volume_id}/{rel_path}"


def data_key(path: Path, keyring: Keyring | None, name: str) -> tuple[str, bytes]:
    """(cipher, data key) of an encrypted segment; ``master_key_missing`` when there is no keyring or no key."""
    if keyring is None:
        raise KeyringError(
            Kind.UNAVAILABLE,
            "master_key_missing",
            f"{path.name} is encrypted at rest and no master key store is configured",
        )
    return unwrap(keyring, sidecar_path(path), name)


class PlainView(io.RawIOBase):
    """The plaintext of an encrypted segment as a seekable read-only file (one decrypted record cached)."""

    def __init__(self, reader: crypt.DecryptingReader) -> None:
        super().__init__()
        self._r = reader
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None
        self.size = reader.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def _record_at(self, pos: int) -> tuple[int, bytes] | None:
        if self._cached is not None and self._cached[0] <= pos < self._cached[0] + len(self._cached[1]):
            return self._cached
        for rec in self._r.records:
            if rec.plain_offset <= pos < rec.plain_offset + rec.plain_bytes:
                self._cached = (rec.plain_offset, self._r.record(rec))
                return self._cached
        return None

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            found = self._record_at(self._pos)
            if found is None:
                break
            start, data = found
            lo = self._pos - start
            n = min(len(data) - lo, len(view) - done)
            view[done : done + n] = data[lo : lo + n]
            done += n
            self._pos += n
        return done


def open_plain(path: Path, encryption: str | None, keyring: Keyring | None, name: str) -> BinaryIO:
    """A seekable read-only view of the segment's fMP4. ``encryption`` is the row's (None: a plain file).

    Raises ``FileNotFoundError``/``OSError`` for a missing file, ``master_key_missing``/``data_key_*`` (KeyringError)
    when the data key cannot be had, ``encrypted_file_*`` for a damaged or unfinished encrypted file, and
    ``ciphertext_invalid`` (from a read) when a record does not authenticate.
    """
    if encryption is None:
        return open(path, "rb")
    _cipher, key = data_key(path, keyring, name)
    return open_view(path, key)


def open_view(path: Path, key: bytes) -> BinaryIO:
    """The buffered plaintext view of an encrypted segment, given its data key."""
    return io.BufferedReader(PlainView(crypt.DecryptingReader(path, key)), buffer_size=256 << 10)  # type: ignore[return-value]


def plain_size(path: Path) -> int:
    """The plaintext size of an encrypted segment, from its record heads (no key needed)."""
    _cipher, _header, records, _tail = crypt.scan(path)
    return sum(r.plain_bytes for r in records)


@dataclass(frozen=True)
class EncryptedRecovery:
    """What :func:`recover_encrypted` did to an encrypted ``.partial``."""

    action: str
    """``untouched`` (it was finished: final record, nothing after), ``rewritten`` (cut back to its last complete
    fragment and re-sealed), or ``unusable`` (no init section or no complete fragment)."""
    original_size: int
    new_size: int
    fragments_kept: int
    plain_digest: str | None
    stored_digest: str | None
    closed: bool
    """The muxer had finished the file (an ``mfra`` closes the plaintext)."""


def recover_encrypted(path: Path, cipher: str, key: bytes, hash_alg: str) -> EncryptedRecovery:
    """Cut an encrypted ``.partial`` back to its last complete fragment, as fmp4.truncate_to_complete does for a
    plain one. Records are authenticated one by one; the incomplete record a crash leaves is dropped.

    A file not cleanly finished is rewritten, not cut in place: the kept plaintext is sealed again under the same
    data key with a fresh random nonce prefix into ``<path>.recovering``, fsynced, then renamed over ``path``, so
    no nonce is used twice for different bytes and the old file goes only once the new one is durable. Raises
    ``encrypted_file_invalid``/``ciphertext_invalid`` for a file that is not what the recorder writes (the caller
    sets it aside)."""
    original = path.stat().st_size
    reader = crypt.DecryptingReader(path, key, require_final=False)
    if reader.cipher != cipher:
        raise crypt.EncryptedFileError(
            "encrypted_file_invalid", f"{path}: sealed with {reader.cipher}, its journal says {cipher}"
        )
    _c, _h, records, tail = crypt.scan(path)
    finished = bool(records) and records[-1].final and tail == 0
    plain = reader.read_all()
    result = fmp4.scan(io.BytesIO(plain))
    if result.init_end is None or not result.fragments:
        return EncryptedRecovery("unusable", original, original, 0, None, None, False)
    closed = finished and result.tail == "clean" and result.has_mfra
    if finished and result.tail == "clean":
        stored = suites.file_digest(hash_alg, path)
        return EncryptedRecovery(
            "untouched", original, original, len(result.fragments), suites.digest(hash_alg, plain), stored, closed
        )
    kept = plain[: result.complete_end]
    tmp = path.with_name(path.name + ".recovering")
    tmp.unlink(missing_ok=True)  # a crash during an earlier recovery: the .partial is still the original
    w = crypt.EncryptingWriter(tmp, cipher, key, hash_alg)
    try:
        for frag_start in range(0, len(kept), 1 << 20):
            w.write(kept[frag_start : frag_start + (1 << 20)])
            w.seal()
        w.finish()
        w.fsync()
    finally:
        w.close()
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return EncryptedRecovery(
        "rewritten", original, w.stored_size, len(result.fragments), w.plain_hexdigest(), w.hexdigest(), False
    )


def plain_checker(keyring: Keyring) -> Callable[[Any, Path], str | None]:
    """``nvr verify``'s check of an encrypted segment's plaintext (integrity.verify_archive.PlainCheck): decrypt
    with the master key, authenticate every record, compare the plaintext digest with the row's."""

    def check(row: Any, path: Path) -> str | None:
        _cipher, key = data_key(path, keyring, segment_name(row.volume_id, row.rel_path))
        found = crypt.DecryptingReader(path, key).plain_digest(row.hash_alg)
        if found != row.plain_digest:
            return f"{row.hash_alg} {found[:16]}… != recorded {str(row.plain_digest)[:16]}…"
        return None

    return check
