"""Shared fixtures: the real cvmfs_server reference repositories, served over loopback HTTP.

The reference repositories live in the repository itself (``tests/fixtures/cvmfs-reference``,
see its README for how they were made), so the suite runs from any clone in any directory.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.cvmfs_reader import RepoReader
from tests.httpserve import serve_directory

REFERENCE_DIR = Path(__file__).resolve().parent / "fixtures" / "cvmfs-reference"
REFERENCE_FQRNS = ("zlib.ref.test", "none.ref.test")

#: The reference whitelists expire 2026-12-28 17:00 UTC (hour granularity); tests of the
#: fixtures pass this fixed "now" so that they never depend on today's date.
FIXED_NOW = datetime(2026, 11, 29, tzinfo=UTC)


@dataclass(frozen=True)
class ReferenceRepo:
    """One reference repository as served to a test: where it is, its URL and its keys."""

    fqrn: str
    base_url: str  # http://127.0.0.1:PORT/cvmfs/<fqrn>
    public_dir: Path  # the served tree (a writable copy for ``reference_copy``)
    keys_dir: Path

    def key_file(self, ext: str) -> Path:
        return self.keys_dir / f"{self.fqrn}.{ext}"

    @property
    def pub_pem(self) -> bytes:
        """Master public key (what clients trust)."""
        return self.key_file("pub").read_bytes()

    @property
    def masterkey_pem(self) -> bytes:
        """Master private key (signs the whitelist)."""
        return self.key_file("masterkey").read_bytes()

    @property
    def cert_key_pem(self) -> bytes:
        """Repository private key (signs the manifest)."""
        return self.key_file("key").read_bytes()

    def reader(self, now: datetime = FIXED_NOW) -> RepoReader:
        """A verified reader at a fixed ``now`` (the fixture whitelists expire 2026-12-28)."""
        return RepoReader(self.base_url, self.fqrn, self.pub_pem, now=now)


def _require_reference() -> None:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference fixtures not found at {REFERENCE_DIR}: the checkout is incomplete")


def _make_writable(root: Path) -> None:
    """The fixture files are read-only (0444/0555); copies must be editable by the test."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture(scope="session")
def reference_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the untouched fixtures: ``/cvmfs/<fqrn>`` -> ``<fqrn>/public`` symlinks."""
    _require_reference()
    root = tmp_path_factory.mktemp("reference-served")
    (root / "cvmfs").mkdir()
    for fqrn in REFERENCE_FQRNS:
        (root / "cvmfs" / fqrn).symlink_to(REFERENCE_DIR / fqrn / "public",
                                          target_is_directory=True)
    with serve_directory(root) as url:
        yield url


@pytest.fixture
def reference_repo(reference_server: str) -> Callable[[str], ReferenceRepo]:
    """Factory: ``reference_repo(fqrn)`` -> the untouched fixture, served read-only."""
    def make(fqrn: str) -> ReferenceRepo:
        return ReferenceRepo(fqrn, f"{reference_server}/cvmfs/{fqrn}",
                             REFERENCE_DIR / fqrn / "public", REFERENCE_DIR / fqrn / "keys")
    return make


@pytest.fixture
def reference_copy(tmp_path: Path) -> Iterator[Callable[[str], ReferenceRepo]]:
    """Factory: ``reference_copy(fqrn)`` -> a writable copy of the served tree, served on its
    own port, for tests that tamper with bytes on disk."""
    _require_reference()
    with ExitStack() as stack:
        def make(fqrn: str) -> ReferenceRepo:
            root = tmp_path / f"served-{fqrn}"
            public = root / "cvmfs" / fqrn
            shutil.copytree(REFERENCE_DIR / fqrn / "public", public)
            _make_writable(root)
            url = stack.enter_context(serve_directory(root))
            return ReferenceRepo(fqrn, f"{url}/cvmfs/{fqrn}", public, REFERENCE_DIR / fqrn / "keys")
        yield make


# -- the default live server ------------------------------------------------------------------


@pytest.fixture
def srv(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The real server on a loopback port with the default test settings (tests/uploadkit.py);
    a test module that needs other settings defines its own ``srv``."""
    from tests.live_server import live_server
    from tests.uploadkit import settings

    with live_server(settings(tmp_path)) as server:
        yield server


@pytest.fixture
def client(srv) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """An HTTP client of ``srv`` carrying the test upload token."""
    from tests.uploadkit import auth

    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as c:
        yield c


# -- a local repository -----------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An initialised repository in ``tmp_path`` (tests/uploadkit.py's FQRN, default config);
    a test module that needs another configuration defines its own ``repo``."""
    from runtime.repository import Repository
    from runtime.settings import RepositoryConfig
    from tests.uploadkit import FQRN

    r = Repository(tmp_path / "data", tmp_path / "keys", RepositoryConfig(fqrn=FQRN))
    r.init()
    yield r
    r.close()
