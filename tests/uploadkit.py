"""Helpers shared by the upload-service tests: settings for a fresh server, and a snapshot of
everything a failed request must leave untouched."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from runtime.cvmfs import keys

from runtime.repository import Repository
from runtime.settings import Settings

FQRN = "ci.example.org"
OTHER = "other.example.org"
TOKEN = "ci-token-123"
SCOPED = "scoped-token-456"


_KEYS: Path | None = None


def shared_keys(dest: Path) -> Path:
    """Keys for FQRN and OTHER, generated once per test process and copied (RSA generation
    takes a noticeable fraction of a second per key)."""
    global _KEYS
    if _KEYS is None:
        _KEYS = Path(tempfile.mkdtemp(prefix="uploadkit-keys-"))
        for fqrn in (FQRN, OTHER):
            keys.create_missing(_KEYS, fqrn)
    if not dest.exists():
        shutil.copytree(_KEYS, dest)
    return dest


def settings(tmp: Path, **overrides) -> Settings:  # type: ignore[no-untyped-def]
    base = dict(data_dir=tmp / "data", keys_dir=shared_keys(tmp / "keys"),
                repositories=f'[{{"fqrn": "{FQRN}", "compression": "zlib", '
                             f'"chunk_size": 65536}}, "{OTHER}"]',
                tokens=f"{TOKEN},{SCOPED}:{OTHER}", scheduler=False, log_level="warning")
    base.update(overrides)
    return Settings(**base)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def snapshot(repo: Repository) -> tuple:
    """Published state + every object + temp files: equal before and after a refused request."""
    objects = sorted(f"{h}{s}" for h, s, _st in repo.store.iter_objects())
    arts = [(a.name, a.content_digest, a.expires_at, a.revision) for a in repo.artifacts()]
    return repo.manifest_bytes(), arts, objects, leftovers(repo)


def leftovers(repo: Repository) -> list[str]:
    """Temp files and staging markers (must be none once requests are over)."""
    out = []
    for d in (repo.store.txn, repo.private_dir / "staging"):
        if d.is_dir():
            out += [str(p) for p in d.iterdir()]
    return out


def make_tar(members: list[tuple], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """``(name, kind, payload)``; kind file|dir|symlink|hardlink|fifo|chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1704067200
            if kind == "file":
                info.size = len(payload)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                         "chr": tarfile.CHRTYPE}[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            tar.addfile(info)
    return buf.getvalue()


def tree_files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p.read_bytes()
    return out
