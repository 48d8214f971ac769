"""Crypto suites: which hash, signature and cipher go together, and the hash and cipher primitives behind them.

A *suite* is chosen at ``nvr init`` (setting ``crypto_suite``) and changed by a setting plus a key rotation
(``nvr keys rotate``). It names three algorithms that are always used together:

==================  =============  ============  ==============  ======================
suite               signatures     hashes        encryption      export recipients
==================  =============  ============  ==============  ======================
``ed25519-sha256``  Ed25519        SHA-256       AES-256-GCM     X25519
``sm2-sm3``         SM2 (GB/T      SM3 (GB/T     SM4-GCM (GB/T   SM2 (ECDH on the SM2
                    32918, ID      32905)        32907, RFC      curve, KDF over SM3)
                    1234567812345678)            8998)
==================  =============  ============  ==============  ======================

Every record says which algorithm made it (a segment's and an audit event's ``hash_alg``, a checkpoint's and a
key's ``suite``, a bundle manifest's ``hash``), so an archive that switched suite keeps verifying old and new
material with the algorithm each was made with. Nothing here guesses an algorithm from a digest's length: SHA-256
and SM3 digests are both 64 hex digits.

Implementations (docs/decisions/0009-commercial-cryptography.md): SHA-256 from :mod:`hashlib`; SM3 from the OpenSSL
behind :mod:`hashlib` when it has SM3 (OpenSSL 3 does), otherwise from ``cryptography``; AES-256-GCM and SM4-GCM
from ``cryptography`` (OpenSSL). Signatures live in :mod:`integrity.signing`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes as _hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nvr.errors import Kind, NvrError

CHUNK = 1 << 20

DEFAULT_SUITE = "ed25519-sha256"
DEFAULT_HASH = "sha256"


@dataclass(frozen=True)
class Suite:
    name: str
    signature: str
    """``ed25519`` or ``sm2``."""
    hash_alg: str
    """``sha256`` or ``sm3``: segment digests, chain links, audit chain, checkpoint and manifest hashes."""
    cipher: str
    """``aes-256-gcm`` or ``sm4-gcm``: encryption at rest and export envelopes."""
    recipient: str
    """``x25519`` or ``sm2``: the public-key type an export may be encrypted to."""


SUITES: dict[str, Suite] = {
    "ed25519-sha256": Suite("ed25519-sha256", "ed25519", "sha256", "aes-256-gcm", "x25519"),
    "sm2-sm3": Suite("sm2-sm3", "sm2", "sm3", "sm4-gcm", "sm2"),
}
SUITE_NAMES = tuple(SUITES)


def get(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "suite_unknown", f"unknown crypto suite {name!r}; known: {', '.join(SUITES)}"
        ) from None


# --- hashes ----------------------------------------------------------------------------------------------------
HASH_ALGS = ("sha256", "sm3")


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class _CryptographyHash:
    """``cryptography``'s hash with hashlib's ``hexdigest``; used for SM3 when hashlib's OpenSSL lacks it."""

    def __init__(self, algorithm: _hashes.HashAlgorithm) -> None:
        self._h = _hashes.Hash(algorithm)

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._h.update(bytes(data) if not isinstance(data, bytes) else data)

    def hexdigest(self) -> str:
        return self._h.copy().finalize().hex()


def _hashlib_has_sm3() -> bool:
    try:
        hashlib.new("sm3")
    except ValueError:
        return False
    return True


_HASHLIB_SM3 = _hashlib_has_sm3()


def check_hash_alg(alg: str) -> str:
    if alg not in HASH_ALGS:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "hash_alg_unknown", f"unknown hash algorithm {alg!r}; known: {', '.join(HASH_ALGS)}"
        )
    return alg


def new_hash(alg: str = DEFAULT_HASH) -> Hasher:
    """A running hash of ``alg`` (``sha256`` or ``sm3``) with ``update`` and ``hexdigest``."""
    if alg == "sha256":
        return hashlib.sha256()
    if alg == "sm3":
        return hashlib.new("sm3") if _HASHLIB_SM3 else _CryptographyHash(_hashes.SM3())
    check_hash_alg(alg)
    raise AssertionError("unreachable")


def digest(alg: str, data: bytes) -> str:
    """Lowercase hex digest of ``data``."""
    h = new_hash(alg)
    h.update(data)
    return h.hexdigest()


def file_digest(alg: str, path: str | os.PathLike[str]) -> str:
    h = new_hash(alg)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def openssl_name(alg: str) -> str:
    """The name ``openssl dgst`` takes: ``-sha256`` / ``-sm3``; what VERIFY.txt tells an auditor to type."""
    return {"sha256": "sha256", "sm3": "sm3"}[check_hash_alg(alg)]


def coreutils_command(alg: str) -> str:
    """A standard command printing ``<hex>  <file>`` lines for ``alg``."""
    return {"sha256": "sha256sum", "sm3": "openssl dgst -sm3 -r"}[check_hash_alg(alg)]


# --- authenticated encryption ----------------------------------------------------------------------------------
CIPHERS = ("aes-256-gcm", "sm4-gcm")
KEY_BYTES = {"aes-256-gcm": 32, "sm4-gcm": 16}
NONCE_BYTES = 12
TAG_BYTES = 16


def check_cipher(cipher: str) -> str:
    if cipher not in CIPHERS:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "cipher_unknown", f"unknown cipher {cipher!r}; known: {', '.join(CIPHERS)}"
        )
    return cipher


def new_key(cipher: str) -> bytes:
    return os.urandom(KEY_BYTES[check_cipher(cipher)])


def _check_key(cipher: str, key: bytes) -> None:
    if len(key) != KEY_BYTES[check_cipher(cipher)]:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "key_invalid", f"a {cipher} key is {KEY_BYTES[cipher]} bytes, not {len(key)}"
        )


def seal(cipher: str, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """``ciphertext ‖ 16-byte tag`` of ``plaintext`` under ``key`` and a 12-byte ``nonce`` never used twice with it."""
    _check_key(cipher, key)
    if cipher == "aes-256-gcm":
        return AESGCM(key).encrypt(nonce, plaintext, aad or None)
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    if aad:
        enc.authenticate_additional_data(aad)
    body = enc.update(plaintext) + enc.finalize()
    return body + enc.tag


class CiphertextInvalid(NvrError):
    """Authentication failed: wrong key, or the ciphertext, nonce or associated data changed."""

    def __init__(self, detail: str) -> None:
        super().__init__(Kind.DATA_LOSS, "ciphertext_invalid", detail)


def open_sealed(cipher: str, key: bytes, nonce: bytes, sealed: bytes, aad: bytes = b"", what: str = "data") -> bytes:
    """The plaintext of :func:`seal`'s output; :class:`CiphertextInvalid` when it does not authenticate."""
    _check_key(cipher, key)
    if len(sealed) < TAG_BYTES:
        raise CiphertextInvalid(f"{what}: ciphertext shorter than its {TAG_BYTES}-byte tag (truncated)")
    try:
        if cipher == "aes-256-gcm":
            return AESGCM(key).decrypt(nonce, sealed, aad or None)
        body, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
        dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
        if aad:
            dec.authenticate_additional_data(aad)
        return dec.update(body) + dec.finalize()
    except InvalidTag:
        raise CiphertextInvalid(
            f"{what} does not authenticate under {cipher}: wrong key, or the bytes were altered or cut short"
        ) from None
