"""Repository keys and certificate, as ``cvmfs_server mkfs`` makes them (docs/cvmfs-format.md, "Keys and certificate").

Files in the keys directory, named for the repository:

==================  ====================================================  ======
``<fqrn>.masterkey``  RSA-2048 private key, signs the whitelist               0400
``<fqrn>.pub``        master public key (SubjectPublicKeyInfo PEM)            0444
``<fqrn>.key``        RSA-2048 repository key, signs the manifest             0400
``<fqrn>.crt``        self-signed X.509 certificate of the repository key     0444
==================  ====================================================  ======

Existing files are never overwritten: a deployment mounts them from a secret, and a restarted
server must keep signing with the keys clients already trust.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


class KeysError(RuntimeError):
    """Keys are missing, unreadable or do not belong together."""


SUFFIXES = ("masterkey", "pub", "key", "crt")


def key_path(keys_dir: Path, fqrn: str, suffix: str) -> Path:
    """``<keys_dir>/<fqrn>.<suffix>``."""
    return Path(keys_dir) / f"{fqrn}.{suffix}"


def certificate_subject(fqrn: str) -> str:
    """CN used by cvmfs_server: the fqrn cut to 30 chars plus ``[...]``, then a fixed tail."""
    name = fqrn if len(fqrn) <= 30 else fqrn[:30] + "[...]"
    return f"{name} CernVM-FS Release Managers"


def fingerprint(certificate: x509.Certificate) -> str:
    """Whitelist fingerprint: SHA-1 of the DER certificate, uppercase hex pairs joined by ``:``."""
    digest = hashlib.sha1(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 40, 2)).upper()


@dataclass(frozen=True)
class RepositoryKeys:
    """The loaded key material of one repository.

    ``master_key`` is ``None`` when the master key is kept offline; the repository can then
    publish but not re-sign its whitelist. It is loaded (and checked against ``.pub``) on first
    use, not with the rest: parsing and validating an RSA private key costs ~27 ms, which every
    ``publish`` from the command line would pay for a key that only signs whitelists.
    """

    fqrn: str
    repository_key: rsa.RSAPrivateKey | None
    certificate: x509.Certificate
    certificate_pem: bytes
    master_public_pem: bytes
    #: ``<fqrn>.masterkey`` if it exists (at load time), else ``None``.
    master_key_path: Path | None = None

    @functools.cached_property
    def master_key(self) -> rsa.RSAPrivateKey | None:
        """The master key, or ``None`` if kept offline. ``KeysError`` if it does not match
        ``.pub`` (a whitelist signed with it would be refused by every client)."""
        if self.master_key_path is None:
            return None
        master = _load_private(self.master_key_path)
        if not _public_numbers_equal(master.public_key(), self.master_public_key):
            raise KeysError(f"{self.master_key_path} does not match "
                            f"{key_path(self.master_key_path.parent, self.fqrn, 'pub')}")
        return master

    @property
    def master_public_key(self) -> rsa.RSAPublicKey:
        key = serialization.load_pem_public_key(self.master_public_pem)
        assert isinstance(key, rsa.RSAPublicKey)
        return key

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` atomically with ``mode``; never replace an existing file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    try:
        os.link(tmp, path)  # fails if path exists: a concurrent creator wins, we never clobber
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificate(fqrn: str, key: rsa.RSAPrivateKey, now: dt.datetime) -> x509.Certificate:
    """Self-signed certificate like ``openssl x509 -req -days 365 -signkey``.

    Clients never check validity, subject or issuer; only the fingerprint in the whitelist.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certificate_subject(fqrn))])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


def create_missing(keys_dir: Path, fqrn: str, now: dt.datetime | None = None) -> list[str]:
    """Create whichever of the four key files are absent; return the suffixes created.

    A lone ``.pub`` without its ``.masterkey`` (master key kept offline) is left alone; a
    ``.crt`` is only made when its ``.key`` is made too, since they must match.
    """
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    now = now or dt.datetime.now(dt.timezone.utc)
    created: list[str] = []
    paths = {s: key_path(keys_dir, fqrn, s) for s in SUFFIXES}
    if not paths["masterkey"].exists() and not paths["pub"].exists():
        master = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_new(paths["masterkey"], _private_pem(master), 0o400)
        pub = master.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_new(paths["pub"], pub, 0o444)
        created += ["masterkey", "pub"]
    elif paths["masterkey"].exists() and not paths["pub"].exists():
        master = _load_private(paths["masterkey"])
        pub = master.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_new(paths["pub"], pub, 0o444)
        created.append("pub")
    if not paths["key"].exists() and not paths["crt"].exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_new(paths["key"], _private_pem(key), 0o400)
        cert = make_certificate(fqrn, key, now)
        _write_new(paths["crt"], cert.public_bytes(serialization.Encoding.PEM), 0o444)
        created += ["key", "crt"]
    return created


def _load_private(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeysError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeysError(f"{path}: not an RSA key")
    return key


def _public_numbers_equal(a: rsa.RSAPublicKey, b: rsa.RSAPublicKey) -> bool:
    return a.public_numbers() == b.public_numbers()


def load(keys_dir: Path, fqrn: str, *, require_signing: bool = True) -> RepositoryKeys:
    """Load and cross-check the keys of ``fqrn``.

    ``require_signing=False`` loads public material only (``.pub`` and ``.crt``), which is
    all a gateway needs to verify manifests.
    """
    paths = {s: key_path(keys_dir, fqrn, s) for s in SUFFIXES}
    for suffix in ("pub", "crt") + (("key",) if require_signing else ()):
        if not paths[suffix].exists():
            raise KeysError(f"missing key file {paths[suffix]}")
    cert_pem = paths["crt"].read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise KeysError(f"{paths['crt']}: not a PEM certificate") from exc
    pub_pem = paths["pub"].read_bytes()
    try:
        master_pub = serialization.load_pem_public_key(pub_pem)
    except ValueError as exc:
        raise KeysError(f"{paths['pub']}: not a PEM public key (BEGIN PUBLIC KEY)") from exc
    if not isinstance(master_pub, rsa.RSAPublicKey):
        raise KeysError(f"{paths['pub']}: not an RSA key")
    repo_key = _load_private(paths["key"]) if paths["key"].exists() else None
    if repo_key is not None and not _public_numbers_equal(repo_key.public_key(), cert.public_key()):
        raise KeysError(f"{paths['key']} does not match {paths['crt']}")
    return RepositoryKeys(
        fqrn=fqrn,
        repository_key=repo_key,
        certificate=cert,
        certificate_pem=cert_pem,
        master_public_pem=pub_pem,
        master_key_path=paths["masterkey"] if paths["masterkey"].exists() else None,
    )
