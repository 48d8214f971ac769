"""The bundle writer and crypto suites: originals hashed in their own row's algorithm, encrypted-at-rest originals
exported as their plaintext (checked against plain_digest, never ciphertext in a bundle), and every way that can
fail stopping the export with nothing left behind."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import av
import pytest
from sqlalchemy import select

from integrity import checkpoints, keys, suites
from nvr.demo.pattern import encode_pattern
from nvr.demo.rtsp import DemoRtspServer
from nvr.errors import Kind, NvrError
from nvr.models import Segment
from nvr.recorder.supervisor import Supervisor
from nvr.runtime import Runtime
from storage import crypt
from storage.bundle import write_bundle
from storage.keyring import Keyring
from storage.segment_io import open_plain, segment_name
from tests.support import recording
from tests.support.bundles import (
    MIN,
    S,
    failed,
    make_bundle,
    member,
    needs_openssl,
    nvr_verify_export,
    recipe,
    resigned,
    rewrite,
)
from tests.support.footage import add_camera, add_segments, clip, segment_path

SUITES = ["ed25519-sha256", "sm2-sm3"]


def _archive(rt: Runtime, suite: str, *, encrypt: bool, count: int = 3) -> int:
    """cam1 seq 1..count from ``base`` (returned), 2 s each, different pictures (clip variants 1..), in ``suite``,
    stored encrypted at rest or not, and a checkpoint over them."""
    with rt.db.session() as s:
        keys.ensure_key(s, rt.settings.keys_dir, rt.clock.now_us(), suite=suite)
    add_camera(rt, "cam1")
    base = (rt.clock.now_us() - 20 * MIN) // S * S
    add_segments(rt, "cam1", base, count, first_variant=1, encrypt=encrypt)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    return base


def _nothing_left(dest: Path) -> None:
    assert not dest.exists() and not dest.with_name(dest.name + ".partial").exists()
    work = dest.parent / "work"
    assert not work.exists() or list(work.iterdir()) == []


def _rows(rt: Runtime) -> dict[int, Segment]:
    with rt.db.session() as s:
        return {r.seq: r for r in s.scalars(select(Segment).where(Segment.camera_id == "cam1"))}


@needs_openssl
@pytest.mark.parametrize("suite", SUITES)
def test_encrypted_originals_are_exported_as_their_plaintext(runtime: Runtime, tmp_path: Path, suite: str) -> None:
    rt = runtime
    base = _archive(rt, suite, encrypt=True)
    rows = _rows(rt)
    alg = suites.get(suite).hash_alg
    assert all(r.encryption == suites.get(suite).cipher and r.plain_digest for r in rows.values())
    made = make_bundle(rt, tmp_path / "out" / "enc.zip", base, base + 6 * S)
    m = made.manifest
    assert m["version"] == 2
    segs = m["cameras"][0]["segments"]
    assert [x["seq"] for x in segs] == [1, 2, 3]
    for x in segs:
        row = rows[x["seq"]]
        stored = segment_path(rt, "cam1", x["seq"])
        plain = clip(variant=x["seq"]).read_bytes()  # what the recorder wrote before encrypting it
        got = member(made.path, x["path"])
        # The plaintext fMP4, byte for byte; never the ciphertext.
        assert got == plain and got != stored.read_bytes() and not crypt.is_encrypted(got[:64])
        assert x["content"] == "plaintext" and x["plain_bytes"] == len(plain)
        assert x["encryption"] == row.encryption and x["hash_alg"] == alg
        assert x["plain_digest"] == row.plain_digest == suites.digest(alg, plain)
        assert x["sha256"] == row.sha256 == suites.file_digest(alg, stored) and x["bytes"] == stored.stat().st_size
        listed = next(f for f in m["files"] if f["path"] == x["path"])
        assert listed == {"path": x["path"], "sha256": row.plain_digest, "bytes": len(plain), "alg": alg}
    # The convenience copy is made from the plaintext too: a playable MP4 of the window.
    conv = tmp_path / "conv.mp4"
    conv.write_bytes(member(made.path, "convenience/cam1.mp4"))
    with av.open(str(conv)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 6 * 25 - 2, frames
    assert "decrypted" in member(made.path, "VERIFY.txt").decode()

    r = nvr_verify_export(str(made.path), "--trusted-key", made.fingerprint, home=tmp_path / "h")
    assert r.returncode == 0, r.stdout + r.stderr
    ok = recipe(made.path, made.fingerprint, tmp_path / "recipe")
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # A flipped byte in a decrypted original is named against its plain_digest.
    name = segs[1]["path"]
    data = bytearray(member(made.path, name))
    data[len(data) // 3] ^= 0x10
    bad = rewrite(made.path, tmp_path / "flip.zip", {name: bytes(data)})
    assert f"{name}: " in failed(bad, made.fingerprint)["original hashes"]
    # Re-signed with the row's plain_digest (and the listing) moved to the tampered bytes: the chain link, which
    # covers plain_digest, no longer recomputes.
    forged = json.loads(json.dumps(m))
    forged["cameras"][0]["segments"][1]["plain_digest"] = suites.digest(alg, bytes(data))
    next(f for f in forged["files"] if f["path"] == name)["sha256"] = suites.digest(alg, bytes(data))
    bad = resigned(made, tmp_path / "forged.zip", forged)
    bad = rewrite(bad, tmp_path / "forged2.zip", {name: bytes(data)})
    f = failed(bad, made.fingerprint)
    assert "seq 2: link does not recompute" in f["chain cam1"]
    # Dropping "encryption" so the stored digest would be compared instead: the link breaks as well.
    forged = json.loads(json.dumps(m))
    del forged["cameras"][0]["segments"][0]["encryption"]
    f = failed(resigned(made, tmp_path / "noenc.zip", forged), made.fingerprint)
    assert "seq 1: link does not recompute" in f["chain cam1"]
    assert "row says the segment is not encrypted at rest" in f["original hashes"]
    # A member that is the stored bytes while its row says encrypted (ciphertext in a bundle) is refused too.
    forged = json.loads(json.dumps(m))
    for k in ("content", "plain_bytes"):
        del forged["cameras"][0]["segments"][0][k]
    f = failed(resigned(made, tmp_path / "nocontent.zip", forged), made.fingerprint)
    assert "the member is as stored, but the row says the segment is encrypted" in f["original hashes"]


@pytest.mark.parametrize("how", ["no keyring", "master key folder gone"])
def test_a_missing_master_key_fails_the_export_with_nothing_written(runtime: Runtime, tmp_path: Path, how: str) -> None:
    rt = runtime
    base = _archive(rt, "sm2-sm3", encrypt=True, count=2)
    dest = tmp_path / "out" / "enc.zip"
    with pytest.raises(NvrError) as e:
        if how == "no keyring":
            from api import export_jobs
            from tests.support import bundles

            with rt.db.session() as s:
                signer = keys.active_signer(s, rt.settings.keys_dir)
                trusted = keys.trusted_keys(s, rt.settings)
                rows = export_jobs.rows_in(s, "cam1", base, base + 4 * S)
                cp = checkpoints.covering(s, "cam1", int(rows[-1]["seq"]), trusted)
                assert cp is not None
                inp = export_jobs.bundle_input(
                    s, dict(bundles.EXPORT), {"cam1": rows}, {"cam1": cp}, "db", (base, base + 4 * S), 1, trusted
                )
            dest.parent.mkdir(parents=True)
            write_bundle(dest, inp, signer, work_dir=dest.parent / "work")
        else:
            shutil.move(rt.settings.master_keys_dir, tmp_path / "master-keys-elsewhere")
            make_bundle(rt, dest, base, base + 4 * S)
    assert e.value.code == "master_key_missing" and e.value.kind is Kind.UNAVAILABLE
    assert "camera cam1 seq 1" in e.value.message and "nothing was exported" in e.value.message
    _nothing_left(dest)


def test_an_altered_encrypted_original_stops_the_export(runtime: Runtime, tmp_path: Path) -> None:
    rt = runtime
    base = _archive(rt, "ed25519-sha256", encrypt=True)
    stored = segment_path(rt, "cam1", 2)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    dest = tmp_path / "out" / "enc.zip"
    with pytest.raises(NvrError) as e:
        make_bundle(rt, dest, base, base + 6 * S)
    assert e.value.kind is Kind.DATA_LOSS and e.value.code == "ciphertext_invalid"
    assert "camera cam1 seq 2" in e.value.message
    _nothing_left(dest)


def test_an_altered_sm3_original_is_refused_naming_sm3(runtime: Runtime, tmp_path: Path) -> None:
    rt = runtime
    base = _archive(rt, "sm2-sm3", encrypt=False)
    stored = segment_path(rt, "cam1", 3)
    data = bytearray(stored.read_bytes())
    data[-10] ^= 0xFF
    stored.write_bytes(bytes(data))
    dest = tmp_path / "out" / "b.zip"
    with pytest.raises(NvrError) as e:
        make_bundle(rt, dest, base, base + 6 * S)
    assert e.value.code == "segment_hash_mismatch" and "camera cam1 seq 3" in e.value.message
    assert "SM3 " in e.value.message
    _nothing_left(dest)


def test_plain_and_encrypted_originals_in_one_bundle(runtime: Runtime, tmp_path: Path) -> None:
    """Encryption switched on mid-way: the stored originals go out as they are, the encrypted ones decrypted."""
    rt = runtime
    base = _archive(rt, "sm2-sm3", encrypt=False, count=2)
    add_segments(rt, "cam1", base + 4 * S, 2, first_variant=3, encrypt=True)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    seen: list[tuple[int, int]] = []
    made = make_bundle(rt, tmp_path / "out" / "both.zip", base, base + 8 * S, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] > 0  # progress counts the plaintext copied and reaches its total
    segs = made.manifest["cameras"][0]["segments"]
    assert [x.get("content") for x in segs] == [None, None, "plaintext", "plaintext"]
    for x in segs:
        with zipfile.ZipFile(made.path) as z:
            assert z.read(x["path"]) == clip(variant=x["seq"]).read_bytes()
    assert failed(made.path, made.fingerprint) == {}


@needs_openssl
def test_recorded_sm2_sm3_encrypted_footage_exports_and_verifies(settings_factory, tmp_path: Path) -> None:
    """The whole path for real: the demo RTSP server feeds the recorder of an sm2-sm3 archive with encryption at rest
    (SM3 rows, SM4-GCM files), a checkpoint is signed with SM2, and the export of the recorded span verifies offline
    and by the standard-tools recipe; each original in the bundle is the decrypted recording."""
    pattern = encode_pattern(
        width=320,
        height=180,
        fps=recording.FPS,
        gop_seconds=recording.GOP_S,
        seconds=2,
        bitrate=300_000,
        cache_dir=tmp_path / "p",
    )
    rt = Runtime.open(settings_factory(encryption_at_rest=True, crypto_suite="sm2-sm3"))
    try:
        rt.init_default_volume()
        with rt.db.session() as s:
            keys.ensure_key(s, rt.settings.keys_dir, rt.clock.now_us(), suite="sm2-sm3")
        with DemoRtspServer(mounts={"cam1": pattern}) as server:
            recording.add_camera(rt, "cam1", server.url("cam1"))
            sup = Supervisor(rt.recorder_context(), sync_seconds=0.5)
            sup.start()
            try:
                recording.wait_for(lambda: len(recording.segments(rt, "cam1")) >= 2, 30, "2 segments")
            finally:
                sup.stop()
        checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
        recorded = recording.segments(rt, "cam1")
        assert all(seg.encryption == "sm4-gcm" and seg.hash_alg == "sm3" for seg, _ in recorded)
        made = make_bundle(rt, tmp_path / "out" / "rec.zip", recorded[0][0].start_us, recorded[-1][0].end_us)
        r = nvr_verify_export(str(made.path), "--trusted-key", made.fingerprint, home=tmp_path / "h")
        assert r.returncode == 0, r.stdout + r.stderr
        ok = recipe(made.path, made.fingerprint, tmp_path / "recipe")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        ring = Keyring(rt.settings.master_keys_dir)
        for seg, path in recorded:
            with open_plain(path, seg.encryption, ring, segment_name(seg.volume_id, seg.rel_path)) as f:
                plain = f.read()
            got = member(made.path, f"originals/cam1/{seg.seq:010d}.mp4")
            assert got == plain and suites.digest("sm3", got) == seg.plain_digest
            out = tmp_path / f"{seg.seq}.mp4"
            out.write_bytes(got)
            frames, first_key = recording.decode_all(out)
            assert frames > 0 and first_key
    finally:
        rt.db.dispose()
