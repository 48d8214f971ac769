"""Encryption at rest, recorded for real: the demo RTSP server feeds the recorder, which writes each segment encrypted
under its own data key. The files hold no plaintext media, decrypt to footage that decodes and matches the row's
plaintext digest, verify with and without the master key, survive SIGKILL mid-segment, and a missing master key stops
recording instead of writing plaintext."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integrity import keys
from integrity.verify_archive import verify_archive
from nvr.models import RecorderState
from nvr.recorder.recovery import recover_all
from nvr.recorder.supervisor import Supervisor
from nvr.runtime import Runtime
from storage import crypt, fmp4
from storage.alarms import storage_alarms
from storage.keyring import Keyring
from storage.segment_io import open_plain, plain_checker, segment_name, sidecar_path
from tests.support.media import top_boxes
from tests.support.recording import FPS, GOP_S, add_camera, decode_all, segments, wait_for

PLAINTEXT_MARKS = (b"ftyp", b"moov", b"moof", b"mdat", b"avc1", b"\x00\x00\x00\x01")
"""Box names and the Annex B start code: any of them in a stored file would be plaintext showing through (random
bytes hold a given 4-byte string about once in 4 GiB)."""


@pytest.fixture
def enc_runtime(settings_factory):
    rt = Runtime.open(settings_factory(encryption_at_rest=True))
    rt.init_default_volume()
    yield rt
    rt.db.dispose()


def _plain(rt: Runtime, seg, path: Path) -> bytes:
    with open_plain(
        path, seg.encryption, Keyring(rt.settings.master_keys_dir), segment_name(seg.volume_id, seg.rel_path)
    ) as f:
        return f.read()


def _record(rt: Runtime, url: str, n: int) -> None:
    add_camera(rt, "cam1", url)
    sup = Supervisor(rt.recorder_context(), sync_seconds=0.5)
    sup.start()
    try:
        wait_for(lambda: len(segments(rt, "cam1")) >= n, 30, f"{n} segments")
    finally:
        sup.stop()


def _check_ciphertext_and_plaintext(rt: Runtime, cipher: str, hash_alg: str, tmp_path: Path) -> list:
    rows = segments(rt, "cam1")
    assert rows
    for seg, path in rows:
        assert (seg.encryption, seg.hash_alg) == (cipher, hash_alg)
        stored = path.read_bytes()
        assert crypt.is_encrypted(stored) and seg.bytes == len(stored)
        for mark in PLAINTEXT_MARKS:
            assert mark not in stored, f"{path.name} shows {mark!r}"
        side = sidecar_path(path)
        assert stat.S_IMODE(side.stat().st_mode) == 0o600
        plain = _plain(rt, seg, path)
        from integrity import suites

        assert suites.digest(hash_alg, plain) == seg.plain_digest
        assert suites.digest(hash_alg, stored) == seg.sha256
        mdats = [plain[a : min(b, a + 48)] for box, a, b in top_boxes(plain) if box == b"mdat"]
        assert mdats and not any(m in stored for m in mdats), "plaintext media bytes in the stored file"
        out = tmp_path / f"{seg.seq}.mp4"
        out.write_bytes(plain)
        frames, first_key = decode_all(out)
        assert first_key and frames == seg.frames
    return rows


def test_recorded_segments_are_ciphertext_that_decrypts_to_the_footage_and_verifies(
    enc_runtime, demo_server, tmp_path
) -> None:
    rt = enc_runtime
    _record(rt, demo_server.url("cam1"), 2)
    rows = _check_ciphertext_and_plaintext(rt, "aes-256-gcm", "sha256", tmp_path)
    ring = Keyring(rt.settings.master_keys_dir)
    report = verify_archive(rt.db, rt.settings, plain_check=plain_checker(ring))
    assert report.ok, "\n".join(p.line() for p in report.problems)
    assert report.encrypted == report.plaintext_checked == len(rows) and report.plaintext_unchecked is None

    # An auditor without the master key checks the stored bytes, and is told the plaintext was not checked.
    away = tmp_path / "master-keys-away"
    shutil.move(rt.settings.master_keys_dir, away)
    report = verify_archive(rt.db, rt.settings)
    assert report.ok and report.plaintext_checked == 0 and report.plaintext_unchecked is not None
    # The server's own check treats footage no master key opens as lost (deleting key files shreds it).
    report = verify_archive(rt.db, rt.settings, plain_check=plain_checker(ring))
    assert {(p.kind, p.seq) for p in report.problems} == {("missing_file", seg.seq) for seg, _ in rows}
    assert all("no master key here opens its data key" in p.detail for p in report.problems)
    shutil.move(away, rt.settings.master_keys_dir)

    # One flipped stored byte, and a wrapped key gone: each named.
    seg, path = rows[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    sidecar_path(rows[-1][1]).unlink()
    report = verify_archive(rt.db, rt.settings, plain_check=plain_checker(ring))
    found = {(p.kind, p.seq) for p in report.problems}
    assert ("hash_mismatch", seg.seq) in found
    assert ("missing_file", rows[-1][0].seq) in found
    assert any("wrapped data key" in p.detail for p in report.problems)


def test_sm2_sm3_archive_encrypts_with_sm4_gcm(settings_factory, demo_server, tmp_path) -> None:
    rt = Runtime.open(settings_factory(encryption_at_rest=True, crypto_suite="sm2-sm3"))
    try:
        rt.init_default_volume()
        with rt.db.session() as s:
            keys.ensure_key(s, rt.settings.keys_dir, rt.clock.now_us(), suite="sm2-sm3")
        _record(rt, demo_server.url("cam1"), 2)
        rows = _check_ciphertext_and_plaintext(rt, "sm4-gcm", "sm3", tmp_path)
        report = verify_archive(rt.db, rt.settings, plain_check=plain_checker(Keyring(rt.settings.master_keys_dir)))
        assert report.ok and report.plaintext_checked == len(rows)
    finally:
        rt.db.dispose()


def test_a_missing_master_key_stops_recording_instead_of_writing_plaintext(enc_runtime, demo_server) -> None:
    rt = enc_runtime
    ctx = rt.recorder_context()  # makes the first master key
    assert Keyring(rt.settings.master_keys_dir).master_keys()
    shutil.rmtree(rt.settings.master_keys_dir)
    add_camera(rt, "cam1", demo_server.url("cam1"))
    sup = Supervisor(ctx, sync_seconds=0.5)
    sup.start()
    try:

        def refused() -> bool:
            with rt.db.session() as s:
                st = s.get(RecorderState, "cam1")
                return st is not None and st.state == "error" and "master_key_missing" in (st.reason or "")

        wait_for(refused, 20, "the recorder to refuse for lack of a master key")
    finally:
        sup.stop()
    volume = rt.settings.effective_volumes[0]
    media = [p for p in volume.rglob("*") if p.is_file() and p.name.endswith((".mp4", ".partial"))]
    assert media == [] and segments(rt, "cam1") == []
    with rt.db.session() as s:
        alarms = storage_alarms(s, rt.settings, rt.db.database_id(), rt.clock.now_us())
    assert "master_key_missing" in alarms.codes and alarms.master_key is not None
    # A new key is not made behind the operator's back once encrypted footage may exist elsewhere: here none does,
    # so the next start makes one and recording resumes.
    rt.recorder_context()
    assert len(Keyring(rt.settings.master_keys_dir).master_keys()) == 1


def test_sigkill_mid_encrypted_segment_keeps_every_complete_fragment(
    enc_runtime, demo_server, nvr_env, caplog, tmp_path
) -> None:
    rt = enc_runtime
    rt.recorder_context()  # the master key, as 'nvr init' makes it
    add_camera(rt, "cam1", demo_server.url("cam1"))
    volume = rt.settings.effective_volumes[0]
    env = dict(nvr_env, NVR_SEGMENT_SECONDS="60", NVR_LOG_LEVEL="INFO", NVR_ENCRYPTION_AT_REST="true")
    log_file = (tmp_path / "recorder.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nvr", "record"], env=env, stdout=subprocess.DEVNULL, stderr=log_file
    )

    def partials() -> list[Path]:
        return list(volume.rglob("*.partial"))

    try:
        wait_for(lambda: bool(partials()), 30, "a segment in progress")
        partial = partials()[0]
        wait_for(lambda: len(crypt.scan(partial)[2]) >= 5, 30, "init section and four fragments sealed")
        time.sleep(0.5 * GOP_S)
        sent = demo_server.frames_sent("cam1")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
    assert proc.returncode == -signal.SIGKILL
    assert segments(rt, "cam1") == []
    stored_before = partial.read_bytes()
    assert crypt.is_encrypted(stored_before) and not any(m in stored_before for m in PLAINTEXT_MARKS)
    sealed = len(crypt.scan(partial)[2])

    caplog.set_level("WARNING")
    counts = recover_all(rt.recorder_context())
    assert counts == {"recovered": 1}
    ((seg, path),) = segments(rt, "cam1")
    assert seg.recovered and seg.encryption == "aes-256-gcm" and not partial.exists()
    stored = path.read_bytes()
    assert not any(m in stored for m in PLAINTEXT_MARKS)
    plain = _plain(rt, seg, path)
    scan = fmp4.scan(__import__("io").BytesIO(plain))
    assert scan.tail == "clean" and len(scan.fragments) >= sealed - 1  # the init section is a record of its own
    out = tmp_path / "recovered.mp4"
    out.write_bytes(plain)
    frames, first_key = decode_all(out)
    assert first_key and frames == seg.frames
    lost = sent - frames
    assert 0 <= lost <= GOP_S * FPS + 5, f"lost {lost} frames; at most one GOP ({GOP_S * FPS}) may be lost"
    report = verify_archive(rt.db, rt.settings, plain_check=plain_checker(Keyring(rt.settings.master_keys_dir)))
    assert report.ok, "\n".join(p.line() for p in report.problems)
    assert not os.path.exists(str(partial) + ".recovering")
