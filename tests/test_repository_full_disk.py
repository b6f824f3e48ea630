"""A full disk heals: uploads stop at the free-space reserve with 507 (nothing published, nothing
left behind), reads, deletes, clean and gc keep working, gc then frees the space, and the next
upload succeeds, with nobody's help. Also when something else fills the disk to the last byte.

Each test makes its own small filesystem (a tmpfs with ``size=``, unmounted afterwards); it
needs root (or CAP_SYS_ADMIN), and is skipped otherwise.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from runtime.maintenance.clean import clean
from runtime.maintenance.gc import collect
from runtime.repository import Repository, StorageFull
from runtime.repository.commit import Commit
from runtime.repository.space import RESERVE_FILE_BYTES
from runtime.repository.state import full_disk_is_storage_full
from tests.live_server import live_server
from tests.served import served_repository
from tests.uploadkit import FQRN, auth, leftovers, settings, snapshot

MiB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path):  # type: ignore[no-untyped-def]
    """A 48 MiB tmpfs of the test's own."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem to the last byte, as another writer would."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        block = b"\0" * MiB
        while True:
            try:
                fh.write(block)
            except OSError:
                break
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    fh.write(b"\0" * size)
                except OSError:
                    break
    return filler


def detail(r: httpx.Response) -> str:
    text = r.json()["detail"]
    assert "\n" not in text
    return text


def test_uploads_stop_at_the_reserve_and_everything_else_keeps_working(tmp_path, small_fs):
    cfg = settings(tmp_path, data_dir=small_fs / "data", min_free_bytes=16 * MiB)
    with live_server(cfg) as srv, httpx.Client(base_url=srv.url, headers=auth(),
                                                timeout=60) as client:
        repo = srv.repositories[FQRN]
        keep = os.urandom(MiB)
        assert client.put(f"/repos/{FQRN}/keep", content=keep).status_code == 200
        doomed = client.put(f"/repos/{FQRN}/doomed", params={"ttl_s": 1},
                            content=os.urandom(8 * MiB))
        assert doomed.status_code == 200, doomed.text
        before = snapshot(repo)

        big = client.put(f"/repos/{FQRN}/big", content=os.urandom(40 * MiB))
        assert big.status_code == 507, big.text
        assert "storage is full" in detail(big) and "nothing was published" in detail(big)
        assert snapshot(repo)[:2] == before[:2], "published repository unchanged"
        assert leftovers(repo) == [], "no staging marker or temp file left"
        assert repo.space.free_bytes() > 8 * MiB, "the reserve was kept"

        # reads, the stratum 0 and deletes work after the 507
        assert [f["name"] for f in client.get(f"/repos/{FQRN}").json()["files"]] == \
            ["doomed", "keep"]
        assert client.get(f"/repos/{FQRN}/keep").content == keep
        assert client.get(f"/cvmfs/{FQRN}/.cvmfspublished").status_code == 200
        # clean and gc free the space without help
        time.sleep(1.2)
        assert clean(repo).removed == ["doomed"]
        time.sleep(0.1)
        freed = collect(repo, grace_s=0, slack_s=0)
        assert freed.bytes_freed >= 8 * MiB
        again = client.put(f"/repos/{FQRN}/again", content=os.urandom(8 * MiB))
        assert again.status_code == 200, again.text
        assert client.delete(f"/repos/{FQRN}/keep").status_code == 200


def test_a_disk_filled_by_someone_else_still_reads_deletes_and_heals(tmp_path, small_fs):
    cfg = settings(tmp_path, data_dir=small_fs / "data", min_free_bytes=4 * MiB)
    with live_server(cfg) as srv, httpx.Client(base_url=srv.url, headers=auth(),
                                                timeout=60) as client:
        repo = srv.repositories[FQRN]
        assert repo.space.reserve_file.stat().st_size == RESERVE_FILE_BYTES
        blobs = {name: os.urandom(4 * MiB) for name in ("a", "b")}
        for name, blob in blobs.items():
            assert client.put(f"/repos/{FQRN}/{name}", content=blob).status_code == 200
        filler = fill(small_fs)
        assert os.statvfs(small_fs).f_bavail == 0
        before = snapshot(repo)

        refused = client.put(f"/repos/{FQRN}/c", content=b"x" * 100_000)
        assert refused.status_code == 507, refused.text
        assert snapshot(repo)[:2] == before[:2] and leftovers(repo) == []
        assert client.get(f"/repos/{FQRN}").status_code == 200
        assert client.get(f"/repos/{FQRN}/a").content == blobs["a"]
        assert client.get(f"/cvmfs/{FQRN}/.cvmfspublished").content == repo.manifest_bytes()

        # a delete goes through, on the space reserve file
        deleted = client.delete(f"/repos/{FQRN}/a")
        assert deleted.status_code == 200, deleted.text
        assert not repo.space.reserve_file.exists()
        time.sleep(0.1)
        freed = collect(repo, grace_s=0, slack_s=0)
        assert freed.bytes_freed >= 4 * MiB
        assert repo.space.reserve_file.exists(), "gc put the reserve file back"
        filler.unlink()
        assert client.put(f"/repos/{FQRN}/c", content=b"x" * 100_000).status_code == 200


def test_reads_need_no_new_file_on_a_full_disk(tmp_path, small_fs):
    """A new process on a full disk, with state.db's WAL files gone, still lists artifacts."""
    data = small_fs / "data"
    with _Repo(tmp_path, data) as repo:
        tx = repo.begin()
        tx.add_file("a/f", b"payload")
        tx.publish()
    assert not Path(f"{repo.state_path}-wal").exists(), "closed: SQLite removed the WAL files"
    fill(small_fs)
    fresh = Repository(data, tmp_path / "keys", repo.config)
    try:
        assert [a.name for a in fresh.artifacts()] == ["a"]
        assert fresh.revisions()[0]["revision"] == repo.revision()
    finally:
        fresh.close()


class _Repo:
    """A repository on ``data`` without a reserve, closed (all connections) on exit."""

    def __init__(self, tmp: Path, data: Path):
        from runtime.settings import RepositoryConfig

        self.repo = Repository(data, tmp / "keys", RepositoryConfig(fqrn=FQRN),
                               min_free_bytes=0)

    def __enter__(self) -> Repository:
        self.repo.init()
        return self.repo

    def __exit__(self, *exc: object) -> None:
        self.repo.close()


def test_a_revision_committed_before_a_failed_manifest_write_is_rolled_forward(tmp_path):
    """The commit point passed (state.db), then the manifest could not be written: the publish
    succeeds (its revision is recorded), and the manifest is rolled forward by the next commit."""
    with served_repository(tmp_path) as s:
        repo = s.repo
        served = repo.revision()
        obstacle = repo.manifest_path.with_name(
            f".{repo.manifest_path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
        obstacle.mkdir()  # the manifest's temp file cannot be created
        tx = repo.begin()
        tx.add_file("a/f", b"payload")
        result = tx.publish()  # no exception: the revision is committed
        assert result.revision > served
        assert repo.revision() == served, "not served yet"
        assert repo.revisions()[0]["state"] == "pending"
        obstacle.rmdir()
        Commit(repo, []).run()  # any next commit (or the next start) rolls it forward
        assert repo.revision() == result.revision
        with s.reader() as reader:
            assert reader.read_file("/a/f") == b"payload"


def test_sqlite_disk_full_is_storage_full(tmp_path):
    """A real SQLITE_FULL (a database at its page limit) becomes StorageFull, a 507."""
    conn = sqlite3.connect(tmp_path / "limited.db")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("PRAGMA max_page_count = 8")
    with pytest.raises(StorageFull) as caught:
        with full_disk_is_storage_full("test"):
            for _ in range(100):
                conn.execute("INSERT INTO t VALUES (?)", (b"\0" * 4000,))
    assert caught.value.errno == 28 and "storage is full" in str(caught.value)
