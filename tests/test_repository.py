"""Transactions, the revision rule, the writer lock, crash safety and bad input."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runtime.repository import (ArtifactExists, ArtifactNotFound, InvalidPath, Repository,
                                RepositoryLocked)
from runtime.settings import RepositoryConfig
from tests.served import object_files, served_repository

REPO_ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """A settable clock for the revision rule (the repository takes ``clock=``)."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_repo(tmp: Path, clock: Clock | None = None, fqrn: str = "rev.example.org") -> Repository:
    repo = Repository(tmp / "data", tmp / "keys", RepositoryConfig(fqrn=fqrn),
                      **({"clock": clock} if clock else {}))
    repo.init()
    return repo


def publish_one(repo: Repository, name: str, data: bytes = b"x") -> int:
    tx = repo.begin()
    tx.add_file(f"{name}/f", data)
    return tx.publish().revision


# -- revision rule -----------------------------------------------------------------------------

def test_revision_is_time_derived_and_strictly_increasing(tmp_path: Path) -> None:
    clock = Clock(2_000_000_000)
    repo = make_repo(tmp_path, clock)
    assert repo.revision() == 2_000_000_000
    # several publishes within one second still increase by one each
    revs = [publish_one(repo, f"a{i}", bytes([i])) for i in range(3)]
    assert revs == [2_000_000_001, 2_000_000_002, 2_000_000_003]
    clock.t = 2_000_000_100
    assert publish_one(repo, "later") == 2_000_000_100
    m = repo.manifest()
    assert m.timestamp == 2_000_000_100


def test_clock_going_backwards_never_lowers_revision_or_timestamp(tmp_path: Path) -> None:
    clock = Clock(2_000_000_000)
    repo = make_repo(tmp_path, clock)
    before = repo.manifest()
    clock.t -= 3600
    publish_one(repo, "a")
    after = repo.manifest()
    assert after.revision == before.revision + 1
    assert after.timestamp >= before.timestamp, "T must not go backwards (clients: 'outdated')"


def test_stateless_restart_on_empty_data_dir_keeps_revisions_ahead(tmp_path: Path) -> None:
    """A deployment that loses its data directory but keeps its keys restarts at S = now,
    which is above anything it served before as long as it published at most once a second
    on average (docs/cvmfs-format.md, "Revisions"); clients then accept the new manifest."""
    clock = Clock(2_000_000_000)
    repo = make_repo(tmp_path, clock)
    old = publish_one(repo, "a")
    old_timestamp = repo.manifest().timestamp
    shutil.rmtree(tmp_path / "data")
    clock.t += 10
    fresh = make_repo(tmp_path, clock)
    assert fresh.revision() > old
    assert fresh.manifest().timestamp >= old_timestamp


def test_init_twice_changes_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    publish_one(repo, "a")
    snapshot = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()
                and "private" not in p.parts}
    keys = {p: p.read_bytes() for p in (tmp_path / "keys").iterdir()}
    again = Repository(tmp_path / "data", tmp_path / "keys", repo.config)
    assert again.init() is False
    assert {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()
            and "private" not in p.parts} == snapshot
    assert {p: p.read_bytes() for p in (tmp_path / "keys").iterdir()} == keys


# -- transactions ------------------------------------------------------------------------------

def test_abandoned_transaction_leaves_the_published_revision_untouched(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    publish_one(repo, "a")
    manifest = repo.manifest_bytes()
    tx = repo.begin()
    tx.add_file("b/big", os.urandom(100_000))
    tx.remove("a")
    tx.abort()
    assert repo.manifest_bytes() == manifest
    assert [a.name for a in repo.artifacts()] == ["a"]
    assert not list((repo.private_dir / "staging").iterdir()), "no in-flight marker left"


def test_group_commit_publishes_many_transactions_in_one_revision(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    txs = []
    for i in range(5):
        tx = repo.begin()
        tx.add_file(f"art{i}/f.txt", b"%d" % i)
        txs.append(tx)
    clash = repo.begin()
    clash.add_file("art0/other.txt", b"?")
    clash.require_absent.add("art0")
    before = repo.revision()
    result = repo.publish(*txs, clash)
    assert result.revision > before
    assert sorted(result.changed) == [f"art{i}" for i in range(5)]
    assert isinstance(result.error_for(clash), ArtifactExists)
    assert len(repo.revisions()) == 2


def test_identical_content_refreshes_ttl_without_a_new_revision(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    tx = repo.begin()
    tx.add_file("a/f", b"same")
    tx.set_expiry("a", 1000.0)
    first = tx.publish()
    objects = object_files(repo)
    tx = repo.begin()
    tx.remove("a")
    tx.add_file("a/f", b"same", mtime=12345)
    tx.set_expiry("a", 5000.0)
    again = tx.publish()
    assert not again.new_revision and again.refreshed == ["a"]
    assert again.revision == first.revision
    assert repo.artifact("a").expires_at == 5000.0
    assert object_files(repo) == objects


def test_missing_paths_and_names_give_clear_errors(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    tx = repo.begin()
    tx.remove("nothing-here")
    with pytest.raises(ArtifactNotFound, match="nothing-here not found"):
        tx.publish()
    tx = repo.begin()
    tx.add_file("a/f", b"1")
    tx.add_file("a/f/g", b"2")
    with pytest.raises(InvalidPath, match="a/f is not a directory"):
        tx.publish()


@pytest.mark.parametrize("path, message", [
    ("../escape", "invalid artifact name '..'"),
    ("/etc/passwd", "absolute paths are not allowed"),
    ("a/../../b", "invalid path component '..'"),
    ("a/./b", "invalid path component '.'"),
    ("nul\0name/f", "control characters"),
    ("tab\tname/f", "control characters"),
    (".cvmfscatalog", "reserved"),
    (".cvmfspublished", "reserved"),
    ("a/.cvmfscatalog", "reserved"),
    ("x" * 256 + "/f", "longer than 255 bytes"),
    ("", "empty path"),
])
def test_bad_paths_are_refused_before_anything_is_written(tmp_path: Path, path: str,
                                                         message: str) -> None:
    repo = make_repo(tmp_path)
    objects, manifest = object_files(repo), repo.manifest_bytes()
    tx = repo.begin()
    with pytest.raises(InvalidPath, match=message):
        tx.add_file(path, b"data that must not be stored")
    tx.abort()
    assert object_files(repo) == objects and repo.manifest_bytes() == manifest


def test_invalid_fqrn_is_refused() -> None:
    for bad in ("nodot", "UPPER.case", "a..b", "-a.b", "a.b/c", ""):
        with pytest.raises(ValueError, match="invalid repository name"):
            RepositoryConfig(fqrn=bad)


# -- one writer ---------------------------------------------------------------------------------

LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from runtime.repository import Repository
    from runtime.settings import RepositoryConfig
    repo = Repository(Path({data!r}), Path({keys!r}), RepositoryConfig(fqrn="rev.example.org"))
    with repo.writer_lock():
        print("locked", flush=True)
        time.sleep(30)
""")


def test_second_writer_gets_a_clear_error_and_nothing_is_corrupted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    repo.lock_timeout = 0.3
    code = LOCK_HOLDER.format(root=str(REPO_ROOT), data=str(tmp_path / "data"),
                              keys=str(tmp_path / "keys"))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        tx = repo.begin()
        tx.add_file("a/f", b"1")
        with pytest.raises(RepositoryLocked, match=rf"locked by another writer \(pid {holder.pid}\)"):
            tx.publish()
    finally:
        holder.kill()
        holder.wait()
    # the kill released the flock; the next writer proceeds
    publish_one(repo, "a")
    assert [a.name for a in repo.artifacts()] == ["a"]


# -- crash safety -------------------------------------------------------------------------------

def test_pending_revision_is_rolled_forward_after_a_crash(tmp_path: Path) -> None:
    """State committed, manifest not yet renamed: the next open finishes the publish."""
    with served_repository(tmp_path) as served:
        repo = served.repo
        publish_one(repo, "a")
        previous = repo.manifest_bytes()
        publish_one(repo, "b")
        latest = repo.manifest_bytes()
        # reproduce the crash window: the rename of .cvmfspublished never happened
        (repo.public_dir / ".cvmfspublished").write_bytes(previous)
        with sqlite3.connect(repo.state_path) as db:
            db.execute("UPDATE revisions SET state='pending' WHERE revision="
                       "(SELECT MAX(revision) FROM revisions)")
        reopened = Repository(repo.data_dir, repo.keys_dir, repo.config)
        assert reopened.init() is False
        assert reopened.manifest_bytes() == latest
        reader = served.reader()
        reader.check()
        assert reader.listdir("") == ["a", "b"]


PUBLISHER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from runtime.repository import Repository
    from runtime.settings import RepositoryConfig
    repo = Repository(Path({data!r}), Path({keys!r}),
                      RepositoryConfig(fqrn="ci.example.org", chunk_size=65536))
    i = 0
    while True:
        tx = repo.begin()
        tx.add_file(f"art{{i % 7}}/blob", os.urandom(200_000))
        tx.add_file(f"art{{i % 7}}/n", str(i).encode())
        tx.publish()
        print(i, flush=True)
        i += 1
""")


def test_kill_9_while_publishing_never_leaves_a_broken_repository(tmp_path: Path) -> None:
    import random

    rng = random.Random(4)
    with served_repository(tmp_path, chunk_size=65536) as served:
        code = PUBLISHER.format(root=str(REPO_ROOT), data=str(tmp_path / "data"),
                                keys=str(tmp_path / "keys"))
        for round_ in range(6):
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                    text=True)
            assert proc.stdout.readline() != "", "publisher started"
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            reopened = Repository(served.repo.data_dir, served.repo.keys_dir, served.repo.config)
            reopened.init()  # recovers a pending revision, if the kill hit that window
            reader = served.reader()
            reader.check()
            served_names = set(reader.listdir(""))
            assert served_names == {a.name for a in reopened.artifacts()}, round_
            for name in served_names:
                assert len(reader.read_file(f"{name}/blob")) == 200_000
