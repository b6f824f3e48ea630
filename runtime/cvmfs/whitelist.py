"""The signed whitelist ``.cvmfswhitelist`` (docs/cvmfs-format.md, "Whitelist").

Lines: creation time ``YYYYMMDDHHMMSS`` (UTC), ``E`` + expiry, ``N<fqrn>``, one certificate
fingerprint per line; then ``--`` LF sha1-hex LF signature. The signature is raw PKCS#1 v1.5
type-1 padding of the ASCII hex with the master key (no DigestInfo). Clients compare the expiry
at hour granularity and refuse new revisions once it has passed, so it must be re-signed in time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from . import signing

TIME_FORMAT = "%Y%m%d%H%M%S"
DEFAULT_VALIDITY = dt.timedelta(days=30)


class WhitelistError(ValueError):
    """A whitelist that does not parse, verify, or has expired."""


@dataclass(frozen=True)
class Whitelist:
    created: dt.datetime
    expires: dt.datetime
    fqrn: str
    fingerprints: tuple[str, ...]

    def expired_at(self, now: dt.datetime) -> bool:
        """Client rule: valid while (Y, M, D, H) of now is strictly before that of the expiry."""
        trunc = self.expires.replace(minute=0, second=0, microsecond=0)
        return now >= trunc

    def seconds_left(self, now: dt.datetime) -> float:
        """Seconds until clients refuse it (expiry truncated to the hour)."""
        trunc = self.expires.replace(minute=0, second=0, microsecond=0)
        return (trunc - now).total_seconds()


def _utc(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.timezone.utc) if now.tzinfo else now.replace(tzinfo=dt.timezone.utc)


def body(fqrn: str, fingerprints: list[str], now: dt.datetime,
         validity: dt.timedelta = DEFAULT_VALIDITY) -> bytes:
    now = _utc(now)
    lines = [now.strftime(TIME_FORMAT), "E" + (now + validity).strftime(TIME_FORMAT), f"N{fqrn}"]
    lines += fingerprints
    return ("\n".join(lines) + "\n").encode("ascii")


def make(fqrn: str, fingerprints: list[str], master_key: rsa.RSAPrivateKey, now: dt.datetime,
         validity: dt.timedelta = DEFAULT_VALIDITY) -> bytes:
    """A complete signed whitelist listing ``fingerprints``."""
    text = body(fqrn, fingerprints, now, validity)
    return signing.assemble(text, signing.sign_raw_pkcs1(master_key, signing.body_hex(text)))


def parse(blob: bytes) -> Whitelist:
    try:
        text, _hex, _sig = signing.split_signed(blob)
    except signing.SignatureError as exc:
        raise WhitelistError(str(exc)) from exc
    lines = text.decode("utf-8", "replace").split("\n")[:-1]
    if len(lines) < 3 or len(lines[0]) != 14 or len(lines[1]) != 15 or lines[1][0] != "E":
        raise WhitelistError("malformed whitelist header")
    if not lines[2].startswith("N"):
        raise WhitelistError("whitelist has no N line")
    try:
        created = dt.datetime.strptime(lines[0], TIME_FORMAT).replace(tzinfo=dt.timezone.utc)
        expires = dt.datetime.strptime(lines[1][1:], TIME_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError as exc:
        raise WhitelistError(f"malformed whitelist time: {exc}") from exc
    fps = tuple(line.split(" ")[0].split("\t")[0].split("#")[0] for line in lines[3:])
    return Whitelist(created, expires, lines[2][1:], tuple(f for f in fps if f))


def verify(blob: bytes, fqrn: str, master_public_key: rsa.RSAPublicKey,
           now: dt.datetime | None = None) -> Whitelist:
    """Parse, check name, signature and (if ``now`` is given) expiry."""
    wl = parse(blob)
    if wl.fqrn != fqrn:
        raise WhitelistError(f"whitelist is for {wl.fqrn!r}, not {fqrn!r}")
    text, hex_ascii, sig = signing.split_signed(blob)
    if hex_ascii != signing.body_hex(text):
        raise WhitelistError("whitelist hash line does not match its body")
    try:
        recovered = signing.recover_raw_pkcs1(master_public_key, sig)
    except signing.SignatureError as exc:
        raise WhitelistError(f"invalid whitelist signature: {exc}") from exc
    if recovered != hex_ascii:
        raise WhitelistError("invalid whitelist signature")
    if now is not None and wl.expired_at(_utc(now)):
        raise WhitelistError(f"whitelist expired at {wl.expires:%Y-%m-%d %H:00} UTC")
    return wl


def lists(wl: Whitelist, fingerprint: str) -> bool:
    """Is the certificate fingerprint listed (compared like cvmfs: colons dropped, lowercase)?"""
    want = fingerprint.replace(":", "").lower()
    return any(f.replace(":", "").lower() == want for f in wl.fingerprints)
