"""Parallel uploads and group commit."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.cvmfs_reader import RepoReader
from tests.live_server import live_server
from tests.uploadkit import FQRN, auth, leftovers, settings


@pytest.fixture
def srv(tmp_path):
    with live_server(settings(tmp_path)) as server:
        yield server


def _upload(url: str, name: str, data: bytes) -> httpx.Response:
    return httpx.put(f"{url}/repos/{FQRN}/{name}", content=data, headers=auth(), timeout=120)


def test_eight_concurrent_uploads_all_in_final_revision(srv):
    payloads = {f"art{i}": os.urandom(200_000 + i) for i in range(8)}
    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(payloads, pool.map(lambda kv: _upload(srv.url, *kv),
                                              payloads.items())))
    assert all(r.status_code == 200 for r in results.values()), \
        [r.text for r in results.values()]
    repo = srv.repositories[FQRN]
    pub = (srv.settings.keys_dir / f"{FQRN}.pub").read_bytes()
    with RepoReader(f"{srv.url}/cvmfs/{FQRN}", FQRN, pub) as reader:
        assert reader.revision == repo.revision()
        for name, data in payloads.items():
            assert reader.read_file(f"/{name}") == data
    assert leftovers(repo) == []


def test_uploads_finishing_together_share_one_revision(srv):
    """Deterministic group commit: while the writer lock is held elsewhere, the first commit
    waits and the other uploads queue; releasing the lock publishes 8 uploads in 2 revisions."""
    repo = srv.repositories[FQRN]
    committer = srv.app.state.uploads.committers[FQRN]
    revisions_before = len(repo.revisions())
    taken = len(committer.batches)
    lock = repo.writer_lock()
    lock.__enter__()
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_upload, srv.url, f"g{i}", b"group %d" % i) for i in range(8)]
            deadline = time.monotonic() + 30
            while (committer.queued + sum(committer.batches[taken:]) < 8
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            # the first commit (1 or a few transactions) waits for the lock, the rest queue
            assert len(committer.batches[taken:]) == 1 and committer.queued >= 1
            assert not any(f.done() for f in futures)  # nobody answered before publishing
            lock.__exit__(None, None, None)
            lock = None
            responses = [f.result() for f in futures]
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    assert [r.status_code for r in responses] == [200] * 8
    assert len(committer.batches[taken:]) == 2 and sum(committer.batches[taken:]) == 8
    assert len(repo.revisions()) - revisions_before == 2
    assert len({r.json()["revision"] for r in responses}) == 2
    assert sorted(a.name for a in repo.artifacts()) == [f"g{i}" for i in range(8)]


def test_refused_transaction_in_a_group_does_not_block_the_others(srv):
    """Two uploads of the same new name in one group: one wins, the other gets 409."""
    repo = srv.repositories[FQRN]
    committer = srv.app.state.uploads.committers[FQRN]
    taken = len(committer.batches)
    lock = repo.writer_lock()
    lock.__enter__()
    released = False
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_upload, srv.url, "same", b"v%d" % i) for i in range(3)]
            futures.append(pool.submit(_upload, srv.url, "other", b"o"))
            deadline = time.monotonic() + 30
            while (committer.queued + sum(committer.batches[taken:]) < 4
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            lock.__exit__(None, None, None)
            released = True
            codes = sorted(f.result().status_code for f in futures)
    finally:
        if not released:
            lock.__exit__(None, None, None)
    assert codes == [200, 200, 409, 409]
    assert sorted(a.name for a in repo.artifacts()) == ["other", "same"]
