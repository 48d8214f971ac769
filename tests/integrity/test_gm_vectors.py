"""GM/T test vectors through the code the server uses: SM3 (GB/T 32905 / GM/T 0004) via integrity.suites.digest,
SM4 (GB/T 32907) block check plus SM4-GCM through suites.seal/open_sealed, and the SM2 signature example of
GM/T 0003.5 on the recommended curve through integrity.signing.verify."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from tongsuopy.crypto import serialization as gm_serialization
from tongsuopy.crypto.asymciphers import ec as gm_ec

from integrity import signing, suites

# --- SM3 -----------------------------------------------------------------------------------------------------------


def test_sm3_abc() -> None:
    assert suites.digest("sm3", b"abc") == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


def test_sm3_64_bytes() -> None:
    assert suites.digest("sm3", b"abcd" * 16) == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"


def test_sm3_running_hash_equals_one_shot() -> None:
    h = suites.new_hash("sm3")
    for part in (b"ab", b"c"):
        h.update(part)
    assert h.hexdigest() == suites.digest("sm3", b"abc")


# --- SM4 -----------------------------------------------------------------------------------------------------------
SM4_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def test_sm4_block_example() -> None:
    enc = Cipher(algorithms.SM4(SM4_KEY), modes.ECB()).encryptor()
    assert (enc.update(SM4_KEY) + enc.finalize()).hex() == "681edf34d206965e86b3e94f536e4246"


def test_sm4_million_iterations() -> None:
    """GB/T 32907 appendix example 2: the block encrypted 1,000,000 times with the same key."""
    enc = Cipher(algorithms.SM4(SM4_KEY), modes.ECB()).encryptor()
    block = SM4_KEY
    for _ in range(1_000_000):
        block = enc.update(block)
    assert block.hex() == "595298c7c6fd271f0402f804c33d3f66"


def test_sm4_gcm_round_trip_and_tamper() -> None:
    key = suites.new_key("sm4-gcm")
    nonce = bytes(range(12))
    plain = b"\x00\x00\x00\x01" + b"frame" * 100
    sealed = suites.seal("sm4-gcm", key, nonce, plain, b"seg-1")
    assert plain not in sealed and len(sealed) == len(plain) + suites.TAG_BYTES
    assert suites.open_sealed("sm4-gcm", key, nonce, sealed, b"seg-1") == plain
    flipped = bytearray(sealed)
    flipped[3] ^= 0x01
    for args in ((bytes(flipped), b"seg-1"), (sealed, b"seg-2"), (sealed[:-1], b"seg-1")):
        with pytest.raises(suites.CiphertextInvalid) as err:
            suites.open_sealed("sm4-gcm", key, nonce, args[0], args[1])
        assert err.value.code == "ciphertext_invalid"
    with pytest.raises(suites.CiphertextInvalid):
        suites.open_sealed("sm4-gcm", suites.new_key("sm4-gcm"), nonce, sealed, b"seg-1")


# --- SM2 (GM/T 0003.5 example on the recommended curve) ---------------------------------------------------------
SM2_D = 0x3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8
SM2_X = 0x09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020
SM2_Y = 0xCCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13
SM2_R = 0xF5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3
SM2_S = 0xB1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA
SM2_MSG = b"message digest"


def _vector_pem() -> bytes:
    public = gm_ec.EllipticCurvePublicNumbers(SM2_X, SM2_Y, gm_ec.SM2()).public_key()
    pem: bytes = public.public_bytes(gm_serialization.Encoding.PEM, gm_serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem


def test_sm2_private_key_derives_the_public_point() -> None:
    numbers = gm_ec.derive_private_key(SM2_D, gm_ec.SM2()).public_key().public_numbers()
    assert (numbers.x, numbers.y) == (SM2_X, SM2_Y)


def test_sm2_signature_vector_verifies() -> None:
    pem = _vector_pem()
    sig = encode_dss_signature(SM2_R, SM2_S)
    assert signing.verify("sm2-sm3", pem, SM2_MSG, sig) is True
    assert signing.public_key_info("sm2-sm3", pem).suite == "sm2-sm3"


@pytest.mark.parametrize("what", ["message", "r", "s"])
def test_sm2_one_bit_change_fails(what: str) -> None:
    pem = _vector_pem()
    msg, r, s = SM2_MSG, SM2_R, SM2_S
    if what == "message":
        msg = bytes([msg[0] ^ 0x01]) + msg[1:]
    elif what == "r":
        r ^= 1
    else:
        s ^= 1
    assert signing.verify("sm2-sm3", pem, msg, encode_dss_signature(r, s)) is False


def test_sm2_malformed_signature_is_false() -> None:
    """Bytes that are no DER (r, s) are a plain False, not an error from the C library."""
    for sig in (b"\x30\x02\x02\x00", b"", bytes(64)):
        assert signing.verify("sm2-sm3", _vector_pem(), SM2_MSG, sig) is False
