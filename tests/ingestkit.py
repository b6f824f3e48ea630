"""Helpers of the archive-ingestion tests: archives made by the real ``tar``, uploads through
the real server, and what a refused upload must leave untouched."""

from __future__ import annotations

import subprocess
import tarfile as _tarfile
import zlib as _zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from runtime.repository import Repository
from tests.serverproc import ServeProcess
from tests.uploadkit import FQRN, OTHER, TOKEN, leftovers, shared_keys


def published(repo: Repository) -> tuple:
    """Everything a refused upload must leave as it was: the signed manifest, the artifacts,
    and no temp file or staging marker. (Objects a refused archive stored before its fault was
    found are unreferenced; gc reclaims them, like those of any abandoned upload.)"""
    arts = [(a.name, a.content_digest, a.expires_at, a.revision) for a in repo.artifacts()]
    return repo.manifest_bytes(), arts, leftovers(repo)


def source_tree(root: Path, files: int = 20) -> Path:
    """A small directory to archive: nested files, an empty dir, a symlink."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    for i in range(files):
        (root / ("sub" if i % 2 else "sub/deeper") / f"f{i}.txt").write_bytes(b"line %d\n" % i * (i + 1))
    (root / "big.bin").write_bytes(bytes(range(256)) * 800)
    (root / "link").symlink_to("big.bin")
    return root


def real_tar(src: Path, out: Path, *flags: str) -> bytes:
    """``tar <flags> -cf out -C src .`` with GNU tar; the archive's bytes."""
    subprocess.run(["tar", *flags, "-cf", str(out), "-C", str(src), "."], check=True)
    return out.read_bytes()


def put_archive(client: httpx.Client, name: str, data: bytes, fqrn: str = FQRN,
                **params: str) -> httpx.Response:
    return client.put(f"/repos/{fqrn}/{name}", params={"unpack": "true", **params},
                      content=data)


def assert_refused(resp: httpx.Response, status: int, message: str) -> None:
    """The answer is ``status`` with one line of JSON detail containing ``message``."""
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    assert message in detail, detail


# --- the server as its own process (RSS of the server alone; SIGKILL) ------------------------


class ServerProcess(ServeProcess):
    """``python -m runtime serve`` on a loopback port, configured like the tests' servers
    (its output in ``tmp/server.log``)."""

    def __init__(self, tmp: Path, **env: str):
        super().__init__({"CVMFS_EPHEMERAL_DATA_DIR": str(tmp / "data"),
                          "CVMFS_EPHEMERAL_KEYS_DIR": str(shared_keys(tmp / "keys")),
                          "CVMFS_EPHEMERAL_REPOSITORIES": f"{FQRN},{OTHER}",
                          "CVMFS_EPHEMERAL_TOKENS": TOKEN, **env},
                         log=tmp / "server.log")


@contextmanager
def server_process(tmp: Path, **env: str) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp, **env)
    try:
        yield server
    finally:
        server.stop()


# --- hostile archives -------------------------------------------------------------------------


def _raw_header(name: str, typeflag: bytes, size: int) -> bytes:
    info = _tarfile.TarInfo(name)
    info.size = size
    info.type = typeflag
    info.mtime = 1704067200
    return info.tobuf(_tarfile.USTAR_FORMAT, "utf-8", "strict")


def header_bomb(kind: str, inflated: int) -> bytes:
    """A .tar.gz whose first member is a PAX extended header (``pax``) or GNU long name
    (``gnu``) of ``inflated`` bytes of repeated ``a``: a few hundred KB on the wire."""
    typeflag = {"pax": _tarfile.XHDTYPE, "gnu": _tarfile.GNUTYPE_LONGNAME}[kind]
    co = _zlib.compressobj(9, wbits=31)
    out = [co.compress(_raw_header("././@bomb", typeflag, inflated))]
    block = b"a" * (1024 * 1024)
    left = inflated
    while left:
        piece = block[:min(left, len(block))]
        out.append(co.compress(piece))
        left -= len(piece)
    out.append(co.compress(b"\0" * (512 - inflated % 512 if inflated % 512 else 0)))
    out.append(co.compress(_raw_header("after.txt", _tarfile.REGTYPE, 0) + bytes(1024)))
    out.append(co.flush())
    return b"".join(out)


def empty_files_tar(count: int, per_dir: int = 1000) -> Iterator[bytes]:
    """An uncompressed tar of ``count`` empty files (``dNNN/fNNNN``), generated in pieces."""
    buf = []
    for i in range(count):
        d, f = divmod(i, per_dir)
        buf.append(_raw_header(f"d{d:04d}/f{f:05d}", _tarfile.REGTYPE, 0))
        if len(buf) >= 2048:
            yield b"".join(buf)
            buf = []
    buf.append(bytes(1024))
    yield b"".join(buf)
