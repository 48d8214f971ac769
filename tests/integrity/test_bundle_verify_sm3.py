"""Export bundles of ``sm2-sm3`` and mixed-suite archives, checked offline: `nvr verify-export` with no database,
the standard-tools recipe of VERIFY.txt run exactly as written (OpenSSL 3's SM3 and SM2), tampering named, and a
bundle in the format made before suites (no algorithm fields: all SHA-256) still valid."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from integrity import checkpoints, keys, signing, suites
from integrity.bundle_verify import verify_bundle
from nvr.models import Segment
from nvr.runtime import Runtime
from tests.support.bundles import (
    MIN,
    Made,
    S,
    failed,
    make_bundle,
    member,
    needs_openssl,
    nvr_verify_export,
    openssl_sm3,
    recipe,
    resigned,
    rewrite,
)
from tests.support.footage import add_camera, add_segments


def _base(rt: Runtime, minutes: int = 20) -> int:
    return (rt.clock.now_us() - minutes * MIN) // S * S


@pytest.fixture
def sm3_archive(runtime: Runtime) -> tuple[Runtime, int]:
    """An sm2-sm3 archive: cam1 seq 1..4 (2 s each, all different pictures), SM3 rows, a checkpoint signed by SM2."""
    rt = runtime
    with rt.db.session() as s:
        keys.ensure_key(s, rt.settings.keys_dir, rt.clock.now_us(), suite="sm2-sm3")
    add_camera(rt, "cam1")
    base = _base(rt)
    add_segments(rt, "cam1", base, 4, first_variant=1)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    return rt, base


@pytest.fixture
def sm3_made(sm3_archive: tuple[Runtime, int], tmp_path: Path) -> Made:
    rt, base = sm3_archive
    return make_bundle(rt, tmp_path / "out" / "sm3.zip", base + 1 * S, base + 5 * S)


@pytest.fixture
def ed_made(runtime: Runtime, tmp_path: Path) -> Made:
    rt = runtime
    add_camera(rt, "cam1")
    base = _base(rt)
    add_segments(rt, "cam1", base, 4, first_variant=1)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    return make_bundle(rt, tmp_path / "out" / "ed.zip", base + 1 * S, base + 5 * S)


# --- an sm2-sm3 bundle ------------------------------------------------------------------------------------------
@needs_openssl
def test_an_sm2_sm3_export_verifies_offline(sm3_archive: tuple[Runtime, int], sm3_made: Made, tmp_path: Path) -> None:
    rt, _ = sm3_archive
    made, m = sm3_made, sm3_made.manifest
    r = nvr_verify_export(str(made.path), "--trusted-key", made.fingerprint, home=tmp_path / "home")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "valid" and "CASE-SM-7" in r.stdout and "suite sm2-sm3" in r.stdout

    assert m["version"] == 2 and m["crypto"]["suite"] == "sm2-sm3" and m["crypto"]["hash"] == "sm3"
    assert {f["alg"] for f in m["files"]} == {"sm3"}
    assert "sm3sums_sm3" in m and "sha256sums_sha256" not in m
    with zipfile.ZipFile(made.path) as z:
        names = set(z.namelist())
    assert "SM3SUMS" in names and "SHA256SUMS" not in names
    # Every original is the catalogue's file, its digest SM3 as OpenSSL computes it, its row's own.
    with rt.db.session() as s:
        rows = {r.seq: r for r in s.scalars(select(Segment).where(Segment.camera_id == "cam1"))}
    segs = m["cameras"][0]["segments"]
    assert [x["seq"] for x in segs] == [1, 2, 3] and all(x["hash_alg"] == "sm3" for x in segs)
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(made.path) as z:
        z.extractall(unpacked)
    for x in segs:
        assert openssl_sm3(unpacked / x["path"]) == x["sha256"] == rows[x["seq"]].sha256
    listed = {f["path"]: f["sha256"] for f in m["files"]}
    assert openssl_sm3(unpacked / "convenience/cam1.mp4") == listed["convenience/cam1.mp4"]
    # The signature is SM2 (DER r, s), and the fingerprint SHA-256 as in every suite.
    assert signing.verify(
        "sm2-sm3", made.signer.public.pem, member(made.path, "manifest.json"), member(made.path, "manifest.sig")
    )
    assert member(made.path, "public_key.sha256").decode().strip() == made.fingerprint


@needs_openssl
@pytest.mark.parametrize("suite", ["sm2-sm3", "ed25519-sha256"])
def test_verify_txt_recipe_runs_with_openssl_for_both_suites(
    request: pytest.FixtureRequest, suite: str, tmp_path: Path
) -> None:
    made: Made = request.getfixturevalue("sm3_made" if suite == "sm2-sm3" else "ed_made")
    text = member(made.path, "VERIFY.txt").decode()
    if suite == "sm2-sm3":
        assert "-digest sm3 -pkeyopt distid:1234567812345678" in text and "openssl dgst -sm3" in text
        assert "sha256sum --quiet" not in text
    else:
        assert "distid" not in text and "sha256sum --quiet -c SHA256SUMS" in text
    ok = recipe(made.path, made.fingerprint, tmp_path / "good")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Signature Verified Successfully" in ok.stdout and "all files OK" in ok.stdout
    assert made.fingerprint in ok.stdout
    # A flipped byte in an original: the digest check names it and the recipe fails.
    name = "originals/cam1/0000000002.mp4"
    data = bytearray(member(made.path, name))
    data[len(data) // 2] ^= 0x01
    r = recipe(rewrite(made.path, tmp_path / "flip.zip", {name: bytes(data)}), made.fingerprint, tmp_path / "flip")
    assert r.returncode != 0 and name in r.stdout + r.stderr
    # An edited manifest: the signature check fails (the step after unzip and the fingerprint).
    edited = member(made.path, "manifest.json").replace(b"traffic accident", b"traffic incident")
    r = recipe(rewrite(made.path, tmp_path / "ed.zip", {"manifest.json": edited}), made.fingerprint, tmp_path / "e")
    assert r.returncode != 0 and "STEP FAILED: 5" in r.stdout
    # The sums list swapped for one that matches a tampered file: the manifest no longer names its digest.
    sums = "SM3SUMS" if suite == "sm2-sm3" else "SHA256SUMS"
    alg = "sm3" if suite == "sm2-sm3" else "sha256"
    lines = member(made.path, sums).decode().splitlines(keepends=True)
    forged_lines = [
        (suites.digest(alg, bytes(data)) + f"  {name}\n") if ln.endswith(f"  {name}\n") else ln for ln in lines
    ]
    forged = rewrite(made.path, tmp_path / "forged.zip", {name: bytes(data), sums: "".join(forged_lines).encode()})
    r = recipe(forged, made.fingerprint, tmp_path / "forged")
    assert r.returncode != 0 and "STEP FAILED: 6" in r.stdout
    # Another trusted key: the first check fails.
    other = signing.generate(suite)[1].public.fingerprint
    r = recipe(made.path, other, tmp_path / "other")
    assert r.returncode != 0 and "STEP FAILED: 4" in r.stdout


def test_tampering_with_an_sm3_bundle_is_named(sm3_made: Made, tmp_path: Path) -> None:
    made = sm3_made
    name = "originals/cam1/0000000002.mp4"
    data = bytearray(member(made.path, name))
    data[1000] ^= 0x40
    bad = rewrite(made.path, tmp_path / "flip.zip", {name: bytes(data)})
    r = nvr_verify_export(str(bad), "--trusted-key", made.fingerprint, home=tmp_path / "h")
    assert r.returncode == 1 and r.stdout.splitlines()[0] == "invalid"
    assert f"FAILED original hashes: {name}: SM3 " in r.stdout
    # The manifest edited: only its signature fails.
    edited = member(made.path, "manifest.json").replace(b"CASE-SM-7", b"CASE-SM-8")
    bad = rewrite(made.path, tmp_path / "edit.zip", {"manifest.json": edited})
    assert set(failed(bad, made.fingerprint)) == {"manifest signature"}
    # A flipped byte in the signature.
    sig = bytearray(member(made.path, "manifest.sig"))
    sig[-5] ^= 0x01
    bad = rewrite(made.path, tmp_path / "sig.zip", {"manifest.sig": bytes(sig)})
    assert set(failed(bad, made.fingerprint)) == {"manifest signature"}
    # A VERIFY.txt swapped: the SM3 list and the file hashes name it.
    bad = rewrite(made.path, tmp_path / "verify.zip", {"VERIFY.txt": b"trust me\n"})
    f = failed(bad, made.fingerprint)
    assert "VERIFY.txt" in f["file hashes"]


def test_resigned_manifests_cannot_move_the_algorithm(sm3_made: Made, tmp_path: Path) -> None:
    """Even the signing key cannot relabel a digest: a row's hash_alg is in its chain link, and a member's digest is
    recomputed in the algorithm its entry names."""
    made = sm3_made
    m = json.loads(json.dumps(made.manifest))
    m["cameras"][0]["segments"][1]["hash_alg"] = "sha256"
    f = failed(resigned(made, tmp_path / "row.zip", m), made.fingerprint)
    assert "seq 2" in f["chain cam1"] and "originals/cam1/0000000002.mp4" in f["original hashes"]
    m = json.loads(json.dumps(made.manifest))
    m["cameras"][0]["segments"][0].pop("hash_alg")  # "absent means SHA-256" must not be a way around it either
    f = failed(resigned(made, tmp_path / "gone.zip", m), made.fingerprint)
    assert "seq 1" in f["chain cam1"]
    m = json.loads(json.dumps(made.manifest))
    entry = next(x for x in m["files"] if x["path"] == "VERIFY.txt")
    entry["alg"] = "sha256"
    f = failed(resigned(made, tmp_path / "alg.zip", m), made.fingerprint)
    assert "VERIFY.txt: SHA-256 " in f["file hashes"]
    assert "SHA256SUMS is missing" in f["SHA256SUMS"] and "does not list exactly" in f["SM3SUMS"]
    m = json.loads(json.dumps(made.manifest))
    m["cameras"][0]["segments"][0]["hash_alg"] = "md5"
    f = failed(resigned(made, tmp_path / "md5.zip", m), made.fingerprint)
    assert "unknown hash_alg" in f["manifest format"]


# --- a mixed archive --------------------------------------------------------------------------------------------
@needs_openssl
def test_a_mixed_suite_archive_exports_and_verifies(runtime: Runtime, tmp_path: Path) -> None:
    """SHA-256 segments under an Ed25519 key, a rotation to sm2-sm3, SM3 segments: one chain across the switch,
    one bundle with both lists, each original checked in its own row's algorithm."""
    rt = runtime
    add_camera(rt, "cam1")
    base = _base(rt, 30)
    add_segments(rt, "cam1", base, 2, first_variant=1)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    with rt.db.session() as s:
        keys.rotate(s, rt.settings.keys_dir, rt.clock.now_us(), suite="sm2-sm3")
    with rt.db.session() as s:
        keys.purge_retired(s, rt.settings.keys_dir)
    add_segments(rt, "cam1", base + 4 * S, 2, first_variant=3)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)

    made = make_bundle(rt, tmp_path / "out" / "mixed.zip", base, base + 8 * S)
    m = made.manifest
    assert m["crypto"]["suite"] == "sm2-sm3" and m["version"] == 2
    assert [(x["seq"], x["hash_alg"]) for x in m["cameras"][0]["segments"]] == [
        (1, "sha256"),
        (2, "sha256"),
        (3, "sm3"),
        (4, "sm3"),
    ]
    algs = {f["path"]: f["alg"] for f in m["files"]}
    assert algs["originals/cam1/0000000001.mp4"] == "sha256" and algs["originals/cam1/0000000003.mp4"] == "sm3"
    assert algs["VERIFY.txt"] == algs["convenience/cam1.mp4"] == "sm3"
    assert "sha256sums_sha256" in m and "sm3sums_sm3" in m
    assert member(made.path, "SHA256SUMS").decode().count("\n") == 2
    r = nvr_verify_export(str(made.path), "--trusted-key", made.fingerprint, "--json", home=tmp_path / "h")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["name"] for c in json.loads(r.stdout)["checks"]}
    assert {"SHA256SUMS", "SM3SUMS", "chain cam1", "original hashes"} <= checks
    ok = recipe(made.path, made.fingerprint, tmp_path / "recipe")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("all files OK") == 2
    # A SHA-256 original's flipped byte is named by the SHA-256 check, by both the verifier and the recipe.
    name = "originals/cam1/0000000001.mp4"
    data = bytearray(member(made.path, name))
    data[500] ^= 0x08
    bad = rewrite(made.path, tmp_path / "flip.zip", {name: bytes(data)})
    assert f"{name}: SHA-256 " in failed(bad, made.fingerprint)["original hashes"]
    r = recipe(bad, made.fingerprint, tmp_path / "recipe-flip")
    assert r.returncode != 0 and f"{name}: FAILED" in r.stdout

    # The older footage alone rests on the checkpoint the retired Ed25519 key signed: that key travels in keys/.
    old = make_bundle(rt, tmp_path / "out2" / "old.zip", base, base + 4 * S)
    assert [k["suite"] for k in old.manifest["keys"]] == ["ed25519-sha256"]
    assert old.manifest["checkpoints"][0]["suite"] == "ed25519-sha256"
    assert verify_bundle(old.path, old.fingerprint).result == "valid"
    ok = recipe(old.path, old.fingerprint, tmp_path / "recipe-old")
    assert ok.returncode == 0, ok.stdout + ok.stderr


# --- the format before suites -----------------------------------------------------------------------------------
def _as_version_1(m: dict) -> dict:
    """The manifest as storage.bundle wrote it before suites: no alg / hash_alg fields anywhere."""
    m = json.loads(json.dumps(m))
    for f in m["files"]:
        f.pop("alg")
    for cam in m["cameras"]:
        for row in cam["segments"] + cam["bridge"]:
            row.pop("hash_alg")
        for c in cam["convenience"]:
            c.pop("alg")
    return m


def test_an_old_format_bundle_still_verifies_as_sha256(ed_made: Made, tmp_path: Path) -> None:
    made = ed_made
    m = made.manifest
    assert m["version"] == 1 and m["crypto"] == {**m["crypto"], "suite": "ed25519-sha256", "hash": "sha256"}
    assert {f["alg"] for f in m["files"]} == {"sha256"} and "sm3sums_sm3" not in m
    with zipfile.ZipFile(made.path) as z:
        assert "SM3SUMS" not in z.namelist()
    old = resigned(made, tmp_path / "v1.zip", _as_version_1(m))
    r = nvr_verify_export(str(old), "--trusted-key", made.fingerprint, home=tmp_path / "h")
    assert r.returncode == 0, r.stdout + r.stderr
    # ... and its checks still bite: a flipped byte is a SHA-256 mismatch.
    name = "originals/cam1/0000000003.mp4"
    data = bytearray(member(old, name))
    data[-100] ^= 0x02
    bad = rewrite(old, tmp_path / "v1-flip.zip", {name: bytes(data)})
    assert f"{name}: SHA-256 " in failed(bad, made.fingerprint)["original hashes"]
    # A version-1 bundle without its SHA256SUMS is invalid, not "nothing to list".
    f = failed(rewrite(old, tmp_path / "v1-nosums.zip", {"SHA256SUMS": None}), made.fingerprint)
    assert "SHA256SUMS is missing" in f["SHA256SUMS"]
