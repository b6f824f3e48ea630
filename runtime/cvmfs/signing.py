"""The two RSA signature schemes of CernVM-FS (docs/cvmfs-format.md, "Signatures").

Both sign the ASCII hex digest of a text body, not the body itself:

* the manifest uses RSASSA-PKCS1-v1_5 with a SHA-1 DigestInfo (OpenSSL ``EVP_Sign``);
* the whitelist uses raw PKCS#1 v1.5 type-1 padding with *no* DigestInfo
  (``RSA_private_encrypt``), which ``cryptography`` has no API for, so it is done with the
  private numbers here.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class SignatureError(ValueError):
    """A signature or signed text block does not verify."""


SEPARATOR = b"\n--\n"


def split_signed(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """Split ``BODY -- LF HEX LF SIG`` into (body incl. final LF, hex, signature).

    The verifier locates the block at the *first* ``LF -- LF`` (cvmfs/crypto/signature.cc).
    """
    pos = blob.find(SEPARATOR)
    if pos < 0:
        raise SignatureError("no signature block ('--' line) found")
    body = blob[: pos + 1]
    rest = blob[pos + len(SEPARATOR):]
    nl = rest.find(b"\n")
    if nl < 0:
        raise SignatureError("signature block has no hash line")
    return body, rest[:nl], rest[nl + 1:]


def body_hex(body: bytes) -> bytes:
    """ASCII SHA-1 hex of a signed body: what both signature schemes sign."""
    return hashlib.sha1(body).hexdigest().encode("ascii")


def assemble(body: bytes, signature: bytes) -> bytes:
    """FILE = BODY ``--`` LF HEX LF SIG, with no trailing LF after SIG."""
    return body + b"--\n" + body_hex(body) + b"\n" + signature


def sign_manifest_hex(key: rsa.RSAPrivateKey, hex_ascii: bytes) -> bytes:
    """PKCS#1 v1.5 with a SHA-1 DigestInfo over the ASCII hex ("Signatures")."""
    return key.sign(hex_ascii, padding.PKCS1v15(), hashes.SHA1())


def verify_manifest_hex(public_key: rsa.RSAPublicKey, hex_ascii: bytes, signature: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is a manifest signature of ``hex_ascii``."""
    try:
        public_key.verify(signature, hex_ascii, padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature as exc:
        raise SignatureError("manifest signature does not verify with the certificate") from exc


def _k(n: int) -> int:
    return (n.bit_length() + 7) // 8


def sign_raw_pkcs1(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """``RSA_private_encrypt(RSA_PKCS1_PADDING)``: EM = 00 01 FF.. 00 || message, s = EM^d mod n."""
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    k = _k(n)
    if len(message) > k - 11:
        raise ValueError("message too long for raw PKCS#1 signing")
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(message)) + b"\x00" + message
    return pow(int.from_bytes(em, "big"), numbers.d, n).to_bytes(k, "big")


def recover_raw_pkcs1(public_key: rsa.RSAPublicKey, signature: bytes) -> bytes:
    """Inverse of :func:`sign_raw_pkcs1` (``RSA_public_decrypt``); raises on bad padding."""
    numbers = public_key.public_numbers()
    k = _k(numbers.n)
    if len(signature) != k:
        raise SignatureError(f"signature is {len(signature)} bytes, expected {k}")
    em = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(k, "big")
    if em[:2] != b"\x00\x01":
        raise SignatureError("bad PKCS#1 type-1 padding")
    sep = em.find(b"\x00", 2)
    if sep < 10 or em[2:sep] != b"\xff" * (sep - 2):
        raise SignatureError("bad PKCS#1 type-1 padding")
    return em[sep + 1:]
