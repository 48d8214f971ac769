"""Encrypted segment files: one authenticated record per muxer flush, so each fragment decrypts on its own.

Encryption at rest (issue 14, docs/decisions/0009-commercial-cryptography.md) keeps the recorder's guarantees: a
file is still written strictly sequentially and hashed while written, a crash still loses at most the fragment being
built, and playback still reads any byte range without decrypting the whole file. The layout::

    header   "NVRENC" 0x00 0x01 | cipher id (1 byte) | nonce prefix (7 random bytes)        16 bytes
    record   sealed length (4 bytes, big-endian) | flags (1 byte) | sealed bytes              per flush

A record's sealed bytes are ``ciphertext ‖ tag`` under the segment's own data key (AES-256-GCM or SM4-GCM,
integrity.suites) with nonce ``nonce prefix ‖ 0x00 ‖ record index (4 bytes)`` and associated data ``header ‖
record index ‖ flags``: a record moved, swapped between files, or re-flagged does not authenticate. The last record
of a finished file has flag ``FINAL`` (it may be empty), so a file cut back by whole records shows as truncated.

The recorder's muxer flushes after every packet and writes a fragment (``moof``+``mdat``) only when it is complete,
so :meth:`EncryptingWriter.seal` after each packet makes one record per fragment (the init segment is the first).
What the segment's row commits to: the digest of the stored bytes (this layout) and of the plaintext (the fMP4),
both with the suite's hash; the first verifies without the master key, the second with it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from integrity import suites
from integrity.hashing import AppendOnlyFile, open_exclusive
from nvr.errors import Kind, NvrError

MAGIC = b"NVRENC\x00\x01"
HEADER_BYTES = 16
RECORD_HEAD = struct.Struct(">IB")
FINAL = 0x01
CIPHER_IDS = {"aes-256-gcm": 1, "sm4-gcm": 2}
CIPHERS_BY_ID = {v: k for k, v in CIPHER_IDS.items()}
MAX_RECORD = 64 * 1024 * 1024
"""No muxer flush is this big (a 4K GOP is a few MiB); a length beyond it is damage, not a record."""


class EncryptedFileError(NvrError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(Kind.DATA_LOSS, code, detail)


def is_encrypted(head: bytes) -> bool:
    return head[: len(MAGIC)] == MAGIC


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + b"\x00" + index.to_bytes(4, "big")


def _aad(header: bytes, index: int, flags: int) -> bytes:
    return header + index.to_bytes(4, "big") + bytes([flags])


def _parse_header(header: bytes, path: Path) -> tuple[str, bytes]:
    if len(header) < HEADER_BYTES or not is_encrypted(header):
        raise EncryptedFileError("encrypted_file_invalid", f"{path}: not an encrypted segment file (bad header)")
    cipher = CIPHERS_BY_ID.get(header[8])
    if cipher is None:
        raise EncryptedFileError("encrypted_file_invalid", f"{path}: unknown cipher id {header[8]}")
    return cipher, header[9:16]


class EncryptingWriter(AppendOnlyFile):
    """The file-like object PyAV's muxer writes to (as integrity.hashing.HashingWriter), encrypting by record.

    ``tell`` and ``size`` count plaintext bytes (what the muxer sees); ``stored_size`` the bytes on disk.
    ``hexdigest`` is the digest of the stored bytes, ``plain_hexdigest`` that of the plaintext.
    """

    def __init__(self, path: Path, cipher: str, data_key: bytes, hash_alg: str = suites.DEFAULT_HASH) -> None:
        suites.check_cipher(cipher)
        self._f = open_exclusive(path)
        self.path = path
        self.cipher = cipher
        self.hash_alg = hash_alg
        self._key = data_key
        self._stored = suites.new_hash(hash_alg)
        self._plain = suites.new_hash(hash_alg)
        self._header = MAGIC + bytes([CIPHER_IDS[cipher]]) + os.urandom(7)
        self._pending = bytearray()
        self._index = 0
        self._finished = False
        self.size = 0
        self.stored_size = 0
        self.records = 0
        self._put(self._header)

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += self._f.write(view[written:])
        self._stored.update(data)
        self.stored_size += len(data)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._finished:
            raise OSError(f"{self.path}: encrypted segment already finished")
        self._pending += data
        self._plain.update(data)
        self.size += len(data)
        return len(data)

    def seal(self, final: bool = False) -> None:
        """Write what was written since the last seal as one record (nothing when empty, unless ``final``)."""
        if not self._pending and not final:
            return
        flags = FINAL if final else 0
        sealed = suites.seal(
            self.cipher,
            self._key,
            _nonce(self._header[9:16], self._index),
            bytes(self._pending),
            _aad(self._header, self._index, flags),
        )
        self._put(RECORD_HEAD.pack(len(sealed), flags) + sealed)
        self._pending.clear()
        self._index += 1
        self.records += 1

    def finish(self) -> None:
        """Seal what is pending and the final record; the file is then complete (caller fsyncs and closes)."""
        if not self._finished:
            self.seal()
            self.seal(final=True)
            self._finished = True

    def hexdigest(self) -> str:
        return self._stored.hexdigest()

    def plain_hexdigest(self) -> str:
        return self._plain.hexdigest()


@dataclass(frozen=True)
class Record:
    index: int
    stored_offset: int
    """Where the record's 5-byte head starts."""
    sealed_bytes: int
    plain_offset: int
    plain_bytes: int
    final: bool


def scan(path: Path) -> tuple[str, bytes, list[Record], int]:
    """(cipher, header, complete records, bytes after the last complete record) from the record heads alone;
    no key needed. A record whose head or body runs past the end of the file is the incomplete tail."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
        cipher, _prefix = _parse_header(header, path)
        records: list[Record] = []
        pos, plain, index = HEADER_BYTES, 0, 0
        while pos + RECORD_HEAD.size <= size:
            f.seek(pos)
            n, flags = RECORD_HEAD.unpack(f.read(RECORD_HEAD.size))
            if n < suites.TAG_BYTES or n > MAX_RECORD or flags & ~FINAL:
                raise EncryptedFileError("encrypted_file_invalid", f"{path}: record {index} has a damaged head")
            if pos + RECORD_HEAD.size + n > size:
                break
            body = n - suites.TAG_BYTES
            records.append(Record(index, pos, n, plain, body, bool(flags & FINAL)))
            pos += RECORD_HEAD.size + n
            plain += body
            index += 1
            if flags & FINAL:
                break
    return cipher, header, records, size - pos


class DecryptingReader:
    """Random access to an encrypted segment's plaintext: reads and authenticates only the records a range needs."""

    def __init__(self, path: Path, data_key: bytes, *, require_final: bool = True) -> None:
        self.path = path
        self.cipher, self._header, self.records, tail = scan(path)
        self._key = data_key
        complete = bool(self.records) and self.records[-1].final
        if require_final and (not complete or tail):
            raise EncryptedFileError(
                "encrypted_file_truncated",
                f"{path}: the file ends without its final record (cut short or not finished)"
                if not complete
                else f"{path}: {tail} byte(s) after the final record",
            )
        self.size = sum(r.plain_bytes for r in self.records)

    def record(self, rec: Record) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(rec.stored_offset + RECORD_HEAD.size)
            sealed = f.read(rec.sealed_bytes)
        flags = FINAL if rec.final else 0
        return suites.open_sealed(
            self.cipher,
            self._key,
            _nonce(self._header[9:16], rec.index),
            sealed,
            _aad(self._header, rec.index, flags),
            what=f"{self.path.name} record {rec.index}",
        )

    def iter_plain(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The plaintext bytes ``[start, end)``, record by record."""
        stop = self.size if end is None else min(end, self.size)
        for rec in self.records:
            lo, hi = rec.plain_offset, rec.plain_offset + rec.plain_bytes
            if hi <= start or rec.plain_bytes == 0:
                continue
            if lo >= stop:
                break
            data = self.record(rec)
            yield data[max(start - lo, 0) : min(stop, hi) - lo]

    def read_all(self) -> bytes:
        return b"".join(self.iter_plain())

    def plain_digest(self, hash_alg: str) -> str:
        h = suites.new_hash(hash_alg)
        for chunk in self.iter_plain():
            h.update(chunk)
        return h.hexdigest()


def decrypt_buffer(data: bytes | bytearray, data_key: bytes, what: str) -> bytearray:
    """The plaintext of a whole encrypted segment already in memory (playback reads and hashes the stored bytes
    once, then decrypts them from the same buffer: what was checked is what is sent). Every record must
    authenticate and the final one must end the buffer."""
    view = memoryview(data)
    if len(view) < HEADER_BYTES or not is_encrypted(bytes(view[:HEADER_BYTES])):
        raise EncryptedFileError("encrypted_file_invalid", f"{what}: not an encrypted segment file (bad header)")
    header = bytes(view[:HEADER_BYTES])
    cipher = CIPHERS_BY_ID.get(header[8])
    if cipher is None:
        raise EncryptedFileError("encrypted_file_invalid", f"{what}: unknown cipher id {header[8]}")
    out = bytearray()
    pos, index, final = HEADER_BYTES, 0, False
    while pos < len(view) and not final:
        if pos + RECORD_HEAD.size > len(view):
            break
        n, flags = RECORD_HEAD.unpack_from(view, pos)
        if n < suites.TAG_BYTES or n > MAX_RECORD or flags & ~FINAL:
            raise EncryptedFileError("encrypted_file_invalid", f"{what}: record {index} has a damaged head")
        body_at = pos + RECORD_HEAD.size
        if body_at + n > len(view):
            break
        out += suites.open_sealed(
            cipher,
            data_key,
            _nonce(header[9:16], index),
            bytes(view[body_at : body_at + n]),
            _aad(header, index, flags),
            what=f"{what} record {index}",
        )
        final = bool(flags & FINAL)
        pos = body_at + n
        index += 1
    if not final or pos != len(view):
        raise EncryptedFileError(
            "encrypted_file_truncated",
            f"{what}: the file ends without its final record" if not final else f"{what}: bytes after the final record",
        )
    return out
