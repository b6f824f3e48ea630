"""A writer-side repository served over real loopback HTTP, and the reader that checks it.

``served_repository`` creates a repository with :class:`runtime.repository.Repository` in a
temporary data directory and serves ``data/public`` at ``/cvmfs/`` with ``tests.httpserve``
(a plain static server, like the nginx that serves it in production), so every test reads what
it published the way a client does: over HTTP, verifying signatures and hashes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runtime.repository import Repository
from runtime.settings import RepositoryConfig
from tests.cvmfs_reader import RepoReader
from tests.httpserve import serve_directory


@dataclass
class Served:
    repo: Repository
    root_url: str  # http://127.0.0.1:PORT

    @property
    def url(self) -> str:
        return f"{self.root_url}/cvmfs/{self.repo.fqrn}"

    @property
    def pub(self) -> bytes:
        return (self.repo.keys_dir / f"{self.repo.fqrn}.pub").read_bytes()

    def reader(self) -> RepoReader:
        return RepoReader(self.url, self.repo.fqrn, self.pub)


@contextlib.contextmanager
def served_repository(tmp: Path, fqrn: str = "ci.example.org", **config) -> Iterator[Served]:
    data, keys = tmp / "data", tmp / "keys"
    repo = Repository(data, keys, RepositoryConfig(fqrn=fqrn, **config))
    repo.init()
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    if not (site / "cvmfs").exists():
        os.symlink(data / "public", site / "cvmfs")
    try:
        with serve_directory(site) as url:
            yield Served(repo, url)
    finally:
        repo.close()


def object_files(repo: Repository) -> set[str]:
    """Every object path in the store (relative, e.g. ``data/ab/cdef…C``)."""
    return {f"data/{h[:2]}/{h[2:]}{s}" for h, s, _ in repo.store.iter_objects()}
