"""An independent CernVM-FS client-side reader, used by the tests to judge repositories.

Written from the format notes (``docs/cvmfs-format.md``) alone and deliberately sharing no code with
``runtime/``: a reader that reused the writer's helpers would repeat the writer's mistakes
instead of catching them. It plays the cvmfs client over real HTTP (httpx):

- ``.cvmfswhitelist``: line formats, expiry at hour granularity against a caller-given ``now``,
  hash line, and the raw PKCS#1 v1.5 type-1 signature (no DigestInfo) made with the master key.
- ``.cvmfspublished``: required keys, name and root checks, hash line, the certificate object,
  the PKCS#1 v1.5 + SHA-1 signature, and the certificate fingerprint listed in the whitelist.
- every object: the hash of the served bytes equals its name; catalogs (always zlib) are
  inflated and opened read-only with sqlite3; file content is inflated or not according to the
  entry's flag bits 11-13.
- ``walk()`` derives every path and checks each row's path hash against it; ``check()`` adds
  what ``cvmfs_swissknife check`` enforces (docs/cvmfs-format.md, "What pull and check enforce").

Paths use the cvmfs convention: ``"/a/b"`` with the repository root as ``""``. Every failure
raises a :class:`ReaderError` subclass whose message names the object and the rule broken.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import sqlite3
import ssl
import stat
import struct
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# --------------------------------------------------------------------------------------------
# Errors: one class per kind of failure, so tests can assert *why* something was rejected.


class ReaderError(Exception):
    """Base class: the repository (or the way it is served) is not acceptable to a client."""


class FetchError(ReaderError):
    """An HTTP request failed, returned non-2xx, or was served with a Content-Encoding."""


class BadPublicKey(ReaderError):
    """A trusted key is not a PEM SubjectPublicKeyInfo RSA key (what PEM_read_PUBKEY reads)."""


class BadWhitelist(ReaderError):
    """``.cvmfswhitelist`` is malformed, names another repository, or lacks the certificate."""


class ExpiredWhitelist(BadWhitelist):
    """``now`` is not strictly before the whitelist's expiry hour."""


class BadManifest(ReaderError):
    """``.cvmfspublished`` is malformed, incomplete, or names another repository."""


class BadSignature(ReaderError):
    """A hash line or an RSA signature does not verify."""


class BadWhitelistSignature(BadWhitelist, BadSignature):
    """The whitelist's hash line or master-key signature does not verify."""


class BadManifestSignature(BadManifest, BadSignature):
    """The manifest's hash line or certificate signature does not verify."""


class UntrustedCertificate(BadWhitelist):
    """The manifest certificate's fingerprint is not listed in the whitelist."""


class HashMismatch(ReaderError):
    """The bytes served under ``data/..`` do not hash to the object's name."""


class BadObject(ReaderError):
    """An object does not inflate cleanly, or its inflated size disagrees with the catalog."""


class BadCatalog(ReaderError):
    """A catalog cannot be read the way a client reads it (schema, counters, path hashes...)."""


class CheckFailed(ReaderError):
    """``check()`` found violations of what ``cvmfs_swissknife check`` enforces."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} check problem(s):\n  {shown}{more}")


# --------------------------------------------------------------------------------------------
# Constants from docs/cvmfs-format.md.

EMPTY_MD5 = hashlib.md5(b"").hexdigest()  # manifest R (section 3.2)
SCHEMA = "2.5"  # section 6.2
SCHEMA_REVISION = "7"
COUNTER_KINDS = (
    "regular", "symlink", "special", "dir", "nested", "chunked", "chunks",
    "file_size", "chunked_size", "xattr", "external", "external_file_size",
)
STATISTICS_NAMES = tuple(f"{side}_{kind}" for side in ("self", "subtree") for kind in COUNTER_KINDS)
REQUIRED_TABLES = ("properties", "catalog", "chunks", "nested_catalogs", "bind_mountpoints",
                   "statistics")
MARKER_NAME = ".cvmfscatalog"

# Catalog flag bits (section 6.7).
F_DIR = 1
F_NESTED_MOUNTPOINT = 2
F_FILE = 4
F_LINK = 8
F_SPECIAL = 16
F_NESTED_ROOT = 32
F_CHUNKED = 64
F_EXTERNAL = 128
F_BIND_MOUNTPOINT = 0x4000
F_HIDDEN = 0x8000
F_DIRECT_IO = 0x10000
F_ALGO_SHIFT, F_COMPRESSION_SHIFT = 8, 11
KNOWN_FLAG_BITS = (F_DIR | F_NESTED_MOUNTPOINT | F_FILE | F_LINK | F_SPECIAL | F_NESTED_ROOT
                   | F_CHUNKED | F_EXTERNAL | (7 << F_ALGO_SHIFT) | (7 << F_COMPRESSION_SHIFT)
                   | F_BIND_MOUNTPOINT | F_HIDDEN | F_DIRECT_IO)
COMPRESSION_NAMES = {0: "zlib", 1: "none"}

_STREAM_BLOCK = 1 << 20  # bytes read/inflated at a time when streaming file content
_SPOOL_IN_MEMORY = 8 << 20  # objects larger than this are spooled to disk while hashing


# --------------------------------------------------------------------------------------------
# Hashes (section 2.1) and object paths (section 1.2).


@dataclass(frozen=True)
class HashAlgorithm:
    """A content hash algorithm: its flag code, hex tag and digest constructor."""

    name: str
    code: int
    tag: str
    digest_size: int
    new: Callable[[], Any]

    def hexdigest(self, hasher: Any) -> str:
        """Hex spelling with the tag; SHAKE128 needs the 20-byte output length explicitly."""
        raw = hasher.digest(20) if self.name == "shake128" else hasher.digest()
        return raw.hex() + self.tag


ALGORITHMS: dict[int, HashAlgorithm] = {
    0: HashAlgorithm("sha1", 0, "", 20, hashlib.sha1),
    1: HashAlgorithm("rmd160", 1, "-rmd160", 20, lambda: hashlib.new("ripemd160")),
    2: HashAlgorithm("shake128", 2, "-shake128", 20, hashlib.shake_128),
}
_HASH_HEX_RE = re.compile(r"^([0-9a-f]{40})(-rmd160|-shake128)?$")


def parse_hash_hex(text: str, what: str, error: type[ReaderError] = BadManifest
                   ) -> tuple[HashAlgorithm, str]:
    """Split a content hash spelling into (algorithm, 40-hex digest); reject anything else.

    The client picks the algorithm from the length alone and does not validate characters, so
    an uppercase or truncated hash from a writer would silently name a different object.
    """
    m = _HASH_HEX_RE.match(text)
    if not m:
        raise error(f"{what}: {text!r} is not a lowercase hex content hash (40 hex + optional "
                    f"-rmd160/-shake128 tag)")
    tag = m.group(2) or ""
    algo = next(a for a in ALGORITHMS.values() if a.tag == tag)
    return algo, m.group(1)


def hash_hex(data: bytes, algo: HashAlgorithm) -> str:
    """Hash ``data`` with ``algo`` and spell it as cvmfs does (hex + tag)."""
    h = algo.new()
    h.update(data)
    return algo.hexdigest(h)


def object_path(hash_text: str, suffix: str = "") -> str:
    """``data/XX/REST[tag][suffix]`` for a hash spelling (which already carries the tag)."""
    return f"data/{hash_text[:2]}/{hash_text[2:]}{suffix}"


def path_hash(path: str) -> tuple[int, int]:
    """MD5 of a repository path split into two little-endian signed int64 (section 6.5)."""
    return struct.unpack("<qq", hashlib.md5(path.encode("utf-8")).digest())


def parent_path(path: str) -> str:
    """The text before the last ``/``: parent of ``/a`` is ``""``, of ``/a/b`` is ``/a``."""
    return path[: path.rfind("/")]


def normalize_path(path: str) -> str:
    """Accept ``"a/b"``, ``"/a/b"``, ``"/a/b/"`` or ``"/"``; return the cvmfs form ``"/a/b"``."""
    stripped = path.strip("/")
    return "/" + stripped if stripped else ""


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Uppercase colon-separated SHA-1 of the certificate DER, as whitelists list it."""
    digest = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


# --------------------------------------------------------------------------------------------
# RSA helpers.


def load_public_keys(pems: bytes | list[bytes]) -> list[rsa.RSAPublicKey]:
    """Load trusted master public keys the way the client does (PEM SubjectPublicKeyInfo only)."""
    items = [pems] if isinstance(pems, bytes | bytearray) else list(pems)
    if not items:
        raise BadPublicKey("no trusted public key given")
    keys = []
    for i, pem in enumerate(items):
        if b"-----BEGIN PUBLIC KEY-----" not in pem:
            raise BadPublicKey(f"key #{i} is not a PEM 'BEGIN PUBLIC KEY' (SubjectPublicKeyInfo); "
                               f"cvmfs reads keys with PEM_read_PUBKEY and refuses other forms")
        key = serialization.load_pem_public_key(bytes(pem))
        if not isinstance(key, rsa.RSAPublicKey):
            raise BadPublicKey(f"key #{i} is not an RSA key")
        keys.append(key)
    return keys


def modulus_bytes(key: rsa.RSAPublicKey) -> int:
    """Length in bytes of the RSA modulus, i.e. of every signature made with the key."""
    return (key.key_size + 7) // 8


def rsa_recover_type1(key: rsa.RSAPublicKey, signature: bytes) -> bytes:
    """RSA "public decrypt" with PKCS#1 v1.5 type-1 padding checked by hand; returns the payload.

    This is what ``RSA_public_decrypt(..., RSA_PKCS1_PADDING)`` does in the client's whitelist
    check. ``cryptography`` has no API for recovering a raw payload, hence pow().
    """
    k = modulus_bytes(key)
    if len(signature) != k:
        raise BadSignature(f"signature is {len(signature)} bytes, the {key.key_size}-bit key "
                           f"needs exactly {k}")
    numbers = key.public_numbers()
    s = int.from_bytes(signature, "big")
    if s >= numbers.n:
        raise BadSignature("signature value is not below the modulus")
    em = pow(s, numbers.e, numbers.n).to_bytes(k, "big")
    if em[:2] != b"\x00\x01":
        raise BadSignature(f"recovered block starts {em[:2].hex()}, not 0001 (PKCS#1 type 1)")
    sep = em.find(b"\x00", 2)
    if sep < 0 or em[2:sep] != b"\xff" * (sep - 2):
        raise BadSignature("PKCS#1 type-1 padding is not FF..FF 00")
    if sep - 2 < 8:
        raise BadSignature(f"PKCS#1 type-1 padding has {sep - 2} FF bytes, at least 8 required")
    return em[sep + 1:]


# --------------------------------------------------------------------------------------------
# Signed text files: BODY "--" LF HEX LF SIG (sections 3.1 and 4.2).


def split_signed(raw: bytes, error: type[ReaderError], what: str) -> tuple[bytes, str, bytes]:
    """Split at the first LF ``--`` LF the way the verifier does: (body incl. LF, hex, sig)."""
    if not raw:
        raise error(f"{what} is empty")
    if b"\r" in raw.split(b"\n--\n", 1)[0]:
        raise error(f"{what} contains CR; only LF line ends are allowed")
    cut = raw.find(b"\n--\n")
    if cut < 0:
        raise error(f"{what} has no LF '--' LF separator line")
    body, rest = raw[:cut + 1], raw[cut + 4:]
    nl = rest.find(b"\n")
    if nl < 0:
        raise error(f"{what} has no LF after the hash line")
    try:
        hex_line = rest[:nl].decode("ascii")
    except UnicodeDecodeError:
        raise error(f"{what} hash line is not ASCII") from None
    return body, hex_line, rest[nl + 1:]


def _check_hash_line(body: bytes, hex_line: str, error: type[ReaderError], what: str) -> None:
    """The hash line must be hex(hash(BODY)) with the algorithm its own spelling implies."""
    algo, _ = parse_hash_hex(hex_line, f"{what} hash line", error)
    actual = hash_hex(body, algo)
    if actual != hex_line:
        raise error(f"{what} hash line {hex_line} does not match {algo.name}(body) = {actual}; "
                    f"the signed text was altered")


# --------------------------------------------------------------------------------------------
# Whitelist (section 4).


@dataclass(frozen=True)
class Whitelist:
    """A verified whitelist. ``fingerprints`` are normalised: lowercase hex, no colons."""

    created: str
    expires: datetime
    fqrn: str
    fingerprints: frozenset[str]
    hash_line: str
    raw: bytes


def _parse_stamp(text: str, what: str) -> datetime:
    """Expiry at hour granularity: only YYYYMMDDHH is used; minutes and seconds are ignored."""
    if not text.isdigit():
        raise BadWhitelist(f"whitelist {what} {text!r} is not YYYYMMDDHHMMSS digits")
    try:
        return datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
                        tzinfo=UTC)
    except ValueError as exc:
        raise BadWhitelist(f"whitelist {what} {text!r} is not a valid date: {exc}") from None


def _parse_fingerprint(line: str) -> str | None:
    """Fingerprint parser: stop at space, tab or '#', drop colons, lowercase; None if invalid."""
    token = re.split(r"[ \t#]", line, maxsplit=1)[0].replace(":", "").lower()
    return token if _HASH_HEX_RE.match(token) else None


def parse_whitelist(raw: bytes, fqrn: str, keys: list[rsa.RSAPublicKey], now: datetime
                    ) -> Whitelist:
    """Verify a whitelist as the client does (section 4.3), in the client's order of checks."""
    body, hex_line, sig = split_signed(raw, BadWhitelist, "whitelist")
    try:
        lines = body[:-1].decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise BadWhitelist("whitelist body is not UTF-8") from None
    if len(lines) < 3:
        raise BadWhitelist(f"whitelist has {len(lines)} text line(s); needs creation time, "
                           f"E<expiry> and N<fqrn>")
    created, expiry_line, name_line = lines[0], lines[1], lines[2]
    if len(created) != 14:
        raise BadWhitelist(f"whitelist line 1 {created!r} is {len(created)} chars, must be 14")
    _parse_stamp(created, "creation time")
    if len(expiry_line) != 15 or not expiry_line.startswith("E"):
        raise BadWhitelist(f"whitelist line 2 {expiry_line!r} is not 'E' + 14 chars")
    expires = _parse_stamp(expiry_line[1:], "expiry")
    now_utc = _as_utc(now)
    if not now_utc < expires:
        raise ExpiredWhitelist(
            f"whitelist expired: it is valid until {expires:%Y-%m-%d %H}:00 UTC (hour "
            f"granularity of {expiry_line}), now is {now_utc:%Y-%m-%d %H:%M:%S} UTC")
    if name_line != "N" + fqrn:
        raise BadWhitelist(f"whitelist name mismatch: line 3 is {name_line!r}, "
                           f"expected {'N' + fqrn!r}")
    fingerprints = set()
    for line in lines[3:]:
        if line in ("Vpkcs7", "Wcachain"):
            raise BadWhitelist(f"whitelist contains {line!r}: PKCS#7 / CA-chain whitelists are "
                               f"not supported (docs/cvmfs-format.md, Whitelist: never written)")
        fp = _parse_fingerprint(line)
        if fp is not None:
            fingerprints.add(fp)
    _check_hash_line(body, hex_line, BadWhitelistSignature, "whitelist")
    _verify_whitelist_signature(keys, sig, hex_line)
    return Whitelist(created, expires, fqrn, frozenset(fingerprints), hex_line, raw)


def _verify_whitelist_signature(keys: list[rsa.RSAPublicKey], sig: bytes, hex_line: str) -> None:
    """Accept if any trusted key recovers exactly the ASCII hash line (no DigestInfo)."""
    reasons = []
    for i, key in enumerate(keys):
        try:
            payload = rsa_recover_type1(key, sig)
        except BadSignature as exc:
            reasons.append(f"key #{i}: {exc}")
            continue
        if payload == hex_line.encode("ascii"):
            return
        hint = (" (it looks like an ASN.1 DigestInfo: the whitelist must be signed raw, "
                "RSA_private_encrypt over the ASCII hex, not with a digest signature)"
                if payload[:1] == b"\x30" else "")
        reasons.append(f"key #{i}: recovered payload {payload[:48].hex()}... is not the ASCII "
                       f"hash line {hex_line}{hint}")
    raise BadWhitelistSignature("whitelist signature does not verify with any trusted key: "
                                + "; ".join(reasons))


# --------------------------------------------------------------------------------------------
# Manifest (section 3).


@dataclass(frozen=True)
class Manifest:
    """A parsed ``.cvmfspublished``; the signature is verified separately (it needs the cert)."""

    fields: dict[str, str]
    body: bytes
    hash_line: str
    signature: bytes
    raw: bytes

    @property
    def root_catalog_hash(self) -> str:
        return self.fields["C"]

    @property
    def certificate_hash(self) -> str:
        return self.fields["X"]

    @property
    def revision(self) -> int:
        return int(self.fields["S"])


_DECIMAL_KEYS = {"B": "root catalog size", "D": "TTL", "S": "revision", "T": "timestamp"}
_HASH_KEYS = {"C": "root catalog", "X": "certificate", "H": "history", "M": "meta-info",
              "Y": "reflog"}


def parse_manifest(raw: bytes, fqrn: str) -> Manifest:
    """Parse and sanity-check a manifest as in section 3.3/3.4 steps 2-4 (not the signature)."""
    body, hex_line, sig = split_signed(raw, BadManifest, "manifest")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadManifest("manifest body is not UTF-8") from None
    fields: dict[str, str] = {}
    for line in text.split("\n"):
        if line:  # the key-value parser skips empty lines; a repeated key: the last one wins
            fields[line[0]] = line[1:]
    missing = [k for k in "CRDS" if k not in fields]
    if missing:
        raise BadManifest(f"incomplete manifest: missing required key(s) {', '.join(missing)}")
    if fields.get("N") != fqrn:
        raise BadManifest(f"manifest name mismatch: N is {fields.get('N')!r}, expected {fqrn!r}")
    if fields["R"] != EMPTY_MD5:
        raise BadManifest(f"manifest root mismatch: R is {fields['R']!r}, must be MD5('') "
                          f"{EMPTY_MD5}")
    if "X" not in fields:
        raise BadManifest("manifest has no X (certificate hash); its signature cannot be checked")
    for key, what in _DECIMAL_KEYS.items():
        if key in fields and not re.fullmatch(r"[0-9]+", fields[key]):
            raise BadManifest(f"manifest {key} ({what}) {fields[key]!r} is not a decimal integer")
    if not 1 <= int(fields["S"]) < 2**64 - 1:
        raise BadManifest(f"manifest S {fields['S']} out of range (1 .. 2^64-2)")
    for key, what in _HASH_KEYS.items():
        if key in fields:
            parse_hash_hex(fields[key], f"manifest {key} ({what})")
    for key in "GA":
        if key in fields and fields[key] not in ("yes", "no"):
            raise BadManifest(f"manifest {key} is {fields[key]!r}, must be 'yes' or 'no'")
    if fields.get("A") == "yes":
        raise BadManifest("manifest A=yes (alternative .cvmfsalt- paths) is not supported")
    _check_hash_line(body, hex_line, BadManifestSignature, "manifest")
    return Manifest(fields, body, hex_line, sig, raw)


def verify_manifest_signature(manifest: Manifest, cert: x509.Certificate) -> None:
    """PKCS#1 v1.5 + SHA-1 over the ASCII hash line, exactly modulus-size bytes, nothing after."""
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadManifestSignature("manifest certificate does not hold an RSA key")
    k = modulus_bytes(key)
    if len(manifest.signature) != k:
        raise BadManifestSignature(
            f"manifest signature is {len(manifest.signature)} bytes, expected exactly {k} (the "
            f"modulus size): nothing (not even an LF) may follow the signature")
    try:
        key.verify(manifest.signature, manifest.hash_line.encode("ascii"), padding.PKCS1v15(),
                   hashes.SHA1())
    except InvalidSignature:
        raise BadManifestSignature(
            "manifest signature does not verify with the certificate key (expected RSA PKCS#1 "
            "v1.5 with SHA-1 DigestInfo over the ASCII hash line)") from None


def require_listed(cert: x509.Certificate, whitelist: Whitelist) -> None:
    """The certificate's DER SHA-1 fingerprint must be one of the whitelist's lines."""
    fp = certificate_fingerprint(cert)
    if fp.replace(":", "").lower() not in whitelist.fingerprints:
        raise UntrustedCertificate(f"certificate fingerprint {fp} is not listed in the whitelist "
                                   f"(listed: {sorted(whitelist.fingerprints)})")


# --------------------------------------------------------------------------------------------
# Catalogs (section 6).


@dataclass(frozen=True)
class Row:
    """One ``catalog`` table row, as stored."""

    rowid: int
    md5path: tuple[int, int]
    parent: tuple[int, int]
    hardlinks: int
    hash: bytes | None
    size: int
    mode: int
    mtime: int
    mtimens: int | None
    flags: int
    name: str
    symlink: str
    uid: int
    gid: int
    xattr: bytes | None

    @property
    def linkcount(self) -> int:
        return self.hardlinks & 0xFFFFFFFF

    @property
    def hardlink_group(self) -> int:
        return (self.hardlinks >> 32) & 0xFFFFFFFF


@dataclass(frozen=True)
class ChunkRow:
    """One ``chunks`` table row."""

    md5path: tuple[int, int]
    offset: int
    size: int
    hash: bytes | None


@dataclass(frozen=True)
class NestedRef:
    """One ``nested_catalogs`` (or ``bind_mountpoints``) row."""

    path: str
    hash: str
    size: int


@dataclass
class Catalog:
    """A catalog loaded fully into memory (then the temporary SQLite file is deleted)."""

    hash: str
    uncompressed_size: int
    properties: dict[str, str]
    rows: dict[tuple[int, int], Row]
    children: dict[tuple[int, int], list[Row]]
    chunks: dict[tuple[int, int], list[ChunkRow]]
    chunk_row_count: int
    nested: list[NestedRef]
    bind_mountpoints: list[NestedRef]
    statistics: dict[str, int]

    @property
    def root_prefix(self) -> str | None:
        return self.properties.get("root_prefix")

    @property
    def previous_revision(self) -> str | None:
        """The previous version's hash, or None when absent, empty or all zeros (no previous)."""
        prev = self.properties.get("previous_revision") or ""
        digest = prev.split("-", 1)[0]
        return prev if digest.strip("0") else None


def inflate_exact(data: bytes, what: str) -> bytes:
    """Inflate one complete zlib (RFC 1950) stream with nothing after it."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data)
    except zlib.error as exc:
        raise BadObject(f"{what}: not a valid zlib stream ({exc})") from None
    if not d.eof:
        raise BadObject(f"{what}: zlib stream is truncated")
    if d.unused_data:
        raise BadObject(f"{what}: {len(d.unused_data)} trailing bytes after the zlib stream")
    return out


def _check_sqlite_header(db: bytes, what: str) -> None:
    """Rollback-journal SQLite 3 only: header bytes 18/19 are 2 in WAL mode (section 6.1)."""
    if len(db) < 100 or not db.startswith(b"SQLite format 3\x00"):
        raise BadCatalog(f"{what}: not an SQLite 3 database")
    if db[18] != 1 or db[19] != 1:
        raise BadCatalog(f"{what}: file format versions {db[18]}/{db[19]} (2 = WAL); the client's "
                         f"VFS only reads rollback-journal databases")


def load_catalog_file(db_path: Path, hash_text: str, what: str) -> Catalog:
    """Open an inflated catalog read-only and load everything a client would query."""
    conn = sqlite3.connect(db_path.as_uri() + "?mode=ro", uri=True)
    try:
        return _load_catalog(conn, hash_text, db_path.stat().st_size, what)
    except sqlite3.Error as exc:
        raise BadCatalog(f"{what}: SQLite error {exc}") from None
    finally:
        conn.close()


def _load_catalog(conn: sqlite3.Connection, hash_text: str, size: int, what: str) -> Catalog:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise BadCatalog(f"{what}: missing table(s) {', '.join(missing)}")
    props = _load_properties(conn, what)
    rows, children = _load_rows(conn, what)
    chunks, chunk_count = _load_chunks(conn, what)
    return Catalog(
        hash=hash_text, uncompressed_size=size, properties=props, rows=rows, children=children,
        chunks=chunks, chunk_row_count=chunk_count,
        nested=_load_refs(conn, "nested_catalogs", what),
        bind_mountpoints=_load_refs(conn, "bind_mountpoints", what),
        statistics=_load_statistics(conn, what))


def _load_properties(conn: sqlite3.Connection, what: str) -> dict[str, str]:
    props = {str(k): ("" if v is None else str(v))
             for k, v in conn.execute("SELECT key, value FROM properties")}
    if props.get("schema") != SCHEMA:
        raise BadCatalog(f"{what}: property schema is {props.get('schema')!r}, expected {SCHEMA!r} "
                         f"(missing means 1.0 to the client)")
    if props.get("schema_revision") != SCHEMA_REVISION:
        raise BadCatalog(f"{what}: property schema_revision is {props.get('schema_revision')!r}, "
                         f"expected {SCHEMA_REVISION!r}")
    return props


_ROW_COLUMNS = ("rowid, md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode, "
                "mtime, mtimens, flags, name, symlink, uid, gid, xattr")


def _load_rows(conn: sqlite3.Connection, what: str
               ) -> tuple[dict[tuple[int, int], Row], dict[tuple[int, int], list[Row]]]:
    rows: dict[tuple[int, int], Row] = {}
    children: dict[tuple[int, int], list[Row]] = defaultdict(list)
    for r in conn.execute(f"SELECT {_ROW_COLUMNS} FROM catalog ORDER BY rowid"):
        row = _row_from_sql(r, what)
        if row.md5path in rows:
            raise BadCatalog(f"{what}: duplicate md5path {row.md5path} (rows "
                             f"{rows[row.md5path].rowid} and {row.rowid})")
        rows[row.md5path] = row
        children[row.parent].append(row)
    return rows, dict(children)


def _row_from_sql(r: tuple[Any, ...], what: str) -> Row:
    """Type-check one row: clients strlen() name/symlink and copy 20 hash bytes blindly."""
    (rowid, m1, m2, p1, p2, hardlinks, hsh, size, mode, mtime, mtimens, flags, name, symlink,
     uid, gid, xattr) = r
    where = f"{what}: row {rowid} ({name!r})"
    for col, val in (("md5path_1", m1), ("md5path_2", m2), ("parent_1", p1), ("parent_2", p2),
                     ("hardlinks", hardlinks), ("size", size), ("mode", mode),
                     ("mtime", mtime), ("flags", flags), ("uid", uid), ("gid", gid)):
        if not isinstance(val, int):
            raise BadCatalog(f"{where}: column {col} is {val!r}, not an INTEGER")
    if mtimens is not None and not isinstance(mtimens, int):
        raise BadCatalog(f"{where}: mtimens is {mtimens!r}, not an INTEGER or NULL")
    if not isinstance(name, str) or not isinstance(symlink, str):
        raise BadCatalog(f"{where}: name/symlink must be TEXT, never NULL (got {name!r}, "
                         f"{symlink!r})")
    if hsh is not None and not isinstance(hsh, bytes):
        raise BadCatalog(f"{where}: hash is {type(hsh).__name__}, must be a BLOB or NULL")
    if xattr is not None and not isinstance(xattr, bytes):
        raise BadCatalog(f"{where}: xattr is {type(xattr).__name__}, must be a BLOB or NULL")
    return Row(rowid, (m1, m2), (p1, p2), hardlinks, hsh, size, mode, mtime, mtimens, flags,
               name, symlink, uid, gid, xattr)


def _load_chunks(conn: sqlite3.Connection, what: str
                 ) -> tuple[dict[tuple[int, int], list[ChunkRow]], int]:
    chunks: dict[tuple[int, int], list[ChunkRow]] = defaultdict(list)
    count = 0
    for m1, m2, offset, size, hsh in conn.execute(
            "SELECT md5path_1, md5path_2, offset, size, hash FROM chunks ORDER BY offset"):
        if not all(isinstance(v, int) for v in (m1, m2, offset, size)):
            raise BadCatalog(f"{what}: chunk row {(m1, m2, offset, size)} has non-INTEGER columns")
        if hsh is not None and not isinstance(hsh, bytes):
            raise BadCatalog(f"{what}: chunk hash at offset {offset} is not a BLOB")
        chunks[(m1, m2)].append(ChunkRow((m1, m2), offset, size, hsh))
        count += 1
    return dict(chunks), count


def _load_refs(conn: sqlite3.Connection, table: str, what: str) -> list[NestedRef]:
    refs = []
    for path, sha1, size in conn.execute(f"SELECT path, sha1, size FROM {table}"):
        if not isinstance(path, str) or not isinstance(sha1, str) or not isinstance(size, int):
            raise BadCatalog(f"{what}: {table} row {(path, sha1, size)!r}: path and sha1 must be "
                             f"TEXT (never NULL) and size an INTEGER")
        refs.append(NestedRef(path, sha1, size))
    return refs


def _load_statistics(conn: sqlite3.Connection, what: str) -> dict[str, int]:
    stats = dict(conn.execute("SELECT counter, value FROM statistics"))
    missing = [n for n in STATISTICS_NAMES if n not in stats]
    if missing:
        raise BadCatalog(f"{what}: statistics table lacks {len(missing)} of the 24 counters: "
                         f"{', '.join(missing)} (the client refuses such a catalog)")
    bad = {k: v for k, v in stats.items() if not isinstance(v, int)}
    if bad:
        raise BadCatalog(f"{what}: non-integer statistics values {bad}")
    return stats


def parse_xattr_blob(blob: bytes) -> dict[bytes, bytes]:
    """Decode the xattr BLOB of section 6.10; ValueError explains what is wrong."""
    if len(blob) < 2 or blob[0] != 1:
        raise ValueError("xattr blob must start with version 1 and a count")
    count, pos, out, prev = blob[1], 2, {}, None
    if count == 0:
        raise ValueError("xattr blob with zero entries; no xattrs must be NULL")
    for _ in range(count):
        if pos + 2 > len(blob):
            raise ValueError("xattr blob truncated in an entry header")
        klen, vlen = blob[pos], blob[pos + 1]
        key, value = blob[pos + 2:pos + 2 + klen], blob[pos + 2 + klen:pos + 2 + klen + vlen]
        pos += 2 + klen + vlen
        if pos > len(blob):
            raise ValueError("xattr blob truncated in an entry body")
        if not key or b"\x00" in key:
            raise ValueError(f"xattr key {key!r} is empty or contains NUL")
        if prev is not None and key <= prev:
            raise ValueError("xattr keys are not sorted and unique")
        out[key], prev = value, key
    if pos != len(blob):
        raise ValueError(f"{len(blob) - pos} trailing bytes after the xattr entries")
    return out


# --------------------------------------------------------------------------------------------
# The client view: entries.


@dataclass(frozen=True)
class Chunk:
    """One chunk of a chunked file: uncompressed offset and size, object hash (suffix P)."""

    offset: int
    size: int
    hash: str | None


@dataclass(frozen=True)
class Entry:
    """One path as a client sees it. For a nested-catalog mountpoint the parent's row is used
    (the client takes ``stat`` from it) and ``nested_catalog`` is the mounted catalog's hash."""

    path: str
    type: str  # 'dir' | 'file' | 'symlink' | 'special'
    mode: int
    size: int
    mtime: int
    mtimens: int | None
    symlink: str
    flags: int
    hash: str | None
    chunks: tuple[Chunk, ...]
    compression: str | None  # 'zlib' | 'none' for files, None otherwise
    catalog: str  # mountpoint of the catalog holding the row ("" = root catalog)
    nested_catalog: str | None
    uid: int
    gid: int
    linkcount: int
    hardlink_group: int
    xattr: bytes | None

    @property
    def hidden(self) -> bool:
        return bool(self.flags & F_HIDDEN)

    @property
    def chunked(self) -> bool:
        return bool(self.flags & F_CHUNKED)


def entry_type(mode: int) -> str:
    """File type from ``st_mode``, which is where the client takes it from."""
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"


def _algorithm_of(flags: int, where: str) -> HashAlgorithm:
    code = (flags >> F_ALGO_SHIFT) & 7
    if code not in ALGORITHMS:
        raise BadCatalog(f"{where}: unknown hash algorithm code {code} in flags {flags}")
    return ALGORITHMS[code]


def _blob_hex(blob: bytes, algo: HashAlgorithm, where: str) -> str:
    if len(blob) != algo.digest_size:
        raise BadCatalog(f"{where}: hash blob is {len(blob)} bytes, must be {algo.digest_size}")
    return blob.hex() + algo.tag


@dataclass
class CatalogNode:
    """A catalog placed in the tree: where it is mounted and the path of each of its rows."""

    mountpoint: str
    hash: str
    catalog: Catalog
    paths: dict[str, Row]
    parent: str | None
    mounts: dict[str, NestedRef] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The reader.


class RepoReader:
    """Verify a served repository as a client would, then read its tree.

    The constructor verifies the whitelist, manifest, certificate and signatures; catalogs are
    fetched lazily on the first ``walk()``/``read_file()``/``check()``. ``at_root(hash)`` gives
    a view of an older root catalog that shares the verified manifest and the HTTP client.
    """

    def __init__(self, base_url: str, fqrn: str, public_key_pem: bytes | list[bytes], *,
                 now: datetime | None = None, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.fqrn = fqrn
        self.now = _as_utc(now) if now is not None else datetime.now(UTC)
        self._keys = load_public_keys(public_key_pem)
        self._own_client = client is None
        self._client = client if client is not None else httpx.Client(
            timeout=60.0, verify=_tls_context())
        self._catalog_cache: dict[str, Catalog] = {}
        self._nodes: list[CatalogNode] | None = None
        self._entries: dict[str, Entry] | None = None
        try:
            self.whitelist = parse_whitelist(self.get(".cvmfswhitelist"), fqrn, self._keys,
                                             self.now)
            self.signed_manifest = parse_manifest(self.get(".cvmfspublished"), fqrn)
            self.certificate = self._load_certificate(self.signed_manifest.certificate_hash)
            verify_manifest_signature(self.signed_manifest, self.certificate)
            require_listed(self.certificate, self.whitelist)
        except BaseException:
            self.close()
            raise
        self.root_catalog_hash: str = self.signed_manifest.root_catalog_hash

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP client if this reader created it."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> RepoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- basic properties -------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, str]:
        """The manifest fields, key letter -> value."""
        return dict(self.signed_manifest.fields)

    @property
    def at_manifest_root(self) -> bool:
        """True when this view shows the root catalog the manifest points to."""
        return self.root_catalog_hash == self.signed_manifest.root_catalog_hash

    @property
    def revision(self) -> int:
        """Manifest S for the current view; the catalog ``revision`` property for older roots."""
        if self.at_manifest_root:
            return self.signed_manifest.revision
        return int(self.root_catalog().properties.get("revision", "0"))

    def root_catalog(self) -> Catalog:
        """The root catalog of this view (fetched, hash-checked, inflated, loaded)."""
        return self.catalog(self.root_catalog_hash)

    # -- HTTP -------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Absolute URL of a repository-relative path."""
        return f"{self.base_url}/{path}"

    def get(self, path: str) -> bytes:
        """GET a repository resource; 2xx only, no redirects, no Content-Encoding."""
        url = self.url(path)
        try:
            resp = self._client.get(url)
        except httpx.HTTPError as exc:
            raise FetchError(f"GET {url} failed: {exc!r}") from None
        _require_ok(resp, "GET", url)
        return resp.content

    def head(self, path: str) -> int:
        """HEAD a resource and return the status code (clients accept only 200 or 404)."""
        url = self.url(path)
        try:
            return self._client.head(url).status_code
        except httpx.HTTPError as exc:
            raise FetchError(f"HEAD {url} failed: {exc!r}") from None

    def fetch_object(self, hash_text: str, suffix: str = "") -> bytes:
        """GET ``data/..`` and verify the served bytes hash to the name. Small objects only."""
        algo, _ = parse_hash_hex(hash_text, f"object {hash_text}{suffix}", BadCatalog)
        path = object_path(hash_text, suffix)
        data = self.get(path)
        actual = hash_hex(data, algo)
        if actual != hash_text:
            raise HashMismatch(f"{self.url(path)}: served bytes hash to {actual}, the name says "
                               f"{hash_text}")
        return data

    def _download_verified(self, hash_text: str, suffix: str) -> IO[bytes]:
        """Stream an object to a spool file while hashing it; verified before anyone reads it."""
        algo, _ = parse_hash_hex(hash_text, f"object {hash_text}{suffix}", BadCatalog)
        path = object_path(hash_text, suffix)
        url = self.url(path)
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # caller closes it
        hasher = algo.new()
        try:
            with self._client.stream("GET", url) as resp:
                _require_ok(resp, "GET", url)
                for block in resp.iter_raw():
                    hasher.update(block)
                    spool.write(block)
        except httpx.HTTPError as exc:
            spool.close()
            raise FetchError(f"GET {url} failed: {exc!r}") from None
        except BaseException:
            spool.close()
            raise
        actual = algo.hexdigest(hasher)
        if actual != hash_text:
            spool.close()
            raise HashMismatch(f"{url}: served bytes hash to {actual}, the name says {hash_text}")
        spool.seek(0)
        return spool

    # -- certificate and catalogs -----------------------------------------------------------

    def _load_certificate(self, hash_text: str) -> x509.Certificate:
        pem = inflate_exact(self.fetch_object(hash_text, "X"), f"certificate {hash_text}X")
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise BadManifest(f"certificate {hash_text}X is not a PEM 'BEGIN CERTIFICATE'")
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise BadManifest(f"certificate {hash_text}X does not parse: {exc}") from None

    def catalog(self, hash_text: str) -> Catalog:
        """Fetch, verify, inflate and load a catalog by hash (cached per reader family)."""
        if hash_text not in self._catalog_cache:
            what = f"catalog {hash_text}C"
            db = inflate_exact(self.fetch_object(hash_text, "C"), what)
            _check_sqlite_header(db, what)
            with tempfile.TemporaryDirectory(prefix="cvmfs-reader-") as tmp:
                db_path = Path(tmp) / "catalog.sqlite"
                db_path.write_bytes(db)
                self._catalog_cache[hash_text] = load_catalog_file(db_path, hash_text, what)
        return self._catalog_cache[hash_text]

    def save_catalog(self, hash_text: str, dest: Path) -> Path:
        """Write a catalog's inflated SQLite file to ``dest`` (for schema comparisons)."""
        db = inflate_exact(self.fetch_object(hash_text, "C"), f"catalog {hash_text}C")
        dest.write_bytes(db)
        return dest

    # -- older revisions --------------------------------------------------------------------

    def at_root(self, root_hash: str) -> RepoReader:
        """A view of the tree under another (e.g. older) root catalog hash, sharing the client."""
        parse_hash_hex(root_hash, "root catalog hash", BadCatalog)
        view = copy.copy(self)
        view.root_catalog_hash = root_hash
        view._own_client = False
        view._nodes = None
        view._entries = None
        return view

    def previous_root(self, root_hash: str | None = None) -> str | None:
        """The ``previous_revision`` of a root catalog (default: this view's), or None."""
        return self.catalog(root_hash or self.root_catalog_hash).previous_revision

    def previous(self) -> RepoReader | None:
        """A view of the previous revision, or None if this root names none."""
        prev = self.previous_root()
        return self.at_root(prev) if prev else None

    def revision_chain(self) -> list[str]:
        """Root catalog hashes from this view back through ``previous_revision`` links."""
        chain = [self.root_catalog_hash]
        while (prev := self.previous_root(chain[-1])) is not None:
            if prev in chain:
                raise BadCatalog(f"previous_revision cycle at {prev}")
            chain.append(prev)
        return chain

    # -- tree -------------------------------------------------------------------------------

    def nodes(self) -> list[CatalogNode]:
        """Every catalog reachable from this view's root, placed at its mountpoint."""
        if self._nodes is None:
            self._nodes = self._build_nodes()
        return self._nodes

    def catalog_hashes(self) -> list[str]:
        """Hashes (no suffix) of every catalog reachable from the root: root first."""
        return [n.hash for n in self.nodes()]

    def walk(self) -> dict[str, Entry]:
        """Every path -> Entry, sorted by path, root included as ``""``."""
        if self._entries is None:
            self._entries = self._build_entries()
        return dict(self._entries)

    def entry(self, path: str) -> Entry:
        """The entry at ``path`` (any spelling accepted by :func:`normalize_path`)."""
        p = normalize_path(path)
        entries = self._entries if self._entries is not None else self.walk()
        if p not in entries:
            raise ReaderError(f"no such path in the repository: {p!r}")
        return entries[p]

    def listdir(self, path: str = "") -> list[str]:
        """Names in a directory as a client lists them (hidden entries left out)."""
        p = normalize_path(path)
        return sorted(e.path.rsplit("/", 1)[1] for e in self.walk().values()
                      if e.path and parent_path(e.path) == p and not e.hidden)

    def _build_nodes(self) -> list[CatalogNode]:
        nodes: list[CatalogNode] = []
        queue: list[tuple[str, str, str | None]] = [("", self.root_catalog_hash, None)]
        while queue:
            mount, hash_text, parent = queue.pop(0)
            cat = self.catalog(hash_text)
            what = f"catalog {hash_text}C (mounted at {mount or '/'})"
            if mount and cat.root_prefix != mount:
                raise BadCatalog(f"{what}: root_prefix is {cat.root_prefix!r}, expected {mount!r}")
            node = CatalogNode(mount, hash_text, cat, _derive_paths(cat, mount, what), parent)
            node.mounts = _link_mountpoints(node, what)
            nodes.append(node)
            queue.extend((ref.path, ref.hash, mount) for ref in node.mounts.values())
        return nodes

    def _build_entries(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for node in self.nodes():
            for path, row in node.paths.items():
                if node.mountpoint and path == node.mountpoint:
                    continue  # the parent's mountpoint row stands for it
                ref = node.mounts.get(path)
                entries[path] = _make_entry(path, row, node, ref.hash if ref else None)
        return dict(sorted(entries.items()))

    # -- content ----------------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        """Whole content of a regular file, every object hash- and size-checked."""
        return b"".join(self.iter_file(path))

    def iter_file(self, path: str) -> Iterator[bytes]:
        """Stream a regular file's content in blocks; each object is verified before use."""
        e = self.entry(path)
        if e.type != "file":
            raise ReaderError(f"{e.path!r} is a {e.type}, not a regular file")
        if e.compression not in ("zlib", "none"):
            raise BadCatalog(f"{e.path}: unknown compression code in flags {e.flags}")
        if e.chunked:
            yield from self._iter_chunks(e)
        else:
            if e.hash is None:
                raise BadCatalog(f"{e.path}: regular non-chunked file without hash")
            yield from self._iter_object(e.hash, "", e.compression, e.size, e.path)

    def _iter_chunks(self, e: Entry) -> Iterator[bytes]:
        if not e.chunks:
            raise BadCatalog(f"{e.path}: chunked file without chunk rows (clients get EIO)")
        offset = 0
        for i, ch in enumerate(e.chunks):
            if ch.offset != offset:
                raise BadCatalog(f"{e.path}: chunk {i} starts at {ch.offset}, expected {offset}")
            if ch.hash is None:
                raise BadCatalog(f"{e.path}: chunk {i} has a NULL hash")
            yield from self._iter_object(ch.hash, "P", e.compression or "zlib", ch.size,
                                         f"{e.path} chunk {i} @{ch.offset}")
            offset += ch.size
        if offset != e.size:
            raise BadCatalog(f"{e.path}: chunks sum to {offset} bytes, file size is {e.size}")

    def _iter_object(self, hash_text: str, suffix: str, compression: str, size: int,
                     what: str) -> Iterator[bytes]:
        with self._download_verified(hash_text, suffix) as spool:
            blocks = iter(lambda: spool.read(_STREAM_BLOCK), b"")
            produced = yield from (_inflate_blocks(blocks, what) if compression == "zlib"
                                   else _raw_blocks(blocks))
        if produced != size:
            raise BadObject(f"{what}: object {hash_text}{suffix} holds {produced} bytes after "
                            f"{'inflation' if compression == 'zlib' else 'reading'}, the catalog "
                            f"says {size}")

    # -- references -------------------------------------------------------------------------

    def referenced_objects(self) -> set[str]:
        """Every ``data/..`` path (suffix included) this view needs: its catalogs, and for the
        manifest root also the certificate, history and meta-info; every file and chunk object.

        Not included: catalogs of other revisions (``previous_revision`` or history tags).
        """
        refs = {object_path(h, "C") for h in self.catalog_hashes()}
        if self.at_manifest_root:
            fields = self.signed_manifest.fields
            refs.add(object_path(fields["X"], "X"))
            refs.update(object_path(fields[k], k) for k in "HM" if k in fields)
        for e in self.walk().values():
            if e.type == "file" and e.hash is not None:
                refs.add(object_path(e.hash))
            refs.update(object_path(ch.hash, "P") for ch in e.chunks if ch.hash)
        return refs

    def history_tags(self) -> list[dict[str, Any]]:
        """Rows of the history database's ``tags`` table ([] when the manifest has no H)."""
        h = self.signed_manifest.fields.get("H")
        if not h:
            return []
        with self._sqlite_object(h, "H") as conn:
            cur = conn.execute("SELECT * FROM tags")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur]

    def _sqlite_object(self, hash_text: str, suffix: str) -> _TempSqlite:
        db = inflate_exact(self.fetch_object(hash_text, suffix), f"object {hash_text}{suffix}")
        return _TempSqlite(db)

    # -- check ------------------------------------------------------------------------------

    def check(self, *, objects: bool = True) -> None:
        """Raise :class:`CheckFailed` listing every violation of what swissknife check enforces.

        Structural problems that stop a client reading the tree raise :class:`BadCatalog` (or
        HashMismatch / FetchError) from the walk. With ``objects`` every referenced object must
        answer HEAD with 200, as ``check -c`` requires.
        """
        subdirs = _count_subdirectories(self.walk())
        problems: list[str] = []
        nodes = self.nodes()
        by_mount = {n.mountpoint: n for n in nodes}
        for node in nodes:
            _check_node_rows(node, subdirs, problems)
            _check_node_chunks(node, problems)
            _check_counters(node, [by_mount[p] for p in node.mounts], problems)
            _check_properties(node, problems)
            for ref in node.mounts.values():
                _check_nested_link(node, by_mount[ref.path], ref, problems)
        if self.at_manifest_root:
            self._check_manifest(problems)
            self._check_history(problems, objects)
            self._check_meta_info(problems)
            self._check_reflog(problems)
        if objects:
            for path in sorted(self.referenced_objects()):
                status = self.head(path)
                if status != 200:
                    problems.append(f"HEAD {path} answered {status}, expected 200")
        if problems:
            raise CheckFailed(problems)

    def _check_manifest(self, problems: list[str]) -> None:
        fields = self.signed_manifest.fields
        root = self.root_catalog()
        if int(fields.get("B", "0")) > 0 and int(fields["B"]) != root.uncompressed_size:
            problems.append(f"manifest B={fields['B']} but the root catalog inflates to "
                            f"{root.uncompressed_size} bytes")
        if root.properties.get("revision") != fields["S"]:
            problems.append(f"root catalog revision property is "
                            f"{root.properties.get('revision')!r}, manifest S is {fields['S']}")
        last_modified = root.properties.get("last_modified")
        if "T" in fields and last_modified and last_modified.isdigit() \
                and int(fields["T"]) < int(last_modified):
            problems.append(f"manifest T={fields['T']} is older than the root catalog "
                            f"last_modified={last_modified}")
        ttl = root.properties.get("TTL")
        if ttl is not None and ttl != fields["D"]:
            problems.append(f"manifest D={fields['D']} differs from the root catalog TTL={ttl}")

    def _check_history(self, problems: list[str], objects: bool) -> None:
        h = self.signed_manifest.fields.get("H")
        if not h:
            return
        with self._sqlite_object(h, "H") as conn:
            props = dict(conn.execute("SELECT key, value FROM properties"))
            tags = list(conn.execute("SELECT name, hash FROM tags"))
        if props.get("fqrn") != self.fqrn:
            problems.append(f"history {h}H: fqrn property {props.get('fqrn')!r} != {self.fqrn!r}")
        if str(props.get("schema")) != "1.0":
            problems.append(f"history {h}H: schema {props.get('schema')!r}, expected '1.0'")
        if not tags:
            problems.append(f"history {h}H has no tags (check: 'unused, dangling branches')")
        for name, tag_hash in tags:
            if not isinstance(tag_hash, str) or not _HASH_HEX_RE.match(tag_hash):
                problems.append(f"history tag {name!r}: bad root catalog hash {tag_hash!r}")
            elif objects and self.head(object_path(tag_hash, "C")) != 200:
                problems.append(f"history tag {name!r}: root catalog {tag_hash}C is missing "
                                f"(pull fetches every tagged root catalog)")

    def _check_meta_info(self, problems: list[str]) -> None:
        m = self.signed_manifest.fields.get("M")
        if not m:
            return
        try:
            json.loads(inflate_exact(self.fetch_object(m, "M"), f"meta-info {m}M"))
        except ValueError as exc:
            problems.append(f"meta-info {m}M is not JSON: {exc}")

    def _check_reflog(self, problems: list[str]) -> None:
        y = self.signed_manifest.fields.get("Y")
        status = self.head(".cvmfsreflog")
        if status == 404:
            if y:
                problems.append("manifest Y is set but .cvmfsreflog answers 404")
            return
        if status != 200:
            problems.append(f"HEAD .cvmfsreflog answered {status}, expected 200 or 404")
            return
        if not y:
            problems.append(".cvmfsreflog is served but the manifest has no Y (check aborts)")
            return
        raw = self.get(".cvmfsreflog")
        algo, _ = parse_hash_hex(y, "manifest Y")
        if hash_hex(raw, algo) != y:
            problems.append(f".cvmfsreflog hashes to {hash_hex(raw, algo)}, manifest Y is {y}")
            return
        with _TempSqlite(raw) as conn:
            refs = set(conn.execute("SELECT hash, type FROM refs"))
        fields = self.signed_manifest.fields
        for key, kind in (("C", 0), ("X", 1), ("H", 2), ("M", 3)):
            if key in fields and (fields[key], kind) not in refs:
                problems.append(f".cvmfsreflog lacks {key}={fields[key]} (type {kind})")


# --------------------------------------------------------------------------------------------
# Tree derivation (structural: a client could not read the tree otherwise -> BadCatalog).


def _derive_paths(cat: Catalog, mount: str, what: str) -> dict[str, Row]:
    """Derive each row's full path from its parent chain and check its md5path against it.

    Every row must be reachable from the catalog's root entry ("row count = 1 + counted
    children"), names must be non-empty and slash-free.
    """
    root_key = path_hash(mount)
    root = cat.rows.get(root_key)
    if root is None:
        raise BadCatalog(f"{what}: no root entry with md5path = MD5({mount!r}) = {root_key}")
    expected_parent = (0, 0) if mount == "" else path_hash(parent_path(mount))
    if root.parent != expected_parent:
        raise BadCatalog(f"{what}: root entry parent is {root.parent}, expected {expected_parent}")
    if mount and not root.flags & F_NESTED_ROOT:
        raise BadCatalog(f"{what}: root entry flags {root.flags} lack the nested-root bit 32")
    expected_name = mount.rsplit("/", 1)[-1] if mount else ""
    if root.name != expected_name:
        raise BadCatalog(f"{what}: root entry name {root.name!r}, expected {expected_name!r}")
    paths = {mount: root}
    stack = [(root, mount)]
    while stack:
        row, path = stack.pop()
        for child in cat.children.get(row.md5path, []):
            if child is root:
                continue
            if not child.name or "/" in child.name:
                raise BadCatalog(f"{what}: row {child.rowid} under {path or '/'} has invalid name "
                                 f"{child.name!r}")
            child_path = f"{path}/{child.name}"
            if child.md5path != path_hash(child_path):
                raise BadCatalog(f"{what}: row {child.rowid} {child_path!r}: md5path "
                                 f"{child.md5path} != MD5 split {path_hash(child_path)}")
            if child_path in paths:
                raise BadCatalog(f"{what}: path {child_path!r} appears twice")
            paths[child_path] = child
            stack.append((child, child_path))
    if len(paths) != len(cat.rows):
        reached = {r.rowid for r in paths.values()}
        stray = sorted((r.rowid, r.name) for r in cat.rows.values() if r.rowid not in reached)
        raise BadCatalog(f"{what}: {len(stray)} row(s) unreachable from the root entry (wrong "
                         f"parent hash?): {stray[:10]}")
    return paths


def _link_mountpoints(node: CatalogNode, what: str) -> dict[str, NestedRef]:
    """Match flag-2 rows with ``nested_catalogs`` rows; mountpoints must be empty here."""
    refs: dict[str, NestedRef] = {}
    for ref in node.catalog.nested:
        parse_hash_hex(ref.hash, f"{what}: nested_catalogs row {ref.path!r} sha1", BadCatalog)
        row = node.paths.get(ref.path)
        if row is None or ref.path == node.mountpoint:
            raise BadCatalog(f"{what}: nested_catalogs path {ref.path!r} is not an entry below "
                             f"this catalog's root")
        if not row.flags & F_NESTED_MOUNTPOINT or not stat.S_ISDIR(row.mode):
            raise BadCatalog(f"{what}: {ref.path!r} is in nested_catalogs but its row is not a "
                             f"directory with flag 2 (flags {row.flags})")
        if node.catalog.children.get(row.md5path):
            raise BadCatalog(f"{what}: mountpoint {ref.path!r} has children in the parent "
                             f"catalog; they must live only in the nested catalog")
        refs[ref.path] = ref
    for path, row in node.paths.items():
        if row.flags & F_NESTED_MOUNTPOINT and path not in refs:
            raise BadCatalog(f"{what}: {path!r} has flag 2 but no nested_catalogs row")
    return refs


def _make_entry(path: str, row: Row, node: CatalogNode, nested_hash: str | None) -> Entry:
    where = f"catalog {node.hash}C: {path or '/'}"
    chunk_rows = node.catalog.chunks.get(row.md5path, [])
    algo = _algorithm_of(row.flags, where)
    kind = entry_type(row.mode)
    return Entry(
        path=path, type=kind, mode=row.mode, size=row.size, mtime=row.mtime,
        mtimens=row.mtimens, symlink=row.symlink, flags=row.flags,
        hash=_blob_hex(row.hash, algo, where) if row.hash is not None else None,
        chunks=tuple(Chunk(c.offset, c.size, _blob_hex(c.hash, algo, f"{where} chunk")
                           if c.hash is not None else None) for c in chunk_rows),
        compression=(COMPRESSION_NAMES.get((row.flags >> F_COMPRESSION_SHIFT) & 7,
                                           f"unknown({(row.flags >> F_COMPRESSION_SHIFT) & 7})")
                     if kind == "file" else None),
        catalog=node.mountpoint, nested_catalog=nested_hash, uid=row.uid, gid=row.gid,
        linkcount=row.linkcount, hardlink_group=row.hardlink_group, xattr=row.xattr)


# --------------------------------------------------------------------------------------------
# check() rules (docs/cvmfs-format.md: "What pull and check enforce", "File catalogs", "Nested catalogs", "Chunked files").


def _type_problem(row: Row) -> str | None:
    """Flags type bits must agree with the mode's file type (must-list item 12)."""
    f, mode = row.flags, row.mode
    if stat.S_ISDIR(mode):
        ok = f & F_DIR and not f & (F_FILE | F_LINK | F_SPECIAL)
    elif stat.S_ISREG(mode):
        ok = f & F_FILE and not f & (F_DIR | F_LINK | F_SPECIAL)
    elif stat.S_ISLNK(mode):
        ok = f & F_FILE and f & F_LINK and not f & (F_DIR | F_SPECIAL)
    elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        ok = f & F_FILE and f & F_SPECIAL and not f & (F_DIR | F_LINK)
    else:
        return f"mode {oct(mode)} has no known file type"
    return None if ok else f"flags {f} disagree with mode {oct(mode)}"


def _row_problems(row: Row, kind: str) -> list[str]:
    """Per-row rules that need no other row."""
    out = []
    f = row.flags
    if (problem := _type_problem(row)) is not None:
        out.append(problem)
    if f & ~KNOWN_FLAG_BITS:
        out.append(f"unknown flag bits {hex(f & ~KNOWN_FLAG_BITS)}")
    if f & F_BIND_MOUNTPOINT:
        out.append("bind-mountpoint flag 0x4000 is set (do not use)")
    if f & F_NESTED_MOUNTPOINT and f & F_NESTED_ROOT:
        out.append("flags 2 and 32 set together")
    if kind != "file":
        for bit, name in ((F_CHUNKED, "chunked"), (F_DIRECT_IO, "direct-I/O"),
                          (F_EXTERNAL, "external"), (7 << F_COMPRESSION_SHIFT, "compression")):
            if f & bit:
                out.append(f"{name} flag bits on a {kind}")
    if kind in ("dir", "symlink", "special") and row.hash is not None:
        out.append(f"a {kind} must have a NULL hash")
    if kind == "file" and not f & F_CHUNKED and not f & F_EXTERNAL and row.hash is None:
        out.append("regular non-chunked file with NULL hash")
    if kind == "symlink":
        if not row.symlink:
            out.append("symlink with empty target")
        if row.size != len(row.symlink.encode("utf-8")):
            out.append(f"symlink size {row.size} != target length "
                       f"{len(row.symlink.encode('utf-8'))}")
    elif row.symlink:
        out.append(f"a {kind} with non-empty symlink column {row.symlink!r}")
    if kind == "special" and (stat.S_ISFIFO(row.mode) or stat.S_ISSOCK(row.mode)) and row.size:
        out.append(f"fifo/socket with size {row.size}, must be 0")
    if kind == "file" and (f >> F_COMPRESSION_SHIFT) & 7 not in COMPRESSION_NAMES:
        out.append(f"unknown compression code {(f >> F_COMPRESSION_SHIFT) & 7}")
    if row.size < 0:
        out.append(f"negative size {row.size}")
    if row.linkcount < 1:
        out.append(f"linkcount {row.linkcount} < 1")
    if row.mtimens is not None and not 0 <= row.mtimens <= 999_999_999:
        out.append(f"mtimens {row.mtimens} out of 0..999999999")
    if row.xattr is not None:
        try:
            parse_xattr_blob(row.xattr)
        except ValueError as exc:
            out.append(f"bad xattr blob: {exc}")
    return out


def _count_subdirectories(entries: dict[str, Entry]) -> dict[str, int]:
    """Directory path -> number of direct subdirectories, across catalogs: a mountpoint's
    subdirectories live in the nested catalog, yet its row in the parent counts them too."""
    subdirs: dict[str, int] = defaultdict(int)
    for e in entries.values():
        if e.path and e.type == "dir":
            subdirs[parent_path(e.path)] += 1
    return subdirs


def _check_node_rows(node: CatalogNode, subdirs: dict[str, int], problems: list[str]) -> None:
    """Per-row rules, directory linkcounts (2 + subdirectories) and hardlink groups."""
    tag = f"catalog {node.hash}C"
    groups: dict[int, list[tuple[str, Row]]] = defaultdict(list)
    for path, row in node.paths.items():
        kind = entry_type(row.mode)
        for p in _row_problems(row, kind):
            problems.append(f"{tag}: {path or '/'}: {p}")
        if kind == "dir":
            if row.hardlink_group:
                problems.append(f"{tag}: {path or '/'}: directory in hardlink group "
                                f"{row.hardlink_group}")
            if row.linkcount != 2 + subdirs.get(path, 0):
                problems.append(f"{tag}: {path or '/'}: directory linkcount {row.linkcount} != 2 "
                                f"+ {subdirs.get(path, 0)} subdirectories")
        elif row.hardlink_group:
            groups[row.hardlink_group].append((path, row))
    if not node.mountpoint:
        root = node.paths[""]
        if not stat.S_ISDIR(root.mode) or root.flags & (F_NESTED_ROOT | F_NESTED_MOUNTPOINT):
            problems.append(f"{tag}: root entry must be a plain directory (flags {root.flags})")
    for path, row in node.paths.items():
        if row.flags & F_NESTED_ROOT and path != node.mountpoint:
            problems.append(f"{tag}: {path}: nested-root flag 32 on a non-root entry")
    for group, members in groups.items():
        _check_hardlink_group(tag, group, members, problems)


def _check_hardlink_group(tag: str, group: int, members: list[tuple[str, Row]],
                          problems: list[str]) -> None:
    """Members share a directory, linkcount = member count, and identical metadata but name."""
    names = [p for p, _ in members]
    if len({parent_path(p) for p in names}) != 1:
        problems.append(f"{tag}: hardlink group {group} spans directories: {names}")
    for path, row in members:
        if row.linkcount != len(members):
            problems.append(f"{tag}: {path}: linkcount {row.linkcount} but hardlink group "
                            f"{group} has {len(members)} member(s)")
    first = members[0][1]
    for path, row in members[1:]:
        if _meta(row, with_name=False) != _meta(first, with_name=False):
            problems.append(f"{tag}: hardlink group {group}: {path} metadata differs from "
                            f"{members[0][0]}")


def _meta(row: Row, *, with_name: bool = True) -> tuple[Any, ...]:
    """Metadata that must agree between a mountpoint and the nested root (and hardlinks)."""
    core = (row.mode, row.size, row.mtime, row.mtimens, row.linkcount, row.hash, row.symlink,
            row.xattr is not None, row.hardlink_group)
    return (row.name, *core) if with_name else (*core, row.uid, row.gid, row.flags, row.xattr)


def _check_node_chunks(node: CatalogNode, problems: list[str]) -> None:
    """Chunk rows: only for chunked files here, contiguous from 0, sizes > 0, summing to size."""
    tag = f"catalog {node.hash}C"
    by_key = {row.md5path: (path, row) for path, row in node.paths.items()}
    for key, rows in node.catalog.chunks.items():
        path, row = by_key.get(key, (None, None))
        if row is None or entry_type(row.mode) != "file" or not row.flags & F_CHUNKED:
            problems.append(f"{tag}: {len(rows)} chunk row(s) for md5path {key} which is not a "
                            f"chunked regular file in this catalog ({path!r})")
    for path, row in node.paths.items():
        if entry_type(row.mode) != "file" or not row.flags & F_CHUNKED:
            continue
        rows = node.catalog.chunks.get(row.md5path, [])
        if not rows:
            problems.append(f"{tag}: {path}: chunked file without chunk rows (EIO on open)")
            continue
        offset = 0
        for i, ch in enumerate(rows):
            if ch.offset != offset:
                problems.append(f"{tag}: {path}: chunk {i} at offset {ch.offset}, expected "
                                f"{offset} (chunks must be contiguous from 0)")
            if ch.size <= 0:
                problems.append(f"{tag}: {path}: chunk {i} has size {ch.size}")
            if ch.hash is None:
                problems.append(f"{tag}: {path}: chunk {i} has a NULL hash")
            offset = ch.offset + ch.size
        total = sum(ch.size for ch in rows)
        if total != row.size:
            problems.append(f"{tag}: {path}: chunks sum to {total}, file size is {row.size}")


def compute_self_counters(cat: Catalog) -> dict[str, int]:
    """The ``self_*`` statistics of a catalog, computed from its rows (section 6.4)."""
    c = dict.fromkeys(COUNTER_KINDS, 0)
    for row in cat.rows.values():
        kind = entry_type(row.mode)
        if kind == "dir":
            c["dir"] += 1
        elif kind == "symlink":
            c["symlink"] += 1
        elif kind == "special":
            c["special"] += 1
        else:
            c["regular"] += 1
            c["file_size"] += row.size
            if row.flags & F_CHUNKED:
                c["chunked"] += 1
                c["chunked_size"] += row.size
        if row.xattr is not None:
            c["xattr"] += 1
        if row.flags & F_EXTERNAL:
            c["external"] += 1
            c["external_file_size"] += row.size
    c["nested"] = len(cat.nested)
    c["chunks"] = cat.chunk_row_count
    return c


def _subtree_counters(children: list[CatalogNode]) -> dict[str, int]:
    """``subtree_<x>`` = sum over direct children of (child self + child subtree), as stored."""
    total = dict.fromkeys(COUNTER_KINDS, 0)
    for child in children:
        stats = child.catalog.statistics
        for kind in COUNTER_KINDS:
            total[kind] += stats[f"self_{kind}"] + stats[f"subtree_{kind}"]
    return total


def _check_counters(node: CatalogNode, children: list[CatalogNode], problems: list[str]) -> None:
    """All 24 counters exact. Children's stored values are themselves checked at their node,
    so comparing against them here proves the whole tree."""
    tag = f"catalog {node.hash}C"
    stats = node.catalog.statistics
    expected = {f"self_{k}": v for k, v in compute_self_counters(node.catalog).items()}
    expected.update({f"subtree_{k}": v for k, v in _subtree_counters(children).items()})
    for name in STATISTICS_NAMES:
        if stats[name] != expected[name]:
            problems.append(f"{tag}: statistics {name} = {stats[name]}, computed {expected[name]}")
    extra = sorted(set(stats) - set(STATISTICS_NAMES))
    if extra:
        problems.append(f"{tag}: unknown statistics counters {extra}")


def _check_properties(node: CatalogNode, problems: list[str]) -> None:
    tag = f"catalog {node.hash}C"
    props = node.catalog.properties
    if not props.get("revision", "").isdigit():
        problems.append(f"{tag}: revision property {props.get('revision')!r} is not an integer")
    for key in ("last_modified", "TTL"):
        if key in props and not props[key].isdigit():
            problems.append(f"{tag}: property {key}={props[key]!r} is not an integer")
    if not node.mountpoint and props.get("root_prefix"):
        problems.append(f"{tag}: root catalog has root_prefix {props['root_prefix']!r}")
    if "voms_authz" in props:
        problems.append(f"{tag}: voms_authz is set; clients would require authorization")
    if node.catalog.bind_mountpoints:
        problems.append(f"{tag}: bind_mountpoints has rows (do not use)")


def _check_nested_link(parent: CatalogNode, child: CatalogNode, ref: NestedRef,
                       problems: list[str]) -> None:
    """Nested size, identical mountpoint/root metadata, and the ``.cvmfscatalog`` marker."""
    tag = f"nested catalog {ref.path}"
    if ref.size != child.catalog.uncompressed_size:
        problems.append(f"{tag}: nested_catalogs size {ref.size} != inflated size "
                        f"{child.catalog.uncompressed_size}")
    mount_row, root_row = parent.paths[ref.path], child.paths[ref.path]
    if _meta(mount_row) != _meta(root_row):
        problems.append(f"{tag}: mountpoint row {_meta(mount_row)} differs from the nested root "
                        f"row {_meta(root_row)}")
    marker = child.paths.get(f"{ref.path}/{MARKER_NAME}")
    if marker is None or entry_type(marker.mode) != "file":
        problems.append(f"{tag}: no regular file {MARKER_NAME} directly inside (check: 'nested "
                        f"catalog without marker')")


# --------------------------------------------------------------------------------------------
# Small helpers.


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One default TLS context per process: loading the CA store costs ~20 ms per client."""
    return ssl.create_default_context()


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC (whitelists are UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _require_ok(resp: httpx.Response, method: str, url: str) -> None:
    if not 200 <= resp.status_code < 300:
        raise FetchError(f"{method} {url} answered {resp.status_code}")
    if resp.headers.get("content-encoding"):
        raise FetchError(f"{method} {url} has Content-Encoding "
                         f"{resp.headers['content-encoding']!r}; clients hash the raw body")


def _raw_blocks(blocks: Iterable[bytes]) -> Generator[bytes, None, int]:
    """Yield stored blocks as they are; return the byte count (generator return value)."""
    total = 0
    for block in blocks:
        total += len(block)
        yield block
    return total


def _inflate_blocks(blocks: Iterable[bytes], what: str) -> Generator[bytes, None, int]:
    """Inflate one zlib stream block by block with bounded output; return the byte count."""
    d = zlib.decompressobj()
    total = 0
    try:
        for block in blocks:
            if d.eof:
                raise BadObject(f"{what}: trailing bytes after the zlib stream")
            data = block
            while data:
                out = d.decompress(data, _STREAM_BLOCK)
                data = d.unconsumed_tail
                total += len(out)
                if out:
                    yield out
        while not d.eof and (out := d.decompress(b"", _STREAM_BLOCK)):  # drain
            total += len(out)
            yield out
    except zlib.error as exc:
        raise BadObject(f"{what}: not a valid zlib stream ({exc})") from None
    if not d.eof:
        raise BadObject(f"{what}: zlib stream is truncated")
    if d.unused_data:
        raise BadObject(f"{what}: {len(d.unused_data)} trailing bytes after the zlib stream")
    return total


class _TempSqlite:
    """Context manager: an in-memory SQLite image written to a temp file, opened read-only."""

    def __init__(self, db: bytes) -> None:
        self._db = db
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        self._tmp = tempfile.TemporaryDirectory(prefix="cvmfs-reader-")
        path = Path(self._tmp.name) / "db.sqlite"
        path.write_bytes(self._db)
        self._conn = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)
        return self._conn

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._tmp is not None:
            self._tmp.cleanup()


# --------------------------------------------------------------------------------------------
# Comparing a published tree with its source directory.


def _source_kind(st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "special"


def _scan_source(root: Path) -> dict[str, os.stat_result]:
    """Relative POSIX path -> lstat of everything below ``root`` (symlinks not followed)."""
    out: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.lstat()
    return out


def _file_digest(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha1()
    for block in chunks:
        h.update(block)
    return h.hexdigest()


def _read_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from iter(lambda: fh.read(_STREAM_BLOCK), b"")


def compare_with_directory(reader: RepoReader, source_dir: Path, prefix: str = "", *,
                           mtimes: bool = False, modes: bool = False) -> list[str]:
    """Differences between the published subtree at ``prefix`` and ``source_dir``.

    Compares names, types, bytes (streamed, by SHA-1), the owner exec bit, symlink targets,
    and optionally regular-file mtimes and full permission bits. Hidden entries (flag 0x8000,
    e.g. a hidden ``.cvmfscatalog`` marker) are left out, as client listings leave them out.
    An empty list means identical.
    """
    base = normalize_path(prefix)
    entries = reader.walk()
    if base not in entries or entries[base].type != "dir":
        return [f"prefix {base!r} is not a directory in the repository"]
    published = {e.path[len(base) + 1:]: e for e in entries.values()
                 if e.path.startswith(base + "/") and not e.hidden}
    source = _scan_source(Path(source_dir))
    diffs = [f"only in source: {p}" for p in sorted(set(source) - set(published))]
    diffs += [f"only in repository: {p}" for p in sorted(set(published) - set(source))]
    for rel in sorted(set(source) & set(published)):
        diffs += _compare_one(reader, Path(source_dir) / rel, rel, source[rel], published[rel],
                              mtimes=mtimes, modes=modes)
    return diffs


def _compare_one(reader: RepoReader, full: Path, rel: str, st: os.stat_result, e: Entry, *,
                 mtimes: bool, modes: bool) -> list[str]:
    kind = _source_kind(st)
    if kind != e.type:
        return [f"type differs for {rel}: source {kind}, repository {e.type}"]
    out = []
    if kind == "symlink" and os.readlink(full) != e.symlink:
        out.append(f"symlink target differs for {rel}: source {os.readlink(full)!r}, "
                   f"repository {e.symlink!r}")
    if kind == "file":
        if st.st_size != e.size:
            out.append(f"size differs for {rel}: source {st.st_size}, repository {e.size}")
        elif _file_digest(_read_blocks(full)) != _file_digest(reader.iter_file(e.path)):
            out.append(f"content differs for {rel}")
        if bool(st.st_mode & stat.S_IXUSR) != bool(e.mode & stat.S_IXUSR):
            out.append(f"exec bit differs for {rel}: source {oct(st.st_mode & 0o777)}, "
                       f"repository {oct(e.mode & 0o777)}")
        if mtimes and int(st.st_mtime) != e.mtime:
            out.append(f"mtime differs for {rel}: source {int(st.st_mtime)}, repository {e.mtime}")
    if modes and kind != "symlink" and stat.S_IMODE(st.st_mode) != stat.S_IMODE(e.mode):
        out.append(f"mode differs for {rel}: source {oct(stat.S_IMODE(st.st_mode))}, "
                   f"repository {oct(stat.S_IMODE(e.mode))}")
    return out
