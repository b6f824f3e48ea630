"""Verify a served repository the way a client does before trusting it (post-deploy check).

Fetches ``.cvmfswhitelist`` and checks it against the master public key (name, expiry,
signature), fetches ``.cvmfspublished``, the certificate object it names (hash-checked and
inflated), checks the certificate is listed in the whitelist and verifies the manifest signature.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zlib

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .cvmfs import keys, manifest, whitelist
from .cvmfs.objects import CERTIFICATE, object_relpath


class VerificationError(Exception):
    """The served repository is not one a client would accept."""


def _get(client: httpx.Client, url: str) -> bytes:
    try:
        resp = client.get(url)
    except httpx.HTTPError as exc:
        raise VerificationError(f"GET {url} failed: {exc}") from exc
    if resp.status_code != 200:
        raise VerificationError(f"GET {url} answered {resp.status_code}")
    if "content-encoding" in resp.headers:
        raise VerificationError(f"GET {url} has a Content-Encoding; clients hash raw bodies")
    return resp.content


def verify_remote(url: str, fqrn: str, public_key_pem: bytes, *,
                  now: dt.datetime | None = None, timeout: float = 10.0,
                  key_name: str | None = None) -> manifest.Manifest:
    """Verify whitelist, certificate and manifest at ``url``; return the manifest.

    ``key_name`` names the key in messages (the CLI passes the file name): the commonest
    failure after a deployment is checking against the wrong repository's key, and the user
    must read that, not how RSA padding failed."""
    now = now or dt.datetime.now(dt.timezone.utc)
    base = url.rstrip("/")
    try:
        master = serialization.load_pem_public_key(public_key_pem)
    except ValueError as exc:
        raise VerificationError(f"{key_name or 'the key'} is not a PEM public key") from exc
    if not isinstance(master, rsa.RSAPublicKey):
        raise VerificationError(f"{key_name or 'the key'} is not an RSA public key")
    with httpx.Client(timeout=timeout) as client:
        blob = _get(client, f"{base}/.cvmfswhitelist")
        try:
            wl = whitelist.verify(blob, fqrn, master, now)
        except whitelist.WhitelistError as exc:
            if str(exc).startswith("invalid whitelist signature"):
                where = f" ({key_name})" if key_name else ""
                raise VerificationError(
                    f"whitelist: the signature does not match this public key{where}; the "
                    f"repository was signed with another master key") from exc
            raise VerificationError(f"whitelist: {exc}") from exc
        blob = _get(client, f"{base}/.cvmfspublished")
        try:
            m = manifest.parse(blob)
        except manifest.ManifestError as exc:
            raise VerificationError(f"manifest: {exc}") from exc
        raw = _get(client, f"{base}/{object_relpath(m.certificate_hash, CERTIFICATE)}")
        if hashlib.sha1(raw).hexdigest() != m.certificate_hash:
            raise VerificationError("certificate object does not match its hash")
        try:
            cert = x509.load_pem_x509_certificate(zlib.decompress(raw))
        except (zlib.error, ValueError) as exc:
            raise VerificationError(f"certificate object is not a zlib PEM certificate: {exc}") from exc
        if not whitelist.lists(wl, keys.fingerprint(cert)):
            raise VerificationError("certificate is not listed in the whitelist")
        try:
            return manifest.verify(blob, cert, fqrn)
        except manifest.ManifestError as exc:
            raise VerificationError(f"manifest: {exc}") from exc
