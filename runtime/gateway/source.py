"""Where the gateway finds a repository's certificate and its current manifest.

The gateway trusts only what it can verify: a published message must carry a manifest signed
by the repository's certificate. The certificate is read from ``<keys_dir>/<fqrn>.crt`` (the
public half of the keys, as cvmfs_server keeps them) or, in a process that shares the data
directory, from ``<data_dir>/meta/<fqrn>.crt``. The current manifest — what a new subscriber
gets at once, also right after a restart — is read from ``<data_dir>/public/<fqrn>`` when the
gateway shares the data directory, else fetched from ``CVMFS_EPHEMERAL_STRATUM0_URL``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
from cryptography import x509

from ..cvmfs import manifest as manifest_mod
from ..settings import Settings, validate_fqrn

log = logging.getLogger(__name__)

#: Far above any real manifest (~1 KB), far below anything that could hurt.
MAX_MANIFEST = 64 * 1024


class ManifestSource:
    """Certificates and current manifests of the repositories a gateway serves."""

    def __init__(self, settings: Settings):
        self.keys_dir = Path(settings.keys_dir)
        self.data_dir = Path(settings.data_dir)
        self.stratum0_url = settings.stratum0_url.rstrip("/")
        self._certs: dict[str, tuple[float, x509.Certificate]] = {}

    def _cert_paths(self, fqrn: str) -> list[Path]:
        return [self.keys_dir / f"{fqrn}.crt", self.data_dir / "meta" / f"{fqrn}.crt"]

    def certificate(self, fqrn: str) -> x509.Certificate | None:
        """The repository's certificate, or None for a repository this gateway doesn't know."""
        try:
            validate_fqrn(fqrn)
        except ValueError:
            return None
        for path in self._cert_paths(fqrn):
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            cached = self._certs.get(fqrn)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                log.warning("unreadable certificate %s", path)
                continue
            self._certs[fqrn] = (mtime, cert)
            return cert
        return None

    def local_manifest(self, fqrn: str) -> bytes | None:
        """``.cvmfspublished`` from the shared data directory, if this process has it."""
        try:
            return (self.data_dir / "public" / fqrn / ".cvmfspublished").read_bytes()
        except OSError:
            return None

    async def remote_manifest(self, fqrn: str) -> bytes | None:
        """``.cvmfspublished`` fetched from the stratum 0 and verified, or None.

        Bounded like a publish body (a manifest is ~1 KB), and never trusted unverified: a
        gateway without the repository's certificate has nothing to check it against.
        """
        cert = self.certificate(fqrn)
        if not self.stratum0_url or cert is None:
            return None
        url = f"{self.stratum0_url}/{fqrn}/.cvmfspublished"
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                async with client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        log.warning("GET %s answered %d", url, resp.status_code)
                        return None
                    body = bytearray()
                    async for piece in resp.aiter_bytes():
                        body += piece
                        if len(body) > MAX_MANIFEST:
                            log.warning("%s is larger than %d bytes", url, MAX_MANIFEST)
                            return None
        except httpx.HTTPError as exc:
            log.warning("cannot fetch %s: %s", url, exc)
            return None
        try:
            manifest_mod.verify(bytes(body), cert, fqrn)
        except manifest_mod.ManifestError as exc:
            log.warning("manifest at %s does not verify: %s", url, exc)
            return None
        return bytes(body)
