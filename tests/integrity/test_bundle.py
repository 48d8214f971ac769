"""Export bundles made from a real archive: written by storage.bundle, checked offline by `nvr verify-export` and by
the standard-tools recipe of VERIFY.txt, and every kind of tampering named by the verifier."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from integrity import chain, signing
from integrity.bundle_verify import verify_bundle
from nvr import registry
from nvr.errors import Kind, NvrError
from nvr.models import Segment, Volume
from nvr.runtime import Runtime
from storage import bundle
from storage.bundle import BundleInput, CameraInput, SegmentInput, write_bundle
from tests.support.footage import add_camera, add_segments

T0 = 1_700_000_000_000_000
S = 1_000_000


@dataclass
class Made:
    path: Path
    result: bundle.BundleResult
    inp: BundleInput
    fingerprint: str
    signer: signing.Signer


def _person(i: int, unit: str = "Unit A") -> dict:
    return {"id": i, "username": f"u{i}", "full_name": f"Officer {i}", "staff_number": f"S{i:04d}", "unit": unit}


def _rows(rt: Runtime, camera_id: str) -> list[tuple[Path, dict]]:
    with rt.db.session() as s:
        vols = {v.id: Path(v.path) for v in s.scalars(select(Volume))}
        segs = s.scalars(select(Segment).where(Segment.camera_id == camera_id).order_by(Segment.seq)).all()
        out = []
        for r in segs:
            row = {f: getattr(r, f) for f in chain.LINKED_FIELDS}
            row.update(prev_link=r.prev_link, link=r.link, rel_path=r.rel_path)
            out.append((vols[r.volume_id] / r.rel_path, row))
        return out


def _checkpoint(rt: Runtime, signer: signing.Signer, cp_id: int, heads: dict[str, dict]) -> dict:
    body = chain.canonical_json(
        {
            "type": "nvr-checkpoint",
            "v": 1,
            "created_us": T0 + 3600 * S,
            "database_id": rt.db.database_id(),
            "cameras": heads,
            "audit": {"seq": 0, "hash": "0" * 64},
        }
    ).decode("ascii")
    return {
        "id": cp_id,
        "created_us": T0 + 3600 * S,
        "key_id": signer.key_id,
        "suite": signer.suite,
        "body": body,
        "signature": signer.sign(body.encode("ascii")).hex(),
    }


def _key(signer: signing.Signer) -> dict:
    p = signer.public
    return {"key_id": p.key_id, "suite": p.suite, "fingerprint": p.fingerprint, "pem": p.pem}


@pytest.fixture
def archive(runtime: Runtime) -> Runtime:
    """Two cameras: cam-a seq 1..5, cam-b seq 1..4, 2 s segments from T0."""
    for cam, n in (("cam-a", 5), ("cam-b", 4)):
        add_camera(runtime, cam)
        add_segments(runtime, cam, T0, n)
    return runtime


def _input(rt: Runtime, signer: signing.Signer, old: signing.Signer) -> BundleInput:
    """Window T0+1 s .. T0+5 s: originals seq 1..3 of each camera; cam-a's chain bridges (seq 4, 5) to checkpoint 7
    signed by the current key, cam-b's to checkpoint 3 signed by an older key."""
    start, end = T0 + 1 * S, T0 + 5 * S
    cams, checkpoints = [], []
    for cam, cp_id, key in (("cam-a", 7, signer), ("cam-b", 3, old)):
        rows = _rows(rt, cam)
        inside = [(p, r) for p, r in rows if r["start_us"] < end and r["end_us"] > start]
        last = inside[-1][1]["seq"]
        bridge = [r for _, r in rows if r["seq"] > last]
        head = rows[-1][1]
        checkpoints.append(_checkpoint(rt, key, cp_id, {cam: {"seq": head["seq"], "link": head["link"]}}))
        with rt.db.session() as s:
            record = {k: v for k, v in registry.public_view(registry.get(s, cam)).items() if k != "stream_url"}
        cams.append(
            CameraInput(
                id=cam,
                record=record,
                segments=[SegmentInput(p, r) for p, r in inside],
                bridge=bridge,
                checkpoint_id=cp_id,
                gaps=[],
            )
        )
    export = {
        "request_id": 11,
        "job_id": 12,
        "purpose": "robbery investigation",
        "case_ref": "CASE-2024-001",
        "legal_basis": "Criminal Procedure Law art. 54",
        "recipient": "Prosecutor's office",
        "destination": "sealed USB drive",
        "route": "approval",
        "grant_id": None,
        "requester": _person(1),
        "cosigner": _person(2),
        "approvers": [_person(3) | {"unit_approved": "Unit A", "decided": "2023-11-14T22:13:20Z", "reason": "ok"}],
    }
    return BundleInput(
        export=export,
        database_id=rt.db.database_id(),
        created_us=T0 + 7200 * S,
        window_start_us=start,
        window_end_us=end,
        cameras=cams,
        checkpoints=checkpoints,
        keys=[_key(old)],
    )


@pytest.fixture
def made(archive: Runtime, tmp_path: Path) -> Made:
    _, signer = signing.generate()
    _, old = signing.generate()
    inp = _input(archive, signer, old)
    dest = tmp_path / "out" / "export-12.zip"
    dest.parent.mkdir()
    result = write_bundle(dest, inp, signer, work_dir=tmp_path / "work")
    return Made(dest, result, inp, signer.public.fingerprint, signer)


def _nvr(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """The CLI on a machine with no data folder, no settings and no database."""
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_DATA_HOME": str(home / "xdg")}
    return subprocess.run(
        [sys.executable, "-m", "nvr", "verify-export", *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes | None]) -> Path:
    """A copy of the bundle with members replaced (None: removed), written the way a forger would: valid ZIP."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename in replace:
                data = replace[info.filename]
                if data is not None:
                    zout.writestr(info.filename, data)
            else:
                zout.writestr(info.filename, zin.read(info))
    return dst


def _member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(name)


def _failed(report) -> dict[str, str]:
    return {c.name: c.detail for c in report.failed}


def _recipe(bundle_path: Path, trusted: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run VERIFY.txt's standard-tools commands exactly as written there, with BUNDLE and TRUSTED set."""
    text = _member(bundle_path, "VERIFY.txt").decode()
    commands = bundle.verify_commands(text)
    assert commands[0].startswith("nvr verify-export ")
    manual = commands[1:]
    assert manual[0].startswith("BUNDLE=") and manual[1].startswith("TRUSTED=")
    script = "\n".join([f"BUNDLE='{bundle_path}'", f"TRUSTED='{trusted}'", *manual[2:]])
    workdir.mkdir()
    return subprocess.run(["sh", "-e", "-c", script], cwd=workdir, capture_output=True, text=True, timeout=120)


# --- a good bundle ------------------------------------------------------------------------------------------------
def test_good_bundle_is_valid_offline(made: Made, tmp_path: Path) -> None:
    home = tmp_path / "empty-home"
    r = _nvr(str(made.path), "--trusted-key", made.fingerprint, home=home)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "valid"
    assert "CASE-2024-001" in r.stdout and made.signer.key_id in r.stdout
    # The fingerprint as people copy it: colons, upper case.
    colons = ":".join(made.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    r = _nvr(str(made.path), "--trusted-key", colons, "--json", home=home)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["result"] == "valid" and all(c["ok"] for c in data["checks"])
    names = {c["name"] for c in data["checks"]}
    assert {"manifest signature", "trusted key", "original hashes", "chain cam-a", "checkpoint 3"} <= names
    assert sorted(os.listdir(home)) == []  # nothing created: no data folder, no settings


def test_bundle_contents(made: Made) -> None:
    res = made.result
    raw = made.path.read_bytes()
    assert res.bytes == len(raw) and res.sha256 == hashlib.sha256(raw).hexdigest()
    assert not made.path.with_name(made.path.name + ".partial").exists()
    with zipfile.ZipFile(made.path) as z:
        infos = z.infolist()
        assert res.files == len(infos)
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        names = {i.filename for i in infos}
        body = z.read("manifest.json")
        assert hashlib.sha256(body).hexdigest() == res.manifest_sha256
        m = json.loads(body)
        # Originals byte-identical to the archive's files.
        for cam in made.inp.cameras:
            for seg in cam.segments:
                name = f"originals/{cam.id}/{seg.row['seq']:010d}.mp4"
                assert z.read(name) == seg.path.read_bytes()
        assert {"convenience/cam-a.mp4", "convenience/cam-b.mp4", "VERIFY.txt", "SHA256SUMS"} <= names
        assert f"keys/{made.inp.keys[0]['key_id']}.pem" in names
    assert m["format"] == "nvr-export-bundle" and m["crypto"]["key_id"] == made.signer.key_id
    assert m["export"]["window"]["start_us"] == made.inp.window_start_us
    assert m["export"]["case_ref"] == "CASE-2024-001" and m["export"]["cosigner"]["username"] == "u2"
    assert all("stream_url" not in c["record"] for c in m["cameras"])
    assert [s["seq"] for s in m["cameras"][0]["segments"]] == [1, 2, 3]
    assert [b["seq"] for b in m["cameras"][0]["bridge"]] == [4, 5]
    assert _member(made.path, "public_key.sha256").decode() == made.fingerprint + "\n"


def test_verify_txt_recipe_with_standard_tools(made: Made, tmp_path: Path) -> None:
    ok = _recipe(made.path, made.fingerprint, tmp_path / "check-good")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Signature Verified Successfully" in ok.stdout and "all files OK" in ok.stdout
    # A flipped byte in an original: sha256sum -c names it and the recipe fails.
    name = "originals/cam-a/0000000002.mp4"
    data = bytearray(_member(made.path, name))
    data[len(data) // 2] ^= 0x01
    bad = _rewrite(made.path, tmp_path / "flipped.zip", {name: bytes(data)})
    r = _recipe(bad, made.fingerprint, tmp_path / "check-flipped")
    assert r.returncode != 0 and name in r.stdout
    # An edited manifest: the signature check fails.
    edited = _member(made.path, "manifest.json").replace(b"robbery", b"burglary")
    bad = _rewrite(made.path, tmp_path / "edited.zip", {"manifest.json": edited})
    assert _recipe(bad, made.fingerprint, tmp_path / "check-edited").returncode != 0
    # A different trusted key: the first check fails.
    other = signing.generate()[1].public.fingerprint
    assert _recipe(made.path, other, tmp_path / "check-other").returncode != 0


# --- tampering ----------------------------------------------------------------------------------------------------
def test_flipped_byte_in_an_original_is_named(made: Made, tmp_path: Path) -> None:
    name = "originals/cam-a/0000000002.mp4"
    data = bytearray(_member(made.path, name))
    data[1000] ^= 0x40
    bad = _rewrite(made.path, tmp_path / "t.zip", {name: bytes(data)})
    r = _nvr(str(bad), "--trusted-key", made.fingerprint, home=tmp_path / "h")
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == "invalid"
    assert f"FAILED original hashes: {name}" in r.stdout
    # The same flip made in the ZIP itself (so its CRC no longer matches either).
    raw = bytearray(made.path.read_bytes())
    with zipfile.ZipFile(made.path) as z:
        info = z.getinfo(name)
    raw[info.header_offset + 30 + len(name) + len(info.extra) + 1000] ^= 0x40
    crc_bad = tmp_path / "crc.zip"
    crc_bad.write_bytes(bytes(raw))
    failed = _failed(verify_bundle(crc_bad, made.fingerprint))
    assert name in failed["original hashes"]


def test_edited_manifest_is_named(made: Made, tmp_path: Path) -> None:
    edited = _member(made.path, "manifest.json").replace(b"CASE-2024-001", b"CASE-2024-999")
    bad = _rewrite(made.path, tmp_path / "t.zip", {"manifest.json": edited})
    r = _nvr(str(bad), "--trusted-key", made.fingerprint, "--json", home=tmp_path / "h")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["result"] == "invalid"
    assert [c["name"] for c in data["checks"] if not c["ok"]] == ["manifest signature"]


def test_replaced_convenience_file_is_named(made: Made, tmp_path: Path) -> None:
    other = _member(made.path, "originals/cam-a/0000000001.mp4")
    bad = _rewrite(made.path, tmp_path / "t.zip", {"convenience/cam-a.mp4": other})
    report = verify_bundle(bad, made.fingerprint)
    assert report.result == "invalid"
    assert set(_failed(report)) == {"convenience hashes"}
    assert "convenience/cam-a.mp4" in _failed(report)["convenience hashes"]


def test_bundle_signed_by_an_untrusted_key(archive: Runtime, made: Made, tmp_path: Path) -> None:
    """Same footage, same checkpoints, but the bundle signed by another key: the trusted-key check names it."""
    _, intruder = signing.generate()
    dest = tmp_path / "intruder.zip"
    inp = dataclasses.replace(made.inp, keys=[*made.inp.keys, _key(made.signer)])  # carries the genuine checkpoints
    write_bundle(dest, inp, intruder, work_dir=tmp_path / "work2")
    r = _nvr(str(dest), "--trusted-key", made.fingerprint, home=tmp_path / "h")
    assert r.returncode == 1
    assert "FAILED trusted key:" in r.stdout and intruder.public.fingerprint in r.stdout
    assert verify_bundle(dest, intruder.public.fingerprint).result == "valid"


def test_resigned_manifest_with_an_edited_row_breaks_the_chain(made: Made, tmp_path: Path) -> None:
    """Even the signing key cannot change a segment row: the chain no longer reaches the signed checkpoint."""
    m = json.loads(_member(made.path, "manifest.json"))
    m["cameras"][0]["segments"][1]["start_us"] += 1
    body = (json.dumps(m, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    bad = _rewrite(made.path, tmp_path / "t.zip", {"manifest.json": body, "manifest.sig": made.signer.sign(body)})
    failed = _failed(verify_bundle(bad, made.fingerprint))
    assert set(failed) == {"chain cam-a"} and "seq 2" in failed["chain cam-a"]


def test_unlisted_member_and_unsafe_names(made: Made, tmp_path: Path) -> None:
    bad = _rewrite(made.path, tmp_path / "t.zip", {"../evil.sh": b"rm -rf /"})
    with zipfile.ZipFile(bad, "a") as z:
        z.writestr("../evil.sh", b"rm -rf /")
    failed = _failed(verify_bundle(bad, made.fingerprint))
    assert "zip members" in failed and "no unlisted members" in failed


# --- results other than valid/invalid ------------------------------------------------------------------------------
def test_unsigned_bundle_exits_2(made: Made, tmp_path: Path) -> None:
    bad = _rewrite(made.path, tmp_path / "t.zip", {"manifest.sig": None})
    r = _nvr(str(bad), "--trusted-key", made.fingerprint, home=tmp_path / "h")
    assert r.returncode == 2 and r.stdout.splitlines()[0] == "unsigned"
    assert "FAILED signed: manifest.sig is missing" in r.stdout


def test_unreadable_bundles_exit_3(made: Made, tmp_path: Path) -> None:
    raw = made.path.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(raw[: len(raw) // 2])
    noise = tmp_path / "noise.zip"
    noise.write_bytes(os.urandom(100_000))
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    no_manifest = _rewrite(made.path, tmp_path / "nomanifest.zip", {"manifest.json": None})
    for path in (truncated, noise, empty, no_manifest):
        r = _nvr(str(path), "--trusted-key", made.fingerprint, home=tmp_path / "h")
        assert r.returncode == 3, (path, r.stdout, r.stderr)
        assert r.stdout.splitlines()[0] == "unreadable" and "FAILED bundle readable:" in r.stdout
        assert "Traceback" not in r.stderr


def test_oversized_manifest_is_refused(made: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from integrity import bundle_verify

    monkeypatch.setattr(bundle_verify, "MAX_MANIFEST", 1000)
    report = verify_bundle(made.path, made.fingerprint)
    assert report.result == "unreadable" and "limit" in _failed(report)["bundle readable"]


def test_bad_usage_exits_4(made: Made, tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert _nvr(str(made.path), "--trusted-key", "not-a-fingerprint", home=home).returncode == 4
    assert _nvr(str(tmp_path / "missing.zip"), "--trusted-key", made.fingerprint, home=home).returncode == 4
    assert _nvr(str(made.path), home=home).returncode == 4
    assert _nvr(str(made.path), "--trusted-key", home=home).returncode == 4
    r = _nvr(str(made.path), "--trusted-key", made.fingerprint, "--bogus", home=home)
    assert r.returncode == 4 and "Traceback" not in r.stderr


# --- the writer fails closed ----------------------------------------------------------------------------------------
def _nothing_left(dest: Path, work: Path) -> None:
    assert not dest.exists() and not dest.with_name(dest.name + ".partial").exists()
    assert list(dest.parent.iterdir()) == []
    assert not work.exists() or list(work.iterdir()) == []


def test_writer_refuses_an_altered_original(archive: Runtime, tmp_path: Path) -> None:
    _, signer = signing.generate()
    inp = _input(archive, signer, signing.generate()[1])
    victim = inp.cameras[1].segments[2]  # cam-b seq 3
    data = bytearray(victim.path.read_bytes())
    data[-10] ^= 0xFF
    victim.path.write_bytes(bytes(data))
    dest, work = tmp_path / "out" / "b.zip", tmp_path / "work"
    dest.parent.mkdir()
    with pytest.raises(NvrError) as e:
        write_bundle(dest, inp, signer, work_dir=work)
    assert e.value.kind is Kind.DATA_LOSS and e.value.code == "segment_hash_mismatch"
    assert "camera cam-b seq 3" in e.value.message and "2023-11-14T22:13:24" in e.value.message
    _nothing_left(dest, work)
    victim.path.unlink()
    with pytest.raises(NvrError) as e:
        write_bundle(dest, inp, signer, work_dir=work)
    assert e.value.code == "segment_missing" and "seq 3" in e.value.message
    _nothing_left(dest, work)


def test_cancel_leaves_nothing(archive: Runtime, tmp_path: Path) -> None:
    _, signer = signing.generate()
    inp = _input(archive, signer, signing.generate()[1])
    dest, work = tmp_path / "out" / "c.zip", tmp_path / "work"
    dest.parent.mkdir()
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(NvrError) as e:
        write_bundle(dest, inp, signer, work_dir=work, cancelled=cancelled)
    assert e.value.code == "export_cancelled"
    _nothing_left(dest, work)


def test_progress_reaches_the_total(archive: Runtime, tmp_path: Path) -> None:
    _, signer = signing.generate()
    inp = _input(archive, signer, signing.generate()[1])
    seen: list[tuple[int, int]] = []
    write_bundle(tmp_path / "p.zip", inp, signer, work_dir=tmp_path / "w", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_removed_original_is_named(made: Made, tmp_path: Path) -> None:
    """The bundle-side counterpart of a deleted segment file. (A swapped one reads as different bytes: the
    flipped-byte case; this fixture's segments are copies of one clip, so swapping two would change nothing.)"""
    gone = "originals/cam-a/0000000002.mp4"
    bad = _rewrite(made.path, tmp_path / "gone.zip", {gone: None})
    assert gone in _failed(verify_bundle(bad, made.fingerprint))["original hashes"]
    r = _nvr(str(bad), "--trusted-key", made.fingerprint, home=tmp_path / "h")
    assert r.returncode == 1 and r.stdout.splitlines()[0] == "invalid" and gone in r.stdout
