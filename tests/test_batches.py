"""Small objects stored by the shared helper process: same objects as on threads, and a
helper that dies (killed, out of memory) fails no upload."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from runtime.cvmfs import batches
from runtime.cvmfs.batches import BatchWriter
from runtime.cvmfs.objects import ObjectStore

BLOBS = [b"first", b"", b"x" * 5000, bytes(range(256)) * 40]


@pytest.fixture
def threads():
    with ThreadPoolExecutor(2) as pool:
        yield pool


def store_in(root: Path) -> ObjectStore:
    store = ObjectStore(root)
    store.create_skeleton()
    return store


@pytest.mark.parametrize("compressed", [False, True])
def test_helper_and_threads_store_the_same_objects(tmp_path, threads, compressed):
    assert batches.start_helpers(), "the helper process must start on this machine"
    helper_store, thread_store = store_in(tmp_path / "h"), store_in(tmp_path / "t")
    via_helper = BatchWriter(helper_store, compressed, threads).submit(BLOBS, list).result(30)
    via_threads = BatchWriter(thread_store, compressed, threads,
                              use_helpers=False).submit(BLOBS, list).result(30)
    assert via_helper == via_threads
    for (hex_, size), data in zip(via_helper, BLOBS):
        path = helper_store.path(hex_)
        assert path.stat().st_size == size
        read = helper_store.read_inflated(hex_) if compressed else path.read_bytes()
        assert read == data


def test_a_killed_helper_fails_no_batch(tmp_path, threads):
    store = store_in(tmp_path)
    pids = batches.start_helpers()
    assert pids
    writer = BatchWriter(store, False, threads)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    stored = writer.submit([b"after the kill %d" % i for i in range(50)], list).result(30)
    assert len(stored) == 50 and all(store.path(h).stat().st_size == n for h, n in stored)
    # the next batch gets a new helper again
    writer.submit([b"later"], list).result(30)
    assert batches.start_helpers() and set(batches.helper_pids()).isdisjoint(pids)


def test_errors_in_the_helper_reach_the_caller(tmp_path, threads):
    store = store_in(tmp_path)
    (store.data / "ab").rmdir()
    (store.data / "ab").write_text("a file where a bucket directory should be")
    blob = next(b"n%d" % i for i in range(10_000)
                if hashlib.sha1(b"n%d" % i).hexdigest().startswith("ab"))
    with pytest.raises(OSError):
        BatchWriter(store, False, threads).submit([blob], list).result(30)


def test_at_least_two_helpers_share_the_object_creation(tmp_path, threads):
    """Creating object files is kernel time that one core alone cannot keep up with (ext4's
    inode search right after a deletion nearby): even on two cores, two helpers share it."""
    assert batches.start_helpers()
    store = store_in(tmp_path)
    writer = BatchWriter(store, False, threads)
    futures = [writer.submit([b"batch %d file %d" % (b, i) for i in range(100)], list)
               for b in range(8)]
    for fut in futures:
        stored = fut.result(30)
        assert len(stored) == 100 and all(store.path(h).stat().st_size == n for h, n in stored)
    assert len(batches.helper_pids()) >= 2 and os.getpid() not in batches.helper_pids()
