"""Publishing a local tree of small files: each file is read with one open/read/close, at
the size the walk saw, and a file that changed between the walk and its read is never taken
for something it is not."""

from __future__ import annotations

import hashlib
import os

import pytest

from runtime.cvmfs.batches import read_small_file, store_files
from runtime.cvmfs.objects import ObjectStore
from tests.served import served_repository


def test_a_file_is_read_whole_at_the_size_seen(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    assert read_small_file(str(path), 3000, limit=4096) == b"abc" * 1000


def test_a_file_that_grew_since_the_walk_is_read_to_its_end(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3000)
    assert read_small_file(str(path), 10, limit=4096) == b"x" * 3000


def test_a_file_that_shrank_since_the_walk_is_read_as_it_is_now(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"short")
    assert read_small_file(str(path), 4000, limit=4096) == b"short"


def test_a_file_that_grew_past_one_chunk_is_refused(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"y" * 5000)
    with pytest.raises(ValueError, match="grew"):
        read_small_file(str(path), 100, limit=4096)


def test_a_file_replaced_by_a_symlink_is_not_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for publishing")
    link = tmp_path / "f"
    link.symlink_to(secret)
    with pytest.raises(OSError):
        read_small_file(str(link), 18, limit=4096)


@pytest.mark.parametrize("compressed", [False, True])
def test_stored_files_are_named_by_what_is_served(tmp_path, compressed):
    store = ObjectStore(tmp_path / "repo")
    store.create_skeleton()
    files = []
    for i, size in enumerate([0, 1, 1024, 4096]):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(size))
        files.append((str(p), size))
    stored = store_files(store, compressed, files, limit=4096)
    for (path, size), (hex_, stored_size, got_size) in zip(files, stored):
        served = store.read(hex_)
        assert hashlib.sha1(served).hexdigest() == hex_
        assert len(served) == stored_size and got_size == size
        expected = open(path, "rb").read()
        assert (store.read_inflated(hex_) if compressed else served) == expected


def test_a_published_tree_of_small_files_reads_back_through_a_client(tmp_path):
    src = tmp_path / "src"
    want = {}
    for i in range(300):
        d = src / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        data = os.urandom(1 + i * 13)
        (d / f"f{i:03d}").write_bytes(data)
        want[f"/many/d{i % 7}/f{i:03d}"] = data
    with served_repository(tmp_path, compression="none") as served:
        with served.repo.begin() as tx:
            tx.add_tree(src, "many")
            tx.publish()
        reader = served.reader()
        reader.check()
        for path, data in want.items():
            assert reader.read_file(path) == data
