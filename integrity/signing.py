"""Signatures behind one small interface, so the crypto suite can be swapped without touching its callers.

A *suite* names a signature algorithm and the hash used everywhere else with it. ``ed25519-sha256`` (Ed25519,
RFC 8032, with SHA-256 file hashes and chain links) is the one implemented and the default. The Chinese
commercial suite ``sm2-sm3`` (SM2 signatures, SM3 hashes) has its name reserved: selecting it fails with
``suite_unavailable`` until a vetted SM2/SM3 implementation is added (docs/integrity/keys.md says how it plugs in).

Keys travel as PEM (PKCS#8 private, SubjectPublicKeyInfo public). A key's *fingerprint* is the SHA-256 of its
public key's DER SubjectPublicKeyInfo, lowercase hex, so anyone can recompute it with standard tools::

    openssl pkey -pubin -in public_key.pem -outform DER | sha256sum

and its *key id* is the first 16 hex digits of the fingerprint. Signatures are over exact bytes (a manifest file,
a checkpoint body); Ed25519 signatures are 64 raw bytes, checkable with
``openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in FILE -sigfile FILE.sig`` (OpenSSL 3).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nvr.errors import Kind, NvrError

DEFAULT_SUITE = "ed25519-sha256"
RESERVED_SUITES = ("sm2-sm3",)
SUITES = (DEFAULT_SUITE,)
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PublicKey:
    suite: str
    pem: str
    fingerprint: str
    key_id: str


def _check_suite(suite: str) -> None:
    if suite in SUITES:
        return
    if suite in RESERVED_SUITES:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "suite_unavailable",
            f"crypto suite {suite!r} is reserved but not available in this build (see docs/integrity/keys.md)",
        )
    raise NvrError(Kind.INVALID_ARGUMENT, "suite_unknown", f"unknown crypto suite {suite!r}; known: {SUITES}")


def _spki_der(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_key(suite: str, pem: str | bytes) -> Ed25519PublicKey:
    _check_suite(suite)
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise NvrError(Kind.INVALID_ARGUMENT, "public_key_invalid", f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise NvrError(Kind.INVALID_ARGUMENT, "public_key_invalid", f"not an Ed25519 key (suite {suite})")
    return key


def public_key_info(suite: str, pem: str | bytes) -> PublicKey:
    """Parse a PEM public key of ``suite`` and compute its fingerprint and key id."""
    key = _public_key(suite, pem)
    fp = hashlib.sha256(_spki_der(key)).hexdigest()
    text = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return PublicKey(suite=suite, pem=text, fingerprint=fp, key_id=fp[:16])


def verify(suite: str, public_pem: str | bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_pem``'s signature of exactly ``message``."""
    key = _public_key(suite, public_pem)
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


class Signer:
    """A loaded private key. Keep it in memory only as long as needed; never log or return it."""

    def __init__(self, suite: str, private: Ed25519PrivateKey) -> None:
        self.suite = suite
        self._private = private
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = public_key_info(suite, pem)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def generate(suite: str = DEFAULT_SUITE) -> tuple[bytes, Signer]:
    """A new key: (private key as unencrypted PKCS#8 PEM, for a file only the service can read; its signer)."""
    _check_suite(suite)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, Signer(suite, private)


def load_signer(suite: str, private_pem: bytes) -> Signer:
    _check_suite(suite)
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise NvrError(Kind.DATA_LOSS, "signing_key_invalid", f"the signing key file cannot be read: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise NvrError(Kind.DATA_LOSS, "signing_key_invalid", f"the signing key is not an Ed25519 key ({suite})")
    return Signer(suite, key)


def normalise_fingerprint(text: str) -> str:
    """Accept a fingerprint as people copy it: any case, with or without ``SHA256:``, colons or spaces."""
    t = text.strip().lower()
    t = t.removeprefix("sha256:").removeprefix("sha-256:")
    t = re.sub(r"[\s:]", "", t)
    if not _HEX64.fullmatch(t):
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "fingerprint_invalid",
            "a key fingerprint is 64 hex digits (SHA-256 of the public key's DER), e.g. from 'nvr keys list'",
        )
    return t


def format_fingerprint(fp: str) -> str:
    """For reading aloud or over the phone: groups of four hex digits."""
    return " ".join(fp[i : i + 4] for i in range(0, len(fp), 4))
