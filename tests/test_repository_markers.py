"""gc's cut-off waits only for staging markers that still count: markers of dead processes and
markers untouched for longer than the body idle timeout do not hold back gc, and a
transaction gc gave up on can never publish. Real repository, real processes, real gc."""

from __future__ import annotations

import gc as python_gc
import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pytest

from runtime.maintenance.gc import collect
from runtime.repository import Repository, TransactionAbandoned
from tests.cvmfs_reader import object_path
from tests.served import object_files, served_repository


def orphan_of_an_aborted_upload(repo: Repository, payload: bytes) -> str:
    tx = repo.begin()
    tx.add_file("never/published", payload)
    tx.abort()
    return object_path(hashlib.sha1(payload).hexdigest())


def reopen(repo: Repository, idle_s: float) -> Repository:
    return Repository(repo.data_dir, repo.keys_dir, repo.config, body_idle_timeout_s=idle_s)


def test_a_marker_of_a_killed_process_does_not_hold_back_gc(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        script = textwrap.dedent(f"""
            import os, signal
            from pathlib import Path
            from runtime.repository import Repository
            from runtime.settings import RepositoryConfig
            repo = Repository(Path({str(repo.data_dir)!r}), Path({str(repo.keys_dir)!r}),
                              RepositoryConfig(fqrn={repo.fqrn!r}))
            tx = repo.begin()
            tx.add_file("half/sent", b"staged by a process about to die")
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        killed = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
        assert killed.returncode == -9
        assert len(list(repo.staging_dir.iterdir())) == 1, "the dead process left its marker"
        time.sleep(0.05)
        orphan = orphan_of_an_aborted_upload(repo, b"aborted after the dead one began")
        time.sleep(0.1)  # older than gc's fence, younger than the dead transaction

        result = collect(repo, slack_s=0)
        assert orphan not in object_files(repo), result
        assert list(repo.staging_dir.iterdir()) == [], "gc removed the dead marker"


def test_a_leaked_transaction_stops_holding_back_gc_after_the_idle_timeout(tmp_path):
    with served_repository(tmp_path) as s:
        repo = reopen(s.repo, idle_s=1)
        leaked = repo.begin()
        leaked.add_file("stalled/part", b"staged, then never finished")
        del leaked  # dropped without abort or publish: nothing touches its marker any more
        python_gc.collect()
        time.sleep(0.05)
        orphan = orphan_of_an_aborted_upload(repo, b"aborted while the leaked one sat")

        held = collect(repo, slack_s=0)
        assert orphan in object_files(repo), "a fresh marker still counts"
        assert held.unreferenced_kept_young >= 1
        time.sleep(1.3)
        freed = collect(repo, slack_s=0)
        assert orphan not in object_files(repo), freed
        assert list(repo.staging_dir.iterdir()) == []


def test_an_open_transaction_keeps_counting_past_the_idle_timeout_and_publishes(tmp_path):
    """Its heartbeat keeps the marker fresh: a long upload is never given up on."""
    with served_repository(tmp_path) as s:
        repo = reopen(s.repo, idle_s=1)
        tx = repo.begin()
        tx.add_file("slow/part", b"a long upload")
        time.sleep(2.5)
        collect(repo, slack_s=0)
        assert object_path(hashlib.sha1(b"a long upload").hexdigest()) in object_files(repo)
        tx.publish()
        with s.reader() as reader:
            assert reader.read_file("/slow/part") == b"a long upload"


def test_a_transaction_gc_gave_up_on_cannot_publish(tmp_path):
    """A frozen process (here: its marker aged by hand past the timeout) comes back after gc
    removed its marker: its commit is refused and the repository is unchanged."""
    with served_repository(tmp_path) as s:
        repo = reopen(s.repo, idle_s=1)
        tx = repo.begin()
        tx.add_file("frozen/part", b"staged before the freeze")
        past = time.time() - 10
        os.utime(tx.marker.path, (past, past))
        collect(repo, slack_s=0)
        assert not tx.marker.path.exists(), "gc stopped counting (and removed) the marker"
        before = repo.manifest_bytes()
        with pytest.raises(TransactionAbandoned, match="nothing was published"):
            tx.publish()
        assert repo.manifest_bytes() == before
        assert [a.name for a in repo.artifacts()] == []


def test_a_marker_past_half_the_timeout_is_never_revived(tmp_path):
    with served_repository(tmp_path) as s:
        repo = reopen(s.repo, idle_s=2)
        tx = repo.begin()
        past = time.time() - 1.5
        os.utime(tx.marker.path, (past, past))
        time.sleep(0.6)  # several heartbeats
        assert tx.marker.path.stat().st_mtime == pytest.approx(past, abs=0.01)
        with pytest.raises(TransactionAbandoned):
            tx.publish()


def test_a_half_sent_put_stops_holding_back_gc_and_is_never_published(tmp_path):
    """Over loopback: a raw PUT stops sending. After the idle timeout, gc reclaims an orphan
    written after the PUT began; the upload fails (the HTTP body idle timeout answers 408 at the
    same moment the marker stops counting), nothing published."""
    import asyncio

    import httpx

    from tests.live_server import live_server
    from tests.uploadkit import OTHER, auth, leftovers, settings

    with live_server(settings(tmp_path, body_idle_timeout_s=2)) as srv:
        repo = srv.repositories[OTHER]  # stores content as is: the orphan's name is its SHA-1
        before = repo.manifest_bytes()

        async def stalled_put() -> httpx.Response:
            async with httpx.AsyncClient(base_url=srv.url, headers=auth(), timeout=60) as c:
                resumed = asyncio.Event()

                async def body():  # type: ignore[no-untyped-def]
                    yield b"a" * 100_000
                    await resumed.wait()
                    yield b"b" * 100_000

                put = asyncio.create_task(c.put(f"/repos/{OTHER}/stalled", content=body(),
                                                headers={"Content-Length": "200000"}))
                await asyncio.sleep(0.5)  # staging began
                orphan = orphan_of_an_aborted_upload(repo, b"aborted during the stall")
                await asyncio.sleep(0.2)
                held = await asyncio.to_thread(collect, repo, slack_s=0)
                assert orphan in object_files(repo), "at first the stalled PUT still counts"
                assert held.objects_deleted == 0
                await asyncio.sleep(3.5)  # past the idle timeout
                await asyncio.to_thread(collect, repo, slack_s=0)
                assert orphan not in object_files(repo), "the stalled PUT no longer counts"
                resumed.set()
                return await put

        answer = asyncio.run(stalled_put())
        assert answer.status_code == 408, answer.text
        assert "nothing was published" in answer.json()["detail"]
        assert repo.manifest_bytes() == before and repo.artifacts() == []
        assert leftovers(repo) == []


def test_an_empty_marker_left_by_an_old_full_disk_is_removed_once_idle(tmp_path):
    with served_repository(tmp_path) as s:
        repo = reopen(s.repo, idle_s=1)
        repo.staging_dir.mkdir(parents=True, exist_ok=True)
        empty = repo.staging_dir / "0123456789abcdef"
        empty.write_bytes(b"")
        assert repo.inflight_since() is None and empty.exists(), "young: left alone"
        past = time.time() - 5
        os.utime(empty, (past, past))
        assert repo.inflight_since() is None and not empty.exists()
