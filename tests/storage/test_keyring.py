"""Master keys and wrapped data keys (storage.keyring): rotation re-wraps without touching footage, and a missing,
wrong, exposed or swapped key each fail with a stable code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from integrity import suites
from storage import crypt, keyring

SEGMENT = "vol-1/cam/2026/12/04/seg.mp4"


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "sm4-gcm"])
def test_wrap_unwrap_and_rotation_leave_footage_alone(tmp_path: Path, cipher: str) -> None:
    ring = keyring.Keyring(tmp_path / "master-keys")
    old = ring.create()
    assert (tmp_path / "master-keys").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "master-keys" / f"{old.key_id}.key").stat().st_mode & 0o777 == 0o600
    data_key = suites.new_key(cipher)
    seg = tmp_path / "seg.mp4"
    side = tmp_path / ("seg.mp4" + keyring.SIDECAR_SUFFIX)
    keyring.write_sidecar(side, cipher, SEGMENT, [keyring.wrap(old, cipher, SEGMENT, data_key)])
    w = crypt.EncryptingWriter(seg, cipher, data_key)
    w.write(b"\x00\x00\x00\x01" + os.urandom(3000))
    w.finish()
    w.close()
    before = seg.read_bytes()
    assert keyring.unwrap(ring, side, SEGMENT) == (cipher, data_key)
    new = ring.create()
    os.utime(tmp_path / "master-keys" / f"{new.key_id}.key", (2e9, 2e9))  # newer than the old key's file
    assert ring.active().key_id == new.key_id
    assert keyring.rewrap(ring, side, SEGMENT, new) is True
    assert keyring.rewrap(ring, side, SEGMENT, new) is False
    (tmp_path / "master-keys" / f"{old.key_id}.key").unlink()  # the old master key retired
    assert keyring.unwrap(ring, side, SEGMENT) == (cipher, data_key)
    assert seg.read_bytes() == before  # rotation rewrote the sidecar only
    assert crypt.DecryptingReader(seg, keyring.unwrap(ring, side, SEGMENT)[1]).read_all()[:4] == b"\x00\x00\x00\x01"


def test_missing_and_wrong_master_key(tmp_path: Path) -> None:
    ring = keyring.Keyring(tmp_path / "mk")
    with pytest.raises(keyring.KeyringError) as e:
        ring.active()
    assert e.value.code == "master_key_missing"
    mk = ring.create()
    side = tmp_path / "s.key"
    keyring.write_sidecar(side, "aes-256-gcm", SEGMENT, [keyring.wrap(mk, "aes-256-gcm", SEGMENT, b"k" * 32)])
    other = keyring.Keyring(tmp_path / "other")
    other.create()
    with pytest.raises(keyring.KeyringError) as e:
        keyring.unwrap(other, side, SEGMENT)
    assert e.value.code == "master_key_missing" and mk.key_id in e.value.message
    with pytest.raises(keyring.KeyringError) as e:
        keyring.unwrap(ring, side, "vol-1/another.mp4")  # a sidecar copied beside another segment
    assert e.value.code == "data_key_invalid"
    with pytest.raises(keyring.KeyringError) as e:
        keyring.unwrap(ring, tmp_path / "absent.key", SEGMENT)
    assert e.value.code == "data_key_missing"


def test_tampered_wrap_swapped_or_exposed_key_file(tmp_path: Path) -> None:
    ring = keyring.Keyring(tmp_path / "mk")
    mk = ring.create()
    side = tmp_path / "s.key"
    w = keyring.wrap(mk, "sm4-gcm", SEGMENT, b"k" * 16)
    w["wrapped"] = ("0" if w["wrapped"][0] != "0" else "1") + w["wrapped"][1:]
    keyring.write_sidecar(side, "sm4-gcm", SEGMENT, [w])
    with pytest.raises(suites.CiphertextInvalid):
        keyring.unwrap(ring, side, SEGMENT)
    path = tmp_path / "mk" / f"{mk.key_id}.key"
    path.write_text(os.urandom(32).hex())  # another key under this key's name
    with pytest.raises(keyring.KeyringError) as e:
        ring.master_keys()
    assert e.value.code == "master_key_invalid"
    path.write_text(mk.key.hex())
    os.chmod(path, 0o644)
    with pytest.raises(keyring.KeyringError) as e:
        ring.master_keys()
    assert e.value.code == "master_key_exposed"
    assert mk.key.hex() not in repr(mk)


def test_a_retired_master_key_wraps_nothing_new_but_still_opens_a_late_sidecar(tmp_path: Path) -> None:
    """A segment the recorder opened just before a rotation is wrapped under the old key only; retiring that key
    (``nvr keys master rotate --retire-old``) moves it aside rather than delete it, so the segment still opens."""
    ring = keyring.Keyring(tmp_path / "mk")
    old = ring.create()
    data_key = suites.new_key("aes-256-gcm")
    sidecar = tmp_path / "seg.mp4.key"
    keyring.write_sidecar(
        sidecar, "aes-256-gcm", "v/seg.mp4", [keyring.wrap(old, "aes-256-gcm", "v/seg.mp4", data_key)]
    )
    new = ring.create()
    ring.retire(old.key_id)
    assert [k.key_id for k in ring.master_keys()] == [new.key_id] and ring.active().key_id == new.key_id
    assert [k.key_id for k in ring.retired_keys()] == [old.key_id]
    assert keyring.unwrap(ring, sidecar, "v/seg.mp4") == ("aes-256-gcm", data_key)
    assert keyring.rewrap(ring, sidecar, "v/seg.mp4", new)  # the next rotation moves it onto the active key
    wraps = keyring.read_sidecar(sidecar)["wraps"]
    assert [w["master_key_id"] for w in wraps] == [new.key_id]  # type: ignore[index]
