"""Export envelopes: a bundle encrypted to one recipient's public key, opened offline with the matching private key.

An export request may name a recipient public key (issue 14): an **X25519** key (suite ``ed25519-sha256``) or an
**SM2** key (suite ``sm2-sm3``). The finished ZIP is then sealed into an envelope and only the envelope is served;
the plain ZIP never stays on the server's disk. docs/exports/encrypted-copies.md is the user's guide.

Layout (all of it read by :func:`open_envelope` and by the short script in the guide)::

    "NVR-ENVELOPE/1\\n"                                        15 bytes of ASCII
    header JSON, one line, UTF-8, then "\\n"                   at most MAX_HEADER bytes
    record*   sealed length (4 bytes, big-endian) | flags (1 byte) | sealed bytes

The header names the cipher, the recipient (key type and fingerprint), the chunk size, an 8-byte nonce prefix and
the key encapsulation:

- ``x25519-hkdf-sha256`` (AES-256-GCM): an ephemeral X25519 key (its PEM in the header); the data key is
  HKDF-SHA256(ECDH(ephemeral, recipient), salt from the header, info ``nvr-export-envelope/1``), 32 bytes.
- ``sm2-encrypt`` (SM4-GCM): a random 16-byte data key encrypted to the recipient with SM2 public-key encryption
  (GB/T 32918.4, the ASN.1 ciphertext of OpenSSL's ``pkeyutl -encrypt``), base64 in the header.

Both steps can be done with OpenSSL 3 alone (``pkeyutl -derive`` + ``kdf HKDF``; ``pkeyutl -decrypt``). Each record
is one chunk of the ZIP (``chunk_bytes``, the last one shorter, possibly empty) sealed with the data key, nonce
``nonce prefix ‖ record index (4 bytes)`` and associated data ``header bytes ‖ record index (8 bytes) ‖ flags``;
the last record has flag FINAL. So a changed header, records swapped, dropped, or cut off at a record boundary,
and bytes after the final record all fail, each with its own code (storage/crypt.py applies the same idea to
segment files; integrity may not import storage, so this module has its own small chunking).

What an envelope does **not** give: sender authenticity. Anyone holding the recipient's public key could make an
envelope; what proves where the content came from is the server's signature on the bundle inside, which
``nvr verify-export`` checks after decryption.

Error codes (:class:`NvrError`): ``recipient_key_invalid`` (a PEM that is no X25519/SM2 key, or a private key where
a public one belongs), ``envelope_invalid`` (not an envelope, or a malformed header or record), ``envelope_truncated``
(it ends early), ``envelope_suite_mismatch`` (an SM2 key for an X25519 envelope or the reverse),
``envelope_wrong_recipient`` (a key of the right type but not the recipient's), ``ciphertext_invalid`` (a record or
the wrapped key does not authenticate: altered bytes). A failure never leaves plaintext under the output name.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import UnsupportedAlgorithm as _CryptographyUnsupported
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from tongsuopy.backends.tongsuo.backend import backend as _gm_backend
from tongsuopy.crypto import exceptions as _gm_exceptions
from tongsuopy.crypto import serialization as _gm_serialization
from tongsuopy.crypto.asymciphers import ec as _gm_ec

from integrity import signing, suites
from nvr.errors import Kind, NvrError

MAGIC = b"NVR-ENVELOPE/1\n"
FORMAT = "nvr-export-envelope"
VERSION = 1
MAX_HEADER = 16 * 1024
CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 16 << 20
RECORD_HEAD = struct.Struct(">IB")
FINAL = 0x01
SUFFIX = ".nvrenc"
"""An envelope's file name is the bundle's plus this: ``export-7-CASE.zip.nvrenc``."""
HKDF_INFO = b"nvr-export-envelope/1"
SALT_BYTES = 32
NONCE_PREFIX_BYTES = 8
MAX_PEM = 16 * 1024
KEY_TYPES = ("x25519", "sm2")
CIPHER_OF = {"x25519": "aes-256-gcm", "sm2": "sm4-gcm"}
"""The cipher an envelope to each recipient type uses (integrity.suites: the suite's cipher)."""
SUITE_OF = {"x25519": "ed25519-sha256", "sm2": "sm2-sm3"}
SCHEME_OF = {"x25519": "x25519-hkdf-sha256", "sm2": "sm2-encrypt"}
HOW_TO_OPEN = (
    "nvr decrypt-export THIS_FILE --key RECIPIENT_PRIVATE_KEY.pem; by hand with OpenSSL 3 and a short script: "
    "docs/exports/encrypted-copies.md"
)
"""Readable with ``head -n 2`` by whoever receives the file."""
_ZIP_MAGIC = b"PK\x03\x04"
_GM_ERRORS = (ValueError, TypeError, _gm_exceptions.UnsupportedAlgorithm, _gm_exceptions.InternalError)

_DATA_LOSS_CODES = ("envelope_invalid", "envelope_truncated", "ciphertext_invalid")


class EnvelopeError(NvrError):
    """An envelope could not be made or opened; ``code`` says why (module docstring). Damage to the envelope is
    DATA_LOSS; the wrong key, or a key that is none, is INVALID_ARGUMENT (the caller can fix it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(Kind.DATA_LOSS if code in _DATA_LOSS_CODES else Kind.INVALID_ARGUMENT, code, message)


def _invalid(message: str) -> EnvelopeError:
    return EnvelopeError("envelope_invalid", message)


def _truncated(message: str) -> EnvelopeError:
    return EnvelopeError("envelope_truncated", message)


def _key_invalid(message: str) -> EnvelopeError:
    return EnvelopeError("recipient_key_invalid", message)


# --- keys ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipient:
    """A recipient's public key: ``key_type`` ``x25519`` or ``sm2``, ``fingerprint`` the SHA-256 of its DER
    SubjectPublicKeyInfo (lowercase hex, as for signing keys: integrity.signing), ``pem`` its SPKI PEM."""

    key_type: str
    fingerprint: str
    pem: str
    public_key: Any

    @property
    def cipher(self) -> str:
        return CIPHER_OF[self.key_type]

    @property
    def suite(self) -> str:
        return SUITE_OF[self.key_type]


@dataclass(frozen=True)
class PrivateKey:
    """A recipient's private key, loaded to open an envelope; never logged or printed."""

    key_type: str
    fingerprint: str
    key: Any


def _pem_bytes(pem: str | bytes, what: str) -> bytes:
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else bytes(pem)
    if len(data) > MAX_PEM:
        raise _key_invalid(f"the {what} is {len(data)} bytes; a PEM key is a few hundred")
    if b"-----BEGIN" not in data:
        raise _key_invalid(f"the {what} is not PEM (no '-----BEGIN' line)")
    return data.strip() + b"\n"


def _x25519_fingerprint(public: X25519PublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


_WRONG_TYPE = "an export is encrypted to an X25519 or SM2 public key"


def parse_recipient(pem: str | bytes) -> Recipient:
    """Check a recipient public key (PEM SubjectPublicKeyInfo) and compute its fingerprint; ``recipient_key_invalid``
    for anything else (not PEM, RSA, Ed25519, an EC key on another curve, a private key)."""
    data = _pem_bytes(pem, "recipient key")
    if b"PRIVATE KEY" in data:
        raise _key_invalid(
            "this is a private key; give only the public key (openssl pkey -in key.pem -pubout), and keep the "
            "private key with the recipient"
        )
    try:
        key: Any = serialization.load_pem_public_key(data)
    except _CryptographyUnsupported:  # an SM2 key: cryptography does not know the curve
        key = None
    except ValueError:
        raise _key_invalid("not a PEM public key (SubjectPublicKeyInfo, '-----BEGIN PUBLIC KEY-----')") from None
    if key is not None:
        if isinstance(key, X25519PublicKey):
            pem_text = key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode("ascii")
            return Recipient("x25519", _x25519_fingerprint(key), pem_text, key)
        kind = type(key).__name__.removeprefix("_").replace("PublicKey", "") or "unknown"
        raise _key_invalid(f"{kind} keys cannot receive an export; {_WRONG_TYPE}")
    try:
        gm = _gm_serialization.load_pem_public_key(data)
    except _GM_ERRORS:
        raise _key_invalid(f"not a usable public key; {_WRONG_TYPE}") from None
    if not (isinstance(gm, _gm_ec.EllipticCurvePublicKey) and isinstance(gm.curve, _gm_ec.SM2)):
        raise _key_invalid(f"an EC key on a curve other than SM2; {_WRONG_TYPE}")
    info = signing.public_key_info("sm2-sm3", data)  # the signing keys' fingerprint, reused
    return Recipient("sm2", info.fingerprint, info.pem, gm)


def load_private_key(pem: str | bytes) -> PrivateKey:
    """A recipient's PKCS#8 (or traditional EC) PEM private key, X25519 or SM2; ``recipient_key_invalid`` else."""
    data = _pem_bytes(pem, "private key")
    if b"ENCRYPTED" in data:
        raise _key_invalid(
            "the private key file is protected by a passphrase; write an unprotected copy to a private place first "
            "(openssl pkey -in key.pem -out plain.pem) or use 'nvr decrypt-export --passphrase-stdin'"
        )
    return _load_private(data, None)


def _load_private(data: bytes, password: bytes | None) -> PrivateKey:
    try:
        key: Any = serialization.load_pem_private_key(data, password=password)
    except _CryptographyUnsupported:
        key = None
    except (ValueError, TypeError):
        raise _key_invalid("not a readable PEM private key (or the passphrase is wrong)") from None
    if key is not None:
        if isinstance(key, X25519PrivateKey):
            return PrivateKey("x25519", _x25519_fingerprint(key.public_key()), key)
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "") or "unknown"
        raise _key_invalid(f"{kind} private keys cannot open an export envelope; it needs an X25519 or SM2 key")
    try:
        gm = _gm_serialization.load_pem_private_key(data, password=password)
    except _GM_ERRORS:
        raise _key_invalid("not a readable X25519 or SM2 private key") from None
    if not (isinstance(gm, _gm_ec.EllipticCurvePrivateKey) and isinstance(gm.curve, _gm_ec.SM2)):
        raise _key_invalid("an EC private key on a curve other than SM2 cannot open an export envelope")
    public_pem = gm.public_key().public_bytes(
        _gm_serialization.Encoding.PEM, _gm_serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PrivateKey("sm2", signing.public_key_info("sm2-sm3", public_pem).fingerprint, gm)


def load_private_key_with_passphrase(pem: str | bytes, passphrase: bytes) -> PrivateKey:
    return _load_private(_pem_bytes(pem, "private key"), passphrase)


def generate_key_pair(key_type: str) -> tuple[bytes, str]:
    """A new recipient key: (PKCS#8 PEM private key, unencrypted, for a file only its owner reads; SPKI PEM public
    key). The same keys ``openssl genpkey -algorithm X25519`` / ``-algorithm SM2`` make."""
    if key_type == "x25519":
        x = X25519PrivateKey.generate()
        private = x.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = x.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private, public.decode("ascii")
    if key_type == "sm2":
        g = _gm_ec.generate_private_key(_gm_ec.SM2())
        private = g.private_bytes(
            _gm_serialization.Encoding.PEM, _gm_serialization.PrivateFormat.PKCS8, _gm_serialization.NoEncryption()
        )
        public = g.public_key().public_bytes(
            _gm_serialization.Encoding.PEM, _gm_serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private, public.decode("ascii")
    raise _key_invalid(f"unknown recipient key type {key_type!r}; known: {', '.join(KEY_TYPES)}")


# --- SM2 public-key encryption, through Tongsuo's EVP interface (tongsuopy's cffi binding) ----------------------
def _sm2_crypt(evp_pkey: Any, data: bytes, encrypt: bool) -> bytes | None:
    """SM2 encryption (GB/T 32918.4, SM3 inside, ASN.1 ``SEQUENCE {x, y, hash, ciphertext}`` as OpenSSL 3's
    ``pkeyutl`` reads and writes it). tongsuopy has no Python API for it; its binding exposes the EVP calls, and
    its SM2 keys are EVP_PKEY_SM2 already. None when decryption fails (wrong key, altered bytes)."""
    lib, ffi = _gm_backend._lib, _gm_backend._ffi
    ctx = lib.EVP_PKEY_CTX_new(evp_pkey, ffi.NULL)
    if ctx == ffi.NULL:
        _gm_backend._consume_errors()
        raise EnvelopeError("recipient_key_invalid", "the SM2 key cannot be used for encryption")
    ctx = ffi.gc(ctx, lib.EVP_PKEY_CTX_free)
    init, run = (
        (lib.EVP_PKEY_encrypt_init, lib.EVP_PKEY_encrypt)
        if encrypt
        else (lib.EVP_PKEY_decrypt_init, lib.EVP_PKEY_decrypt)
    )
    size = ffi.new("size_t *")
    if init(ctx) != 1 or run(ctx, ffi.NULL, size, data, len(data)) != 1:
        _gm_backend._consume_errors()
        if encrypt:
            raise EnvelopeError("recipient_key_invalid", "the SM2 key cannot be used for encryption")
        return None
    buf = ffi.new("unsigned char[]", size[0])
    if run(ctx, buf, size, data, len(data)) != 1:
        _gm_backend._consume_errors()
        if encrypt:
            raise EnvelopeError("recipient_key_invalid", "SM2 encryption failed")
        return None
    return bytes(ffi.buffer(buf)[: size[0]])


def sm2_encrypt(recipient: Recipient, data: bytes) -> bytes:
    out = _sm2_crypt(recipient.public_key._evp_pkey, data, True)
    assert out is not None
    return out


def sm2_decrypt(private: PrivateKey, data: bytes) -> bytes | None:
    return _sm2_crypt(private.key._evp_pkey, data, False)


def hkdf_data_key(shared: bytes, salt: bytes) -> bytes:
    """The AES-256-GCM data key of an X25519 envelope (``openssl kdf -keylen 32 -kdfopt digest:SHA256 ... HKDF``)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=HKDF_INFO).derive(shared)


# --- the header ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    raw: bytes
    """The exact header bytes (magic, JSON line, newline): the associated data of every record."""
    fields: dict[str, Any]
    key_type: str
    cipher: str
    fingerprint: str
    chunk_bytes: int
    nonce_prefix: bytes


def _make_header(recipient: Recipient, chunk_bytes: int) -> tuple[bytes, bytes]:
    """(header bytes, data key)."""
    if recipient.key_type == "x25519":
        ephemeral = X25519PrivateKey.generate()
        salt = os.urandom(SALT_BYTES)
        data_key = hkdf_data_key(ephemeral.exchange(recipient.public_key), salt)
        eph_pem = ephemeral.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kem: dict[str, Any] = {
            "scheme": SCHEME_OF["x25519"],
            "ephemeral_public_key": eph_pem.decode("ascii"),
            "hkdf_salt": salt.hex(),
            "hkdf_info": HKDF_INFO.decode("ascii"),
            "hkdf_hash": "sha256",
        }
    else:
        data_key = suites.new_key("sm4-gcm")
        kem = {"scheme": SCHEME_OF["sm2"], "wrapped_key": base64.b64encode(sm2_encrypt(recipient, data_key)).decode()}
    fields = {
        "format": FORMAT,
        "version": VERSION,
        "cipher": recipient.cipher,
        "suite": recipient.suite,
        "recipient": {"type": recipient.key_type, "fingerprint": recipient.fingerprint},
        "chunk_bytes": chunk_bytes,
        "nonce_prefix": os.urandom(NONCE_PREFIX_BYTES).hex(),
        "key_encapsulation": kem,
        "content": "application/zip",
        "how_to_open": HOW_TO_OPEN,
    }
    line = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return MAGIC + line + b"\n", data_key


def _read_header(f: IO[bytes], name: str) -> Header:
    head = f.read(len(MAGIC))
    if head != MAGIC:
        if head and MAGIC.startswith(head):
            raise _truncated(f"{name}: the envelope ends inside its header ({len(head)} bytes)")
        if head.startswith(_ZIP_MAGIC):
            raise _invalid(f"{name}: this is a plain ZIP bundle, not an envelope; check it with nvr verify-export")
        raise _invalid(f"{name}: not an export envelope (it does not start with 'NVR-ENVELOPE/1')")
    line = f.readline(MAX_HEADER + 1)
    if not line.endswith(b"\n"):
        if len(line) > MAX_HEADER:
            raise _invalid(f"{name}: the envelope header is longer than {MAX_HEADER} bytes")
        raise _truncated(f"{name}: the envelope ends inside its header")
    try:
        fields = json.loads(line)
        if not isinstance(fields, dict):
            raise ValueError
        if fields.get("format") != FORMAT or fields.get("version") != VERSION:
            raise _invalid(f"{name}: not an envelope of format {FORMAT} version {VERSION}")
        rec, kem = fields["recipient"], fields["key_encapsulation"]
        key_type, cipher, fp = rec["type"], fields["cipher"], rec["fingerprint"]
        chunk, prefix = fields["chunk_bytes"], bytes.fromhex(fields["nonce_prefix"])
        valid = (
            key_type in KEY_TYPES
            and cipher == CIPHER_OF[key_type]
            and kem["scheme"] == SCHEME_OF[key_type]
            and isinstance(fp, str)
            and len(fp) == 64
            and type(chunk) is int
            and 0 < chunk <= MAX_CHUNK_BYTES
            and len(prefix) == NONCE_PREFIX_BYTES
        )
    except EnvelopeError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _invalid(f"{name}: the envelope header is malformed") from None
    if not valid:
        raise _invalid(f"{name}: the envelope header names an unknown or inconsistent recipient, cipher or chunk size")
    return Header(MAGIC + line, fields, key_type, cipher, fp, chunk, prefix)


def read_header(path: str | os.PathLike[str]) -> Header:
    """The header of an envelope file (no key needed): what it is encrypted to, with which cipher."""
    with open(path, "rb") as f:
        return _read_header(f, str(path))


def is_envelope(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _unwrap(header: Header, private: PrivateKey, name: str) -> bytes:
    kem = header.fields["key_encapsulation"]
    if header.key_type == "x25519":
        try:
            eph = serialization.load_pem_public_key(str(kem["ephemeral_public_key"]).encode("ascii"))
            salt = bytes.fromhex(kem["hkdf_salt"])
        except (ValueError, TypeError, KeyError, UnicodeError, _CryptographyUnsupported):
            raise _invalid(f"{name}: the envelope's ephemeral key or salt is malformed") from None
        if not isinstance(eph, X25519PublicKey) or kem.get("hkdf_info") != HKDF_INFO.decode() or len(salt) < 16:
            raise _invalid(f"{name}: the envelope's key encapsulation is malformed")
        try:
            shared = private.key.exchange(eph)
        except ValueError:  # an all-zero shared secret: a small-order ephemeral key, never one we made
            raise EnvelopeError("ciphertext_invalid", f"{name}: the envelope's ephemeral key is invalid") from None
        return hkdf_data_key(shared, salt)
    try:
        wrapped = base64.b64decode(str(kem["wrapped_key"]), validate=True)
    except (binascii.Error, ValueError, KeyError):
        raise _invalid(f"{name}: the envelope's wrapped key is not base64") from None
    key = sm2_decrypt(private, wrapped)
    if key is None or len(key) != suites.KEY_BYTES["sm4-gcm"]:
        raise EnvelopeError(
            "ciphertext_invalid", f"{name}: the wrapped data key does not decrypt with this SM2 key (altered bytes?)"
        )
    return key


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def _aad(header: bytes, index: int, flags: int) -> bytes:
    return header + index.to_bytes(8, "big") + bytes([flags])


# --- sealing and opening ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sealed:
    path: Path
    bytes: int
    sha256: str
    """SHA-256 of the envelope file: what is served and what the download's ``X-Bundle-SHA256`` names."""
    plain_bytes: int
    recipient: Recipient


def _private_temp(final: Path) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    return fd, Path(name)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def seal_envelope(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    recipient: Recipient,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
) -> Sealed:
    """Encrypt ``src`` to ``recipient`` into ``dst`` (which must not exist), streaming chunk by chunk: built under a
    temporary name (mode 0600) in ``dst``'s folder, fsynced and renamed; nothing under ``dst`` on failure."""
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError("chunk_bytes out of range")
    dst = Path(dst)
    if dst.exists():
        raise NvrError(Kind.CONFLICT, "envelope_exists", f"{dst} exists already")
    header, data_key = _make_header(recipient, chunk_bytes)
    prefix = bytes.fromhex(json.loads(header[len(MAGIC) :])["nonce_prefix"])
    digest = hashlib.sha256(header)
    fd, tmp = _private_temp(dst)
    plain = 0
    try:
        with open(src, "rb") as inp, os.fdopen(fd, "wb") as out:
            out.write(header)
            size = len(header)
            index = 0
            chunk = inp.read(chunk_bytes)
            while True:
                following = inp.read(chunk_bytes) if len(chunk) == chunk_bytes else b""
                flags = FINAL if not following else 0
                if index >= 1 << 32:
                    raise _invalid("the bundle is too large for one envelope")
                sealed = suites.seal(
                    recipient.cipher, data_key, _nonce(prefix, index), chunk, _aad(header, index, flags)
                )
                record = RECORD_HEAD.pack(len(sealed), flags) + sealed
                out.write(record)
                digest.update(record)
                size += len(record)
                plain += len(chunk)
                index += 1
                if progress is not None:
                    progress(plain)
                if flags & FINAL:
                    break
                chunk = following
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dst.parent)
    return Sealed(dst, size, digest.hexdigest(), plain, recipient)


@dataclass(frozen=True)
class Opened:
    path: Path
    bytes: int
    key_type: str
    fingerprint: str


def open_envelope(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    private_key: str | bytes | PrivateKey,
    *,
    overwrite: bool = False,
) -> Opened:
    """Decrypt the envelope ``src`` with the recipient's private key into ``dst``: written under a temporary name in
    ``dst``'s folder and renamed only once every record authenticated and the final one was seen, so a failure
    (any code of the module docstring) leaves nothing under ``dst`` and no temporary file either."""
    src, dst = Path(src), Path(dst)
    name = src.name
    if dst.exists() and not overwrite:
        raise NvrError(Kind.CONFLICT, "output_exists", f"{dst} exists already; name another output file")
    with src.open("rb") as f:
        header = _read_header(f, name)
        private = private_key if isinstance(private_key, PrivateKey) else load_private_key(private_key)
        if private.key_type != header.key_type:
            raise EnvelopeError(
                "envelope_suite_mismatch",
                f"{name} is encrypted to an {header.key_type.upper()} key ({header.cipher}, suite "
                f"{SUITE_OF[header.key_type]}); the key given is an {private.key_type.upper()} key",
            )
        if private.fingerprint != header.fingerprint:
            raise EnvelopeError(
                "envelope_wrong_recipient",
                f"{name} is encrypted to the {header.key_type} key with fingerprint {header.fingerprint}; the key "
                f"given has fingerprint {private.fingerprint}",
            )
        data_key = _unwrap(header, private, name)
        fd, tmp = _private_temp(dst)
        try:
            with os.fdopen(fd, "wb") as out:
                plain = _decrypt_records(f, out, header, data_key, name)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _fsync_dir(dst.parent)
    return Opened(dst, plain, header.key_type, header.fingerprint)


def _decrypt_records(f: IO[bytes], out: IO[bytes], header: Header, data_key: bytes, name: str) -> int:
    index = plain = 0
    limit = header.chunk_bytes + suites.TAG_BYTES
    while True:
        head = f.read(RECORD_HEAD.size)
        if len(head) < RECORD_HEAD.size:
            raise _truncated(f"{name}: the envelope ends after {index} record(s) without its final record (cut short)")
        length, flags = RECORD_HEAD.unpack(head)
        if length < suites.TAG_BYTES or length > limit or flags & ~FINAL:
            raise _invalid(f"{name}: record {index} has an impossible length or flags (damaged)")
        sealed = f.read(length)
        if len(sealed) < length:
            raise _truncated(f"{name}: the envelope ends inside record {index} (cut short)")
        try:
            chunk = suites.open_sealed(
                header.cipher, data_key, _nonce(header.nonce_prefix, index), sealed, _aad(header.raw, index, flags)
            )
        except suites.CiphertextInvalid:
            raise EnvelopeError(
                "ciphertext_invalid",
                f"{name}: record {index} does not authenticate ({header.cipher}): the envelope was altered",
            ) from None
        out.write(chunk)
        plain += len(chunk)
        index += 1
        if flags & FINAL:
            break
        if len(chunk) != header.chunk_bytes:
            raise _invalid(f"{name}: record {index - 1} is short but not the final one (damaged)")
    if f.read(1):
        raise _invalid(f"{name}: bytes follow the envelope's final record (appended or damaged)")
    return plain
