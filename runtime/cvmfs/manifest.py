"""The signed manifest ``.cvmfspublished`` (docs/cvmfs-format.md, "Manifest").

BODY is one ``<letter><value>`` line per field, in cvmfs's order (C B R D S G A N X H T M Y);
FILE = BODY ``--`` LF sha1-hex(BODY) LF signature, with no trailing LF. The signature is
PKCS#1 v1.5/SHA-1 over the ASCII hex, made with the repository key (``<fqrn>.key``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from . import signing

#: MD5 of the empty root path; the client requires exactly this value in ``R``.
ROOT_PATH_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


class ManifestError(ValueError):
    """A manifest that does not parse or does not verify."""


@dataclass(frozen=True)
class Manifest:
    root_hash: str  # C: root catalog hex, suffix C implied
    root_size: int  # B: uncompressed root catalog size
    ttl: int  # D: present but unused by clients; equals the catalog TTL property
    revision: int  # S
    fqrn: str  # N
    certificate_hash: str  # X
    timestamp: int  # T
    garbage_collectable: bool = True  # G
    history_hash: str | None = None  # H
    metainfo_hash: str | None = None  # M
    reflog_hash: str | None = None  # Y

    def body(self) -> bytes:
        lines = [
            f"C{self.root_hash}",
            f"B{self.root_size}",
            f"R{ROOT_PATH_MD5}",
            f"D{self.ttl}",
            f"S{self.revision}",
            f"G{'yes' if self.garbage_collectable else 'no'}",
            "Ano",
            f"N{self.fqrn}",
            f"X{self.certificate_hash}",
        ]
        if self.history_hash:
            lines.append(f"H{self.history_hash}")
        lines.append(f"T{self.timestamp}")
        if self.metainfo_hash:
            lines.append(f"M{self.metainfo_hash}")
        if self.reflog_hash:
            lines.append(f"Y{self.reflog_hash}")
        text = "\n".join(lines) + "\n"
        if "\r" in text:
            raise ManifestError("manifest fields must not contain CR")
        return text.encode("utf-8")

    def sign(self, key: rsa.RSAPrivateKey) -> bytes:
        """The complete ``.cvmfspublished`` bytes."""
        body = self.body()
        return signing.assemble(body, signing.sign_manifest_hex(key, signing.body_hex(body)))


def parse_fields(body: bytes) -> dict[str, str]:
    """The cvmfs key-value parser: first byte is the key, last value wins, stop at ``--``."""
    fields: dict[str, str] = {}
    for raw in body.split(b"\n"):
        if raw == b"--":
            break
        if not raw:
            continue
        line = raw.decode("utf-8", "replace")
        fields[line[0]] = line[1:]
    return fields


def parse(blob: bytes) -> Manifest:
    """Parse a signed manifest (no signature check); raise :class:`ManifestError` if incomplete."""
    try:
        body, _hex, _sig = signing.split_signed(blob)
    except signing.SignatureError as exc:
        raise ManifestError(str(exc)) from exc
    f = parse_fields(body)
    missing = [k for k in "CRDSNX" if k not in f]
    if missing:
        raise ManifestError(f"incomplete manifest: missing {', '.join(missing)}")
    if f["R"] != ROOT_PATH_MD5:
        raise ManifestError("root path hash mismatch (R)")
    try:
        return Manifest(
            root_hash=f["C"], root_size=int(f.get("B", "0")), ttl=int(f["D"]),
            revision=int(f["S"]), fqrn=f["N"], certificate_hash=f["X"],
            timestamp=int(f.get("T", "0")), garbage_collectable=f.get("G") == "yes",
            history_hash=f.get("H"), metainfo_hash=f.get("M"), reflog_hash=f.get("Y"),
        )
    except ValueError as exc:
        raise ManifestError(f"malformed manifest field: {exc}") from exc


def verify(blob: bytes, certificate: x509.Certificate, fqrn: str | None = None) -> Manifest:
    """Parse and verify the signature with ``certificate``; check the name if given."""
    manifest = parse(blob)
    body, hex_ascii, sig = signing.split_signed(blob)
    if hex_ascii != signing.body_hex(body):
        raise ManifestError("manifest hash line does not match its body")
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ManifestError("certificate key is not RSA")
    try:
        signing.verify_manifest_hex(public_key, hex_ascii, sig)
    except signing.SignatureError as exc:
        raise ManifestError(str(exc)) from exc
    if fqrn is not None and manifest.fqrn != fqrn:
        raise ManifestError(f"manifest is for {manifest.fqrn!r}, not {fqrn!r}")
    return manifest
