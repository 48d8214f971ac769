"""Export envelopes (integrity.envelope): a file encrypted to an X25519 or SM2 recipient opens only with that key,
every kind of damage has its own code and leaves no output behind, the SM2 key step interoperates with OpenSSL 3,
and the by-hand recipe of docs/exports/encrypted-copies.md works as written."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from integrity import envelope
from nvr.errors import NvrError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "exports" / "encrypted-copies.md"
CHUNK = 4096  # small chunks: several records per test file
KEY_TYPES = ("x25519", "sm2")


def _code(exc: pytest.ExceptionInfo[NvrError]) -> str:
    return exc.value.code


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, str]]:
    """Two key pairs of each type: ``x25519``, ``x25519-other``, ``sm2``, ``sm2-other``."""
    out = {}
    for t in KEY_TYPES:
        out[t] = envelope.generate_key_pair(t)
        out[f"{t}-other"] = envelope.generate_key_pair(t)
    return out


def _plain(tmp_path: Path, size: int = 3 * CHUNK + 123) -> Path:
    p = tmp_path / "bundle.zip"
    p.write_bytes((b"PK\x03\x04" + os.urandom(max(size - 4, 0)))[:size])
    return p


def _seal(tmp_path: Path, keys, key_type: str, size: int = 3 * CHUNK + 123) -> tuple[Path, Path]:
    src = _plain(tmp_path, size)
    sealed = envelope.seal_envelope(
        src, tmp_path / "bundle.zip.nvrenc", envelope.parse_recipient(keys[key_type][1]), chunk_bytes=CHUNK
    )
    return src, sealed.path


def _only(tmp_path: Path, *names: str) -> None:
    """Nothing but these files in the folder: no output, no temporary file left by a failure."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def _openssl(*args: str, **kw) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], capture_output=True, check=True, timeout=30, **kw)


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("size", [0, CHUNK, 3 * CHUNK + 123])
def test_round_trip(tmp_path: Path, keys, key_type: str, size: int) -> None:
    src, env = _seal(tmp_path, keys, key_type, size)
    h = envelope.read_header(env)
    recipient = envelope.parse_recipient(keys[key_type][1])
    assert (h.key_type, h.fingerprint, h.cipher) == (key_type, recipient.fingerprint, envelope.CIPHER_OF[key_type])
    assert env.read_bytes().count(src.read_bytes()[4:64]) == 0 or size == 0  # no plaintext in the envelope
    opened = envelope.open_envelope(env, tmp_path / "out.zip", keys[key_type][0])
    assert (tmp_path / "out.zip").read_bytes() == src.read_bytes()
    assert opened.bytes == size and opened.fingerprint == recipient.fingerprint
    _only(tmp_path, "bundle.zip", "bundle.zip.nvrenc", "out.zip")


def test_envelopes_differ_each_time(tmp_path: Path, keys) -> None:
    """A fresh data key (SM2) or ephemeral key (X25519) and nonce prefix per envelope."""
    src = _plain(tmp_path)
    for t in KEY_TYPES:
        r = envelope.parse_recipient(keys[t][1])
        a = envelope.seal_envelope(src, tmp_path / f"a-{t}", r).path.read_bytes()
        b = envelope.seal_envelope(src, tmp_path / f"b-{t}", r).path.read_bytes()
        assert a != b and a[len(envelope.MAGIC) :].split(b"\n")[0] != b[len(envelope.MAGIC) :].split(b"\n")[0]


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_another_recipients_key_is_refused(tmp_path: Path, keys, key_type: str) -> None:
    _, env = _seal(tmp_path, keys, key_type)
    with pytest.raises(NvrError) as exc:
        envelope.open_envelope(env, tmp_path / "out.zip", keys[f"{key_type}-other"][0])
    assert _code(exc) == "envelope_wrong_recipient"
    assert envelope.read_header(env).fingerprint in exc.value.message
    _only(tmp_path, "bundle.zip", "bundle.zip.nvrenc")


@pytest.mark.parametrize(("key_type", "wrong"), [("x25519", "sm2"), ("sm2", "x25519")])
def test_a_key_of_the_other_suite_is_a_suite_mismatch(tmp_path: Path, keys, key_type: str, wrong: str) -> None:
    _, env = _seal(tmp_path, keys, key_type)
    with pytest.raises(NvrError) as exc:
        envelope.open_envelope(env, tmp_path / "out.zip", keys[wrong][0])
    assert _code(exc) == "envelope_suite_mismatch"
    assert key_type.upper() in exc.value.message and wrong.upper() in exc.value.message
    _only(tmp_path, "bundle.zip", "bundle.zip.nvrenc")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_truncation_anywhere_is_named(tmp_path: Path, keys, key_type: str) -> None:
    _, env = _seal(tmp_path, keys, key_type)
    data = env.read_bytes()
    header_end = data.index(b"\n", len(envelope.MAGIC)) + 1
    record = envelope.RECORD_HEAD.size + CHUNK + 16
    cuts = {
        "inside the magic": 5,
        "inside the header": header_end - 10,
        "after the header": header_end,
        "inside a record head": header_end + 2,
        "inside a record": header_end + record // 2,
        "at a record boundary": header_end + 2 * record,
        "one byte short": len(data) - 1,
    }
    for what, at in cuts.items():
        cut = tmp_path / "cut.nvrenc"
        cut.write_bytes(data[:at])
        with pytest.raises(NvrError) as exc:
            envelope.open_envelope(cut, tmp_path / "out.zip", keys[key_type][0])
        assert _code(exc) == "envelope_truncated", what
        assert not (tmp_path / "out.zip").exists(), what
    _only(tmp_path, "bundle.zip", "bundle.zip.nvrenc", "cut.nvrenc")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_altered_bytes_fail_authentication(tmp_path: Path, keys, key_type: str) -> None:
    _, env = _seal(tmp_path, keys, key_type)
    data = env.read_bytes()
    header_end = data.index(b"\n", len(envelope.MAGIC)) + 1
    record = envelope.RECORD_HEAD.size + CHUNK + 16
    bad = tmp_path / "bad.nvrenc"

    def refused(blob: bytes) -> str:
        bad.write_bytes(blob)
        with pytest.raises(NvrError) as exc:
            envelope.open_envelope(bad, tmp_path / "out.zip", keys[key_type][0])
        assert not (tmp_path / "out.zip").exists()
        return _code(exc)

    for offset in (header_end + 5 + 10, header_end + record + 100, len(data) - 1):  # ciphertext, 2nd record, tag
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        assert refused(bytes(flipped)) == "ciphertext_invalid", offset
    # The header is authenticated too: a different nonce prefix, or a record marked final early.
    h = json.loads(data[len(envelope.MAGIC) : header_end])
    prefix = h["nonce_prefix"]
    other = ("0" if prefix[0] != "0" else "1") + prefix[1:]
    assert refused(data.replace(prefix.encode(), other.encode(), 1)) == "ciphertext_invalid"
    early_final = bytearray(data)
    early_final[header_end + 4] = envelope.FINAL
    assert refused(bytes(early_final)) == "ciphertext_invalid"
    # Records swapped.
    first, second = data[header_end : header_end + record], data[header_end + record : header_end + 2 * record]
    swapped = data[:header_end] + second + first + data[header_end + 2 * record :]
    assert refused(swapped) == "ciphertext_invalid"
    # Bytes after the final record; a length no record has.
    assert refused(data + b"\x00") == "envelope_invalid"
    huge = bytearray(data)
    huge[header_end : header_end + 4] = (CHUNK + 17).to_bytes(4, "big")
    assert refused(bytes(huge)) == "envelope_invalid"
    _only(tmp_path, "bundle.zip", "bundle.zip.nvrenc", "bad.nvrenc")


def test_not_an_envelope(tmp_path: Path, keys) -> None:
    src = _plain(tmp_path)
    with pytest.raises(NvrError) as exc:
        envelope.open_envelope(src, tmp_path / "out.zip", keys["x25519"][0])
    assert _code(exc) == "envelope_invalid" and "plain ZIP" in exc.value.message
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world, not an envelope at all")
    with pytest.raises(NvrError) as exc:
        envelope.open_envelope(junk, tmp_path / "out.zip", keys["x25519"][0])
    assert _code(exc) == "envelope_invalid"
    garbled = tmp_path / "garbled"
    garbled.write_bytes(envelope.MAGIC + b"{not json\n" + b"\x00" * 40)
    with pytest.raises(NvrError) as exc:
        envelope.open_envelope(garbled, tmp_path / "out.zip", keys["x25519"][0])
    assert _code(exc) == "envelope_invalid"
    _only(tmp_path, "bundle.zip", "junk", "garbled")


def test_an_existing_output_is_never_overwritten(tmp_path: Path, keys) -> None:
    _, env = _seal(tmp_path, keys, "x25519")
    out = tmp_path / "out.zip"
    out.write_bytes(b"precious")
    with pytest.raises(NvrError) as exc:
        envelope.open_envelope(env, out, keys["x25519"][0])
    assert _code(exc) == "output_exists" and out.read_bytes() == b"precious"


def _pem_public(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "x" * 20000,
        _pem_public(ed25519.Ed25519PrivateKey.generate()),
        _pem_public(ec.generate_private_key(ec.SECP256R1())),
        _pem_public(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ],
    ids=["text", "bad-base64", "huge", "ed25519", "p256", "rsa"],
)
def test_recipient_key_refusals(pem: str) -> None:
    with pytest.raises(NvrError) as exc:
        envelope.parse_recipient(pem)
    assert _code(exc) == "recipient_key_invalid"


def test_a_private_key_is_never_taken_as_recipient(keys) -> None:
    for t in KEY_TYPES:
        with pytest.raises(NvrError) as exc:
            envelope.parse_recipient(keys[t][0])
        assert _code(exc) == "recipient_key_invalid" and "private key" in exc.value.message


def test_openssl_keys_and_fingerprints(tmp_path: Path) -> None:
    """Keys made by `openssl genpkey` (both SM2 spellings) are accepted; the fingerprint is what
    `openssl pkey -pubin -outform DER | sha256sum` prints."""
    for name, args in {
        "x25519": ["-algorithm", "X25519"],
        "sm2": ["-algorithm", "SM2"],
        "sm2-ec": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:SM2"],
    }.items():
        key, pub = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
        _openssl("genpkey", *args, "-out", str(key))
        _openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub))
        der = _openssl("pkey", "-pubin", "-in", str(pub), "-outform", "DER").stdout
        r = envelope.parse_recipient(pub.read_text())
        assert r.key_type == name.split("-")[0]
        assert r.fingerprint == hashlib.sha256(der).hexdigest()
        assert envelope.load_private_key(key.read_bytes()).fingerprint == r.fingerprint
        src = _plain(tmp_path)
        env = envelope.seal_envelope(src, tmp_path / f"{name}.nvrenc", r).path
        envelope.open_envelope(env, tmp_path / f"{name}.out", key.read_bytes())
        assert (tmp_path / f"{name}.out").read_bytes() == src.read_bytes()


def test_sm2_key_encapsulation_interoperates_with_openssl(tmp_path: Path, keys) -> None:
    """Both directions: OpenSSL 3 decrypts what we SM2-encrypt, and we decrypt what OpenSSL 3 encrypts."""
    priv_pem, pub_pem = keys["sm2"]
    (tmp_path / "key.pem").write_bytes(priv_pem)
    (tmp_path / "pub.pem").write_text(pub_pem)
    secret = os.urandom(16)
    ours = envelope.sm2_encrypt(envelope.parse_recipient(pub_pem), secret)
    (tmp_path / "ours.bin").write_bytes(ours)
    got = _openssl("pkeyutl", "-decrypt", "-inkey", str(tmp_path / "key.pem"), "-in", str(tmp_path / "ours.bin"))
    assert got.stdout == secret
    (tmp_path / "secret.bin").write_bytes(secret)
    _openssl(
        "pkeyutl", "-encrypt", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
        "-in", str(tmp_path / "secret.bin"), "-out", str(tmp_path / "theirs.bin"),
    )  # fmt: skip
    private = envelope.load_private_key(priv_pem)
    assert envelope.sm2_decrypt(private, (tmp_path / "theirs.bin").read_bytes()) == secret
    other = envelope.load_private_key(keys["sm2-other"][0])
    assert envelope.sm2_decrypt(other, ours) is None


def _doc_block(tag: str) -> str:
    m = re.search(rf"<!-- test:{tag} -->\n```\w+\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"no block {tag} in {DOC}"
    return m.group(1)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_the_documented_openssl_recipe_opens_an_envelope(tmp_path: Path, keys, key_type: str) -> None:
    """docs/exports/encrypted-copies.md, run as written: OpenSSL 3 recovers the data key, the page's script
    decrypts the records, and the fingerprint check prints the same fingerprint twice."""
    src, env = _seal(tmp_path, keys, key_type)
    env.rename(tmp_path / "export.zip.nvrenc")
    (tmp_path / "recipient.pem").write_bytes(keys[key_type][0])
    (tmp_path / "open-envelope.py").write_text(_doc_block("script"))
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # python3 with `cryptography`
    (shim / "python3").chmod(0o755)
    env_vars = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}

    def run(tag: str) -> str:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _doc_block(tag)],
            cwd=tmp_path, env=env_vars, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    lines = run("fingerprint").split()
    assert lines[0] == lines[1] == envelope.parse_recipient(keys[key_type][1]).fingerprint
    run(key_type)
    assert (tmp_path / "export.zip").read_bytes() == src.read_bytes()


def _nvr(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    return subprocess.run(
        [sys.executable, "-m", "nvr", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False, cwd=ROOT, input=stdin,
    )  # fmt: skip


def test_decrypt_export_cli(tmp_path: Path, keys) -> None:
    src, env = _seal(tmp_path, keys, "sm2")
    src = src.rename(tmp_path / "original.zip")  # the default output's name must be free
    for name, (private, _) in keys.items():
        (tmp_path / f"{name}.pem").write_bytes(private)
    mine = str(tmp_path / "sm2.pem")

    wrong = _nvr("decrypt-export", str(env), "--key", str(tmp_path / "sm2-other.pem"))
    assert wrong.returncode == 2 and "error: envelope_wrong_recipient:" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    mismatch = _nvr("decrypt-export", str(env), "--key", str(tmp_path / "x25519.pem"))
    assert mismatch.returncode == 2 and "error: envelope_suite_mismatch:" in mismatch.stderr
    cut = tmp_path / "cut.zip.nvrenc"
    cut.write_bytes(env.read_bytes()[:-7])
    truncated = _nvr("decrypt-export", str(cut), "--key", mine)
    assert truncated.returncode == 1 and "error: envelope_truncated:" in truncated.stderr
    assert not (tmp_path / "cut.zip").exists()
    not_key = _nvr("decrypt-export", str(env), "--key", str(src))
    assert not_key.returncode == 2 and "error: recipient_key_invalid:" in not_key.stderr
    assert _nvr("decrypt-export", str(env)).returncode == 4  # --key missing
    assert _nvr("decrypt-export", str(env), "--key", mine, "--nope").returncode == 4
    assert not (tmp_path / "bundle.zip.nvrenc.zip").exists() and not list(tmp_path.glob("*.partial"))

    ok = _nvr("decrypt-export", str(env), "--key", mine)  # default output: the name without .nvrenc
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "bundle.zip").read_bytes() == (tmp_path / "original.zip").read_bytes()
    again = _nvr("decrypt-export", str(env), "--key", mine)
    assert again.returncode == 4 and "exists already" in again.stderr


def test_new_key_and_passphrase(tmp_path: Path) -> None:
    made = _nvr("decrypt-export", "--new-key", str(tmp_path / "r.pem"), "--type", "x25519")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "r.pem").stat().st_mode & 0o077 == 0
    recipient = envelope.parse_recipient((tmp_path / "r.pub.pem").read_text())
    assert recipient.fingerprint in made.stdout
    assert _nvr("decrypt-export", "--new-key", str(tmp_path / "r.pem"), "--type", "x25519").returncode == 4
    assert _nvr("decrypt-export", "--new-key", str(tmp_path / "s.pem"), "--type", "rsa").returncode == 4

    # A passphrase-protected copy of the key (as `openssl pkey -aes256` writes it).
    _openssl(
        "pkey", "-in", str(tmp_path / "r.pem"), "-aes256", "-passout", "pass:correct horse",
        "-out", str(tmp_path / "locked.pem"),
    )  # fmt: skip
    src = _plain(tmp_path)
    env = envelope.seal_envelope(src, tmp_path / "b.zip.nvrenc", recipient).path
    no_pass = _nvr("decrypt-export", str(env), "--key", str(tmp_path / "locked.pem"))
    assert no_pass.returncode == 2 and "passphrase" in no_pass.stderr
    bad = _nvr("decrypt-export", str(env), "--key", str(tmp_path / "locked.pem"), "--passphrase-stdin", stdin="no\n")
    assert bad.returncode == 2 and "recipient_key_invalid" in bad.stderr
    good = _nvr(
        "decrypt-export", str(env), "--key", str(tmp_path / "locked.pem"), "--passphrase-stdin",
        "-o", str(tmp_path / "out.zip"), stdin="correct horse\n",
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "out.zip").read_bytes() == src.read_bytes()
