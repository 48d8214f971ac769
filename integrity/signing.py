"""Signatures behind one small interface, so the crypto suite can be swapped without touching its callers.

A *suite* (:mod:`integrity.suites`) names a signature algorithm and the hash and cipher used with it:

- ``ed25519-sha256`` (the default): Ed25519 (RFC 8032), from ``cryptography``. Signatures are 64 raw bytes.
- ``sm2-sm3``: SM2 signatures (GB/T 32918.2, GM/T 0003.2) with SM3 (GB/T 32905) as the message hash and the
  standard default distinguishing ID ``1234567812345678`` in the ``Z`` value, from ``tongsuopy`` (a binding to the
  Tongsuo C library, an OpenSSL 3 fork; docs/decisions/0009-commercial-cryptography.md). Signatures are the
  DER-encoded ``SEQUENCE { r INTEGER, s INTEGER }`` that OpenSSL produces and expects.

Keys travel as PEM (PKCS#8 private, SubjectPublicKeyInfo public) in every suite; an SM2 key is an
``id-ecPublicKey`` on the SM2 curve (OID 1.2.156.10197.1.301), as ``openssl genpkey -algorithm SM2`` makes it. A key
of the wrong type for its suite is refused with ``public_key_invalid`` / ``signing_key_invalid``.

A key's *fingerprint* is the SHA-256 of its public key's DER SubjectPublicKeyInfo, lowercase hex, **for every
suite** (an SM2 key's fingerprint is SHA-256 too, not SM3): one fingerprint format for the pinned key log, the
``trusted_key_fingerprints`` setting and export bundles, so a pin never depends on which suite made the key and
anyone can recompute it with standard tools::

    openssl pkey -pubin -in public_key.pem -outform DER | sha256sum

and its *key id* is the first 16 hex digits of the fingerprint. Signatures are over exact bytes (a manifest file,
a checkpoint body) and checkable with OpenSSL 3::

    # ed25519-sha256
    openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in FILE -sigfile FILE.sig
    # sm2-sm3
    openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in FILE -sigfile FILE.sig \\
        -digest sm3 -pkeyopt distid:1234567812345678
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as _CryptographyUnsupported
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from tongsuopy.crypto import exceptions as _gm_exceptions
from tongsuopy.crypto import hashes as _gm_hashes
from tongsuopy.crypto import serialization as _gm_serialization
from tongsuopy.crypto.asymciphers import ec as _gm_ec

from integrity import suites
from nvr.errors import Kind, NvrError

DEFAULT_SUITE = suites.DEFAULT_SUITE
SUITES = suites.SUITE_NAMES
SM2_DEFAULT_ID = b"1234567812345678"
"""The distinguishing ID in every SM2 signature here (GM/T 0009's default); Tongsuo uses it when none is set."""
_HEX64 = re.compile(r"[0-9a-f]{64}")
_GM_ERRORS = (ValueError, TypeError, _gm_exceptions.UnsupportedAlgorithm, _gm_exceptions.InternalError)
_SM2_SIGNATURE = _gm_ec.ECDSA(_gm_hashes.SM3())
"""tongsuopy's name for "sign with this EC key": on an SM2 key it is SM2 with SM3 and the default ID."""


@dataclass(frozen=True)
class PublicKey:
    suite: str
    pem: str
    fingerprint: str
    key_id: str


def _signature_alg(suite: str) -> str:
    """``ed25519`` or ``sm2``; ``suite_unknown`` for a name that is no suite."""
    return suites.get(suite).signature


def _spki_der(public: Any) -> bytes:
    if isinstance(public, Ed25519PublicKey):
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    der: bytes = public.public_bytes(
        _gm_serialization.Encoding.DER, _gm_serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _spki_pem(public: Any) -> str:
    if isinstance(public, Ed25519PublicKey):
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        pem = public.public_bytes(_gm_serialization.Encoding.PEM, _gm_serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii")


def _is_sm2(key: Any) -> bool:
    return isinstance(key, _gm_ec.EllipticCurvePublicKey | _gm_ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, _gm_ec.SM2
    )


def _public_key(suite: str, pem: str | bytes) -> Any:
    alg = _signature_alg(suite)
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    if alg == "ed25519":
        try:
            key: Any = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise NvrError(Kind.INVALID_ARGUMENT, "public_key_invalid", f"not a PEM public key: {exc}") from None
        except _CryptographyUnsupported:  # e.g. an SM2 key: cryptography does not know the curve
            raise NvrError(Kind.INVALID_ARGUMENT, "public_key_invalid", f"not an Ed25519 key (suite {suite})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise NvrError(Kind.INVALID_ARGUMENT, "public_key_invalid", f"not an Ed25519 key (suite {suite})")
        return key
    try:
        key = _gm_serialization.load_pem_public_key(data)
    except _gm_exceptions.UnsupportedAlgorithm:  # an Ed25519 key, or EC on another curve
        raise NvrError(Kind.INVALID_ARGUMENT, "public_key_invalid", f"not an SM2 key (suite {suite})") from None
    except _GM_ERRORS:
        raise NvrError(Kind.INVALID_ARGUMENT, "public_key_invalid", "not a PEM public key") from None
    if not _is_sm2(key):
        raise NvrError(Kind.INVALID_ARGUMENT, "public_key_invalid", f"not an SM2 key (suite {suite})")
    return key


def public_key_info(suite: str, pem: str | bytes) -> PublicKey:
    """Parse a PEM public key of ``suite`` and compute its fingerprint (SHA-256 of the DER SPKI) and key id."""
    key = _public_key(suite, pem)
    fp = hashlib.sha256(_spki_der(key)).hexdigest()
    return PublicKey(suite=suite, pem=_spki_pem(key), fingerprint=fp, key_id=fp[:16])


def verify(suite: str, public_pem: str | bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_pem``'s signature of exactly ``message`` in ``suite``; False for any
    other signature, malformed ones included. A key that is not of the suite raises ``public_key_invalid``."""
    key = _public_key(suite, public_pem)
    if isinstance(key, Ed25519PublicKey):
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True
    try:
        key.verify(signature, message, _SM2_SIGNATURE)
    except (_gm_exceptions.InvalidSignature, _gm_exceptions.InternalError, ValueError):
        return False  # InternalError: Tongsuo could not even parse the DER (r, s); that is not a valid signature
    return True


class Signer:
    """A loaded private key. Keep it in memory only as long as needed; never log or return it."""

    def __init__(self, suite: str, private: Any) -> None:
        self.suite = suite
        self._private = private
        self.public = public_key_info(suite, _spki_pem(private.public_key()))

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        """Ed25519: 64 bytes. SM2: DER ``(r, s)`` over SM3(Z ‖ message), Z with ID ``1234567812345678``."""
        if isinstance(self._private, Ed25519PrivateKey):
            return self._private.sign(message)
        signature: bytes = self._private.sign(message, _SM2_SIGNATURE)
        return signature


def generate(suite: str = DEFAULT_SUITE) -> tuple[bytes, Signer]:
    """A new key: (private key as unencrypted PKCS#8 PEM, for a file only the service can read; its signer)."""
    private: Any
    if _signature_alg(suite) == "ed25519":
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    else:
        private = _gm_ec.generate_private_key(_gm_ec.SM2())
        pem = private.private_bytes(
            _gm_serialization.Encoding.PEM, _gm_serialization.PrivateFormat.PKCS8, _gm_serialization.NoEncryption()
        )
    return pem, Signer(suite, private)


def load_signer(suite: str, private_pem: bytes) -> Signer:
    alg = _signature_alg(suite)
    key: Any
    if alg == "ed25519":
        try:
            key = serialization.load_pem_private_key(private_pem, password=None)
        except (ValueError, TypeError, _CryptographyUnsupported) as exc:
            raise NvrError(
                Kind.DATA_LOSS, "signing_key_invalid", f"the signing key file cannot be read as an Ed25519 key: {exc}"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise NvrError(Kind.DATA_LOSS, "signing_key_invalid", f"the signing key is not an Ed25519 key ({suite})")
        return Signer(suite, key)
    try:
        key = _gm_serialization.load_pem_private_key(private_pem, password=None)
    except _gm_exceptions.UnsupportedAlgorithm:
        raise NvrError(Kind.DATA_LOSS, "signing_key_invalid", f"the signing key is not an SM2 key ({suite})") from None
    except _GM_ERRORS:
        # Tongsuo's message lists its error stack; nothing of the key itself is in it, but keep it short.
        raise NvrError(
            Kind.DATA_LOSS, "signing_key_invalid", "the signing key file cannot be read as a PEM PKCS#8 SM2 key"
        ) from None
    if not _is_sm2(key):
        raise NvrError(Kind.DATA_LOSS, "signing_key_invalid", f"the signing key is not an SM2 key ({suite})")
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
