"""Expiry sweep and garbage collection, judged by the independent reader over HTTP.

Time is a clock the test controls (``Repository.clock``): artifacts expire and revisions age
without sleeping. GC's object-age rule uses the filesystem's clock (mtimes); ``slack_s=0``
lets these tests collect objects written a moment ago.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from runtime.maintenance.clean import clean
from runtime.maintenance.gc import (TRASH_PREFIX, GcError, collect, default_grace_s,
                                    retention)
from runtime.repository import PublishResult, Repository
from tests.cvmfs_reader import object_path
from tests.served import Served, object_files, served_repository


class Clock:
    """A settable repository clock."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def publish(repo: Repository, name: str, files: dict[str, bytes],
            expires_at: float | None = None) -> PublishResult:
    tx = repo.begin()
    for rel, data in files.items():
        tx.add_file(f"{name}/{rel}", data)
    if expires_at is not None:
        tx.set_expiry(name, expires_at)
    return tx.publish()


def clocked(served: Served) -> Clock:
    clock = Clock(time.time())
    served.repo.clock = clock
    return clock


def read_everything(reader) -> dict[str, bytes]:
    """Every regular file of the reader's view, read and verified object by object."""
    return {path: reader.read_file(path) for path, e in reader.walk().items()
            if e.type == "file" and not e.hidden}


def file_object(repo: Repository, artifact: str, rel: str) -> str:
    """``data/..`` path of a published file's (uncompressed, unchunked) object."""
    entry = repo.artifact_tree(artifact)[f"/{artifact}/{rel}"]
    return object_path(entry.digest.hex())


# -- clean ---------------------------------------------------------------------------------------


def test_clean_removes_every_expired_artifact_in_one_revision_and_notifies_once(tmp_path):
    with served_repository(tmp_path) as s:
        repo, clock = s.repo, clocked(s)
        t0 = clock.t
        for name, exp in (("a", t0 + 100), ("b", t0 + 100), ("c", t0 + 1000), ("d", None)):
            publish(repo, name, {"f.txt": f"content of {name}".encode()}, exp)
        notified: list[PublishResult] = []
        repo.listeners.append(notified.append)
        before = repo.revision()

        clock.t = t0 + 200
        result = clean(repo)

        assert result.removed == ["a", "b"] and result.expired == 2 and result.new_revision
        assert result.revision == repo.revision() > before
        assert [n.removed for n in notified] == [["a", "b"]]
        reader = s.reader()
        assert reader.revision == result.revision
        assert reader.listdir("") == ["c", "d"]
        assert read_everything(reader) == {"/c/f.txt": b"content of c", "/d/f.txt": b"content of d"}
        reader.check()

        again = clean(repo)  # nothing expired: no revision, no notification
        assert again.removed == [] and not again.new_revision
        assert repo.revision() == result.revision and len(notified) == 1


def test_sweep_spares_an_artifact_given_a_new_ttl_while_it_runs(tmp_path):
    """Expiry is decided at commit time: a TTL extended after the sweep staged still counts."""
    with served_repository(tmp_path) as s:
        repo, clock = s.repo, clocked(s)
        publish(repo, "keep", {"f": b"1"}, clock.t + 10)
        publish(repo, "gone", {"f": b"2"}, clock.t + 10)
        clock.t += 20
        sweep = repo.begin()
        sweep.remove_expired(clock.t)
        extend = repo.begin()  # e.g. the same artifact re-uploaded with a fresh TTL
        extend.set_expiry("keep", clock.t + 3600)
        extend.publish()
        result = repo.publish(sweep)
        assert result.removed == ["gone"] and result.error_for(sweep) is None
        assert [a.name for a in repo.artifacts()] == ["keep"]


# -- gc ------------------------------------------------------------------------------------------


def test_expired_objects_are_collected_after_grace_and_shared_ones_stay(tmp_path):
    with served_repository(tmp_path) as s:
        repo, clock = s.repo, clocked(s)
        t0 = clock.t
        publish(repo, "old", {"shared.txt": b"shared bytes", "unique.txt": b"only in old"},
                t0 + 60)
        publish(repo, "live", {"shared.txt": b"shared bytes", "own.txt": b"only in live"})
        unique = file_object(repo, "old", "unique.txt")
        shared = file_object(repo, "live", "shared.txt")
        old_catalog = object_path(repo.artifact("old").catalog_hash, "C")
        old_root = repo.manifest().root_hash

        clock.t = t0 + 100
        swept = clean(repo)
        assert swept.removed == ["old"]
        grace = default_grace_s(repo)
        assert grace == 2 * repo.config.ttl_s + 300

        # within the grace period the revision the sweep superseded keeps every object; only
        # the roots of the two revisions superseded at t0 (init, "old" alone) are collected
        clock.t = t0 + 100 + grace - 1
        within = collect(repo, slack_s=0)
        assert within.pruned_revisions == 2 and within.objects_deleted == 2
        assert {unique, shared, old_catalog, object_path(old_root, "C")} <= object_files(repo)

        # after it, exactly what the current revision references is left
        clock.t = t0 + 100 + grace + 1
        after = collect(repo, slack_s=0)
        assert unique not in object_files(repo) and old_catalog not in object_files(repo)
        assert shared in object_files(repo)
        reader = s.reader()
        assert object_files(repo) == reader.referenced_objects()
        assert after.objects_deleted >= 3 and after.bytes_freed > 0
        assert read_everything(reader) == {"/live/own.txt": b"only in live",
                                           "/live/shared.txt": b"shared bytes"}
        reader.check()
        # the previous_revision chain now ends at a missing root, which pull skips with G=yes
        assert reader.manifest["G"] == "yes"
        assert reader.previous_root() == old_root
        assert reader.head(object_path(old_root, "C")) == 404


def test_a_reader_on_an_older_revision_within_grace_reads_every_file(tmp_path):
    with served_repository(tmp_path) as s:
        repo, clock = s.repo, clocked(s)
        t0 = clock.t
        for i in range(3):
            publish(repo, f"art{i}", {"a.bin": os.urandom(2000), "b.txt": f"{i}".encode()},
                    t0 + 50)
        publish(repo, "stays", {"x": b"x"})
        old = s.reader()  # a client that mounted this revision
        old_files = read_everything(old)
        old.close()

        clock.t = t0 + 60
        assert len(clean(repo).removed) == 3
        clock.t += default_grace_s(repo) - 5
        collect(repo, slack_s=0)

        reader = s.reader()
        assert reader.listdir("") == ["stays"]
        view = reader.at_root(old.root_catalog_hash)
        assert read_everything(view) == old_files
        assert all(reader.head(p) == 200 for p in view.referenced_objects())


def test_objects_of_an_upload_in_flight_are_kept(tmp_path):
    """An upload that has been streaming for an hour: its objects are older than gc's start but
    younger than the transaction, so gc keeps them; once the upload is gone, they go."""
    with served_repository(tmp_path) as s:
        repo = s.repo
        tx = repo.begin()
        tx.add_file("slow/part", b"staged an hour ago")
        staged = object_path(hashlib.sha1(b"staged an hour ago").hexdigest())
        hour_ago = time.time() - 3600
        # the marker records when the transaction began; its heartbeat keeps it fresh
        marker = repo.private_dir / "staging" / tx.id
        pid, process_start, _began = marker.read_text().split()
        marker.write_text(f"{pid} {process_start} {hour_ago!r}\n")
        os.utime(repo.public_dir / staged, (hour_ago + 1, hour_ago + 1))

        kept = collect(repo, slack_s=0)
        assert kept.objects_deleted == 0 and kept.unreferenced_kept_young == 1
        tx.publish()
        assert read_everything(s.reader()) == {"/slow/part": b"staged an hour ago"}

        aborted = repo.begin()
        aborted.add_file("never/published", b"aborted upload")
        aborted.abort()
        orphan = object_path(hashlib.sha1(b"aborted upload").hexdigest())
        os.utime(repo.public_dir / orphan, (hour_ago, hour_ago))
        gone = collect(repo, slack_s=0)
        assert gone.objects_deleted == 1 and orphan not in object_files(repo)
        assert read_everything(s.reader()) == {"/slow/part": b"staged an hour ago"}


def test_gc_finishes_an_interrupted_sweep_and_removes_stale_temp_files(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        publish(repo, "a", {"f": b"payload a"})
        obj = file_object(repo, "a", "f")
        hex_ = obj.replace("data/", "").replace("/", "")
        txn = repo.store.txn
        now_ns = time.time_ns()
        # a gc killed between its rename and its check, after a put() refreshed the object:
        # the trash file is newer than the cutoff in its name, so it goes back
        refreshed = txn / f"{TRASH_PREFIX}{now_ns - 10**9}.{hex_}"
        (repo.public_dir / obj).rename(refreshed)
        os.utime(refreshed, ns=(now_ns, now_ns))
        # the same for an object nobody touched: it is deleted
        orphan = repo.store.put(b"orphan")
        hour_ago = time.time() - 3600
        old_trash = txn / f"{TRASH_PREFIX}{now_ns - 10**9}.{orphan.hex}"
        repo.store.path(orphan.hex).rename(old_trash)
        os.utime(old_trash, (hour_ago, hour_ago))
        # a temp file of a writer killed an hour ago, and one being written now
        stale, fresh = txn / "123.456.7", txn / "123.456.8"
        stale.write_bytes(b"partial")
        os.utime(stale, (hour_ago, hour_ago))
        fresh.write_bytes(b"in progress")

        result = collect(repo, slack_s=0)
        assert result.trash_restored == 1
        assert not list(txn.glob(f"{TRASH_PREFIX}*"))
        assert not stale.exists() and fresh.exists() and result.temp_files_removed == 1
        assert read_everything(s.reader()) == {"/a/f": b"payload a"}
        s.reader().check()


def test_gc_prunes_revisions_outside_retention(tmp_path):
    with served_repository(tmp_path) as s:
        repo, clock = s.repo, clocked(s)
        for i in range(5):
            clock.t += 1000
            publish(repo, f"a{i}", {"f": f"{i}".encode()})
        assert len(repo.revisions()) == 6  # init + 5
        clock.t += 10_000
        result = collect(repo, grace_s=1500, slack_s=0)
        # every revision but the newest was superseded 10000 s or more ago
        assert result.retained_revisions == 1 and result.pruned_revisions == 5
        assert [r["revision"] for r in repo.revisions()] == [repo.revision()]
        reader = s.reader()
        assert object_files(repo) == reader.referenced_objects()
        reader.check()


def test_retention_counts_from_when_a_revision_was_superseded():
    rows = [{"revision": 3, "published_at": 1000.0}, {"revision": 2, "published_at": 990.0},
            {"revision": 1, "published_at": 10.0}]
    # revision 1 is ancient but was current until 990: still retained at 1000 with grace 100
    kept, dropped = retention(rows, now=1000.0, grace_s=100)
    assert [r["revision"] for r in kept] == [3, 2, 1] and dropped == []
    kept, dropped = retention(rows, now=1095.0, grace_s=100)
    assert [r["revision"] for r in kept] == [3, 2] and [r["revision"] for r in dropped] == [1]
    kept, dropped = retention(rows, now=5000.0, grace_s=100)
    assert [r["revision"] for r in kept] == [3]


def test_a_repository_that_is_not_garbage_collectable_keeps_every_revision(tmp_path):
    with served_repository(tmp_path, garbage_collectable=False) as s:
        repo, clock = s.repo, clocked(s)
        publish(repo, "a", {"f": b"first"}, clock.t + 1)
        first_root = repo.manifest().root_hash
        clock.t += 10
        clean(repo)
        clock.t += 10**6
        result = collect(repo, slack_s=0)
        assert result.pruned_revisions == 0 and result.objects_deleted == 0
        reader = s.reader()
        assert reader.manifest["G"] == "no"
        assert read_everything(reader.at_root(first_root)) == {"/a/f": b"first"}


def test_an_unreadable_retained_catalog_stops_gc_before_it_deletes_anything(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        publish(repo, "a", {"f": b"a"})
        orphan = repo.store.put(b"would be garbage")
        catalog = repo.store.path(repo.artifact("a").catalog_hash, "C")
        catalog.chmod(0o644)
        catalog.write_bytes(b"not zlib")
        with pytest.raises(GcError, match="unreadable"):
            collect(repo, slack_s=0)
        assert repo.store.exists(orphan.hex)


def test_gc_cost_follows_retained_catalogs_not_history(tmp_path):
    """A nested catalog shared by every retained revision is read once per run."""
    with served_repository(tmp_path) as s:
        repo = s.repo
        publish(repo, "big", {f"f{i}": f"{i}".encode() for i in range(50)})
        for i in range(10):
            publish(repo, f"small{i}", {"f": f"{i}".encode()})
        result = collect(repo, slack_s=0)
        # 12 revisions retained (all within grace); catalogs: 12 roots + 11 nested, each once
        assert result.retained_revisions == 12
        assert result.catalogs_marked == 12 + 11


def test_an_object_refreshed_by_an_upload_while_gc_deletes_it_survives(tmp_path):
    """The check-then-delete race, step by step: gc listed an old unreferenced object, then an
    upload re-used it (``put`` refreshes its mtime) before gc's rename: gc puts it back."""
    from runtime.maintenance.gc import _condemn

    with served_repository(tmp_path) as s:
        store = s.repo.store
        obj = store.put(b"garbage about to be re-used")
        hour_ago = time.time() - 3600
        os.utime(store.path(obj.hex), (hour_ago, hour_ago))
        cutoff_ns = time.time_ns() - 10**9  # gc's cutoff: the object is older, so a candidate
        store.put(b"garbage about to be re-used")  # the upload dedups onto it
        assert _condemn(store, obj.hex, "", cutoff_ns) is None
        assert store.read(obj.hex) == b"garbage about to be re-used"
        assert not list(store.txn.glob(f"{TRASH_PREFIX}*"))
        # not refreshed: deleted, and a later put simply writes it again
        os.utime(store.path(obj.hex), (hour_ago, hour_ago))
        assert _condemn(store, obj.hex, "", cutoff_ns) == obj.stored_size
        assert not store.exists(obj.hex)
        store.put(b"garbage about to be re-used")
        assert store.exists(obj.hex)


def test_a_later_gc_reads_only_the_catalogs_that_are_new(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        for i in range(5):
            publish(repo, f"a{i}", {"f": f"{i}".encode()})
        first = collect(repo, slack_s=0)
        assert first.catalogs_read == first.catalogs_marked == 6 + 5  # 6 roots, 5 nested
        publish(repo, "new", {"f": b"new"})
        second = collect(repo, slack_s=0)
        assert second.catalogs_marked == 7 + 6
        # every retained root is read (roots are not cached), nested catalogs only when new
        assert second.catalogs_read == 7 + 1
        s.reader().check()


def test_a_damaged_catalog_cache_is_rebuilt_not_trusted(tmp_path):
    from runtime.maintenance.gc import CACHE_NAME

    with served_repository(tmp_path) as s:
        repo = s.repo
        publish(repo, "a", {"f": b"a"})
        collect(repo, slack_s=0)
        (repo.private_dir / CACHE_NAME).write_bytes(b"this is not an sqlite database" * 100)
        for suffix in ("-wal", "-shm"):
            (repo.private_dir / f"{CACHE_NAME}{suffix}").unlink(missing_ok=True)
        result = collect(repo, slack_s=0)
        assert result.catalogs_read == result.catalogs_marked
        assert read_everything(s.reader()) == {"/a/f": b"a"}
