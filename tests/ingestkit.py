"""Helpers of the archive-ingestion tests: archives made by the real ``tar``, uploads through
the real server, and what a refused upload must leave untouched."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from runtime.repository import Repository
from tests.uploadkit import FQRN, leftovers


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
