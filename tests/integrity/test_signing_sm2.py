"""SM2 signatures (suite sm2-sm3) interoperate with the system OpenSSL 3 both ways, keys of the wrong type give
the stable error codes, ``nvr init --suite sm2-sm3`` makes an SM2 signing key, and a checkpoint signed with it
verifies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from integrity import checkpoints, keys, signing
from nvr.errors import Kind, NvrError
from nvr.runtime import Runtime
from tests.support.footage import add_camera, add_segments

T0 = 1_700_000_000_000_000
MIN = 60_000_000
SM2_OPTS = ["-digest", "sm3", "-pkeyopt", "distid:1234567812345678"]

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], capture_output=True)


@needs_openssl
def test_our_signature_verifies_with_openssl(tmp_path: Path) -> None:
    _pem, signer = signing.generate("sm2-sm3")
    msg = tmp_path / "MANIFEST.json"
    msg.write_bytes(b'{"hello": "world"}\n' * 50)
    (tmp_path / "public_key.pem").write_text(signer.public.pem)
    (tmp_path / "MANIFEST.json.sig").write_bytes(signer.sign(msg.read_bytes()))
    cmd = ["pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "public_key.pem"), "-rawin"]
    out = _openssl(*cmd, "-in", str(msg), "-sigfile", str(tmp_path / "MANIFEST.json.sig"), *SM2_OPTS)
    assert out.returncode == 0 and b"Signature Verified Successfully" in out.stdout, out.stderr
    msg.write_bytes(msg.read_bytes() + b" ")
    out = _openssl(*cmd, "-in", str(msg), "-sigfile", str(tmp_path / "MANIFEST.json.sig"), *SM2_OPTS)
    assert out.returncode != 0
    # Fingerprint: SHA-256 of the DER SPKI, as for Ed25519 keys.
    der = _openssl("pkey", "-pubin", "-in", str(tmp_path / "public_key.pem"), "-outform", "DER").stdout
    import hashlib

    assert hashlib.sha256(der).hexdigest() == signer.public.fingerprint


@needs_openssl
def test_openssl_signature_verifies_here(tmp_path: Path) -> None:
    priv, pub, msg, sig = (tmp_path / n for n in ("k.pem", "pub.pem", "msg", "msg.sig"))
    assert _openssl("genpkey", "-algorithm", "SM2", "-out", str(priv)).returncode == 0
    assert _openssl("pkey", "-in", str(priv), "-pubout", "-out", str(pub)).returncode == 0
    msg.write_bytes(b"checkpoint body")
    out = _openssl("pkeyutl", "-sign", "-inkey", str(priv), "-rawin", "-in", str(msg), "-out", str(sig), *SM2_OPTS)
    assert out.returncode == 0, out.stderr
    assert signing.verify("sm2-sm3", pub.read_bytes(), msg.read_bytes(), sig.read_bytes()) is True
    assert signing.verify("sm2-sm3", pub.read_bytes(), b"checkpoint bodY", sig.read_bytes()) is False
    # openssl's PKCS#8 private key loads as a signer whose signatures openssl accepts.
    signer = signing.load_signer("sm2-sm3", priv.read_bytes())
    assert signing.public_key_info("sm2-sm3", pub.read_bytes()).fingerprint == signer.public.fingerprint
    assert signing.verify("sm2-sm3", pub.read_bytes(), b"x", signer.sign(b"x"))


def test_wrong_key_type_for_the_suite() -> None:
    ed_priv, ed = signing.generate("ed25519-sha256")
    sm_priv, sm = signing.generate("sm2-sm3")
    for suite, pem in (("sm2-sm3", ed.public.pem), ("ed25519-sha256", sm.public.pem), ("sm2-sm3", "junk")):
        with pytest.raises(NvrError) as err:
            signing.verify(suite, pem, b"m", b"s")
        assert err.value.code == "public_key_invalid" and err.value.kind is Kind.INVALID_ARGUMENT
    for suite, private in (("sm2-sm3", ed_priv), ("ed25519-sha256", sm_priv), ("sm2-sm3", b"junk")):
        with pytest.raises(NvrError) as err:
            signing.load_signer(suite, private)
        assert err.value.code == "signing_key_invalid" and "PRIVATE" not in err.value.message
    with pytest.raises(NvrError) as err:
        signing.generate("sm9")
    assert err.value.code == "suite_unknown"
    # An Ed25519 signature is no SM2 signature and the other way round.
    assert not signing.verify("sm2-sm3", sm.public.pem, b"m", ed.sign(b"m"))
    assert not signing.verify("ed25519-sha256", ed.public.pem, b"m", sm.sign(b"m"))


def _nvr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], env=env, capture_output=True, text=True)


def test_init_with_sm2_suite_and_rotate_back(nvr_env: dict[str, str]) -> None:
    out = _nvr(nvr_env, "init", "--suite", "sm2-sm3")
    assert out.returncode == 0, out.stderr
    (key,) = json.loads(_nvr(nvr_env, "keys", "list", "--json").stdout)["keys"]
    assert key["suite"] == "sm2-sm3" and key["purpose"] == "signing" and key["active"] and key["pinned"]
    assert "sm2-sm3  signing" in _nvr(nvr_env, "keys", "list").stdout
    # No --suite: the setting (default ed25519-sha256) decides the next key; the SM2 key stays pinned.
    out = _nvr(nvr_env, "keys", "rotate", "--yes")
    assert out.returncode == 0, out.stderr
    old, new = json.loads(_nvr(nvr_env, "keys", "list", "--json").stdout)["keys"]
    assert (old["suite"], new["suite"]) == ("sm2-sm3", "ed25519-sha256") and old["pinned"] and new["pinned"]
    # The setting switches it back, with a rotation.
    out = _nvr({**nvr_env, "NVR_CRYPTO_SUITE": "sm2-sm3"}, "keys", "rotate", "--yes")
    assert out.returncode == 0 and "(sm2-sm3)" in out.stdout, out.stderr
    out = _nvr(nvr_env, "keys", "rotate", "--yes", "--suite", "sm9")
    assert out.returncode == 2 and "suite_unknown" in out.stderr


def test_checkpoint_signed_with_sm2_key_verifies(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 2)
    with rt.db.session() as s:
        keys.ensure_key(s, rt.settings.keys_dir, T0, suite="sm2-sm3")
    with rt.db.session() as s:
        cp = checkpoints.make_checkpoint(s, keys.active_signer(s, rt.settings.keys_dir), T0 + MIN, rt.db.database_id())
        trusted = keys.trusted_keys(s, rt.settings)
    assert trusted[cp.key_id].suite == "sm2-sm3"
    assert checkpoints.verify_checkpoint(cp, trusted) is None  # type: ignore[arg-type]
    assert cp.suite == "sm2-sm3"
    cp.body = cp.body.replace('"seq":1', '"seq":9')
    assert checkpoints.verify_checkpoint(cp, trusted) is not None  # type: ignore[arg-type]
