"""Encrypted segment files (storage.crypt): records decrypt one by one, ranges read without the whole file, and a
wrong key, an altered byte, a moved record or a cut-off file each fail with a stable code, never plaintext."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from integrity import suites
from storage import crypt

START_CODE = b"\x00\x00\x00\x01"
CIPHERS = ["aes-256-gcm", "sm4-gcm"]


def _fragments() -> list[bytes]:
    # Stand-ins for an init segment and H.264 fragments: Annex B start codes a scanner would find in clear files.
    return [b"ftyp" + os.urandom(100)] + [START_CODE + bytes([0x65]) + os.urandom(5000 + i * 700) for i in range(6)]


def _write(path: Path, cipher: str, key: bytes, frags: list[bytes], *, finish: bool = True) -> crypt.EncryptingWriter:
    w = crypt.EncryptingWriter(path, cipher, key, "sm3" if cipher == "sm4-gcm" else "sha256")
    for frag in frags:
        # The muxer may hand one fragment over in several writes; a seal after the packet makes one record.
        w.write(frag[:1000])
        w.write(frag[1000:])
        w.seal()
    if finish:
        w.finish()
    w.fsync()
    w.close()
    return w


@pytest.mark.parametrize("cipher", CIPHERS)
def test_round_trip_digests_and_no_plaintext_on_disk(tmp_path: Path, cipher: str) -> None:
    key = suites.new_key(cipher)
    frags = _fragments()
    path = tmp_path / "seg.mp4"
    w = _write(path, cipher, key, frags)
    stored = path.read_bytes()
    plain = b"".join(frags)
    assert START_CODE not in stored
    assert w.size == len(plain) and w.stored_size == len(stored)
    assert w.hexdigest() == suites.file_digest(w.hash_alg, path)
    assert w.plain_hexdigest() == suites.digest(w.hash_alg, plain)
    r = crypt.DecryptingReader(path, key)
    assert r.cipher == cipher
    assert [rec.plain_bytes for rec in r.records] == [len(f) for f in frags] + [0]
    assert r.read_all() == plain
    assert r.plain_digest(w.hash_alg) == w.plain_hexdigest()


@pytest.mark.parametrize("cipher", CIPHERS)
def test_each_fragment_and_any_range_decrypts_alone(tmp_path: Path, cipher: str) -> None:
    key = suites.new_key(cipher)
    frags = _fragments()
    path = tmp_path / "seg.mp4"
    _write(path, cipher, key, frags)
    r = crypt.DecryptingReader(path, key)
    for rec, frag in zip(r.records, frags, strict=False):
        assert r.record(rec) == frag
    plain = b"".join(frags)
    for start, end in [(0, 1), (99, 5200), (6000, 6001), (len(plain) - 10, len(plain)), (0, len(plain))]:
        assert b"".join(r.iter_plain(start, end)) == plain[start:end]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_key_and_altered_byte_fail_as_ciphertext_invalid(tmp_path: Path, cipher: str) -> None:
    key = suites.new_key(cipher)
    path = tmp_path / "seg.mp4"
    _write(path, cipher, key, _fragments())
    with pytest.raises(suites.CiphertextInvalid) as e:
        crypt.DecryptingReader(path, suites.new_key(cipher)).read_all()
    assert e.value.code == "ciphertext_invalid"
    data = bytearray(path.read_bytes())
    data[crypt.HEADER_BYTES + crypt.RECORD_HEAD.size + 50] ^= 0x01  # inside the init record's ciphertext
    path.write_bytes(bytes(data))
    r = crypt.DecryptingReader(path, key)
    with pytest.raises(suites.CiphertextInvalid):
        r.record(r.records[0])
    assert r.record(r.records[1])[:4] == START_CODE  # the other fragments still decrypt


def test_records_swapped_between_files_do_not_authenticate(tmp_path: Path) -> None:
    cipher = "aes-256-gcm"
    key = suites.new_key(cipher)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    _write(a, cipher, key, _fragments())
    _write(b, cipher, key, _fragments())
    ra = crypt.DecryptingReader(a, key)
    # b's header (another nonce prefix) with a's records: same key, yet nothing decrypts.
    mixed = b.read_bytes()[: crypt.HEADER_BYTES] + a.read_bytes()[crypt.HEADER_BYTES :]
    b.write_bytes(mixed)
    rb = crypt.DecryptingReader(b, key)
    with pytest.raises(suites.CiphertextInvalid):
        rb.record(rb.records[1])
    assert ra.record(ra.records[1])


@pytest.mark.parametrize("cipher", CIPHERS)
def test_cut_off_file_is_named_truncated_and_complete_records_survive(tmp_path: Path, cipher: str) -> None:
    key = suites.new_key(cipher)
    frags = _fragments()
    path = tmp_path / "seg.mp4.partial"
    # A crash: the writer never finished, and the last record was half written.
    _write(path, cipher, key, frags, finish=False)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 300)
    with pytest.raises(crypt.EncryptedFileError) as e:
        crypt.DecryptingReader(path, key)
    assert e.value.code == "encrypted_file_truncated"
    r = crypt.DecryptingReader(path, key, require_final=False)
    assert r.read_all() == b"".join(frags[:-1])
    _cipher, _header, records, tail = crypt.scan(path)
    assert len(records) == len(frags) - 1 and tail > 0


def test_not_an_encrypted_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(64))
    with pytest.raises(crypt.EncryptedFileError) as e:
        crypt.DecryptingReader(path, suites.new_key("aes-256-gcm"))
    assert e.value.code == "encrypted_file_invalid"
    assert not crypt.is_encrypted(path.read_bytes())
