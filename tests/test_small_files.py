"""Publishing a local tree of small files: each file is read with one open/read/close, at
the size the walk saw, and a file that changed between the walk and its read is never taken
for something it is not."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from runtime.cvmfs.batches import read_small_file, store_files
from runtime.cvmfs.objects import ObjectStore
from runtime.repository import InvalidPath
from tests.served import served_repository


def test_a_file_is_read_whole_with_the_status_of_what_was_read(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    st, data = read_small_file(str(path), limit=4096)
    assert data == b"abc" * 1000
    assert stat.S_ISREG(st.st_mode) and st.st_size == 3000


def test_a_file_larger_than_the_limit_is_not_read(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"y" * 5000)
    st, data = read_small_file(str(path), limit=4096)
    assert data is None and st.st_size == 5000


def test_a_symlink_is_not_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for publishing")
    link = tmp_path / "f"
    link.symlink_to(secret)
    with pytest.raises(OSError):
        read_small_file(str(link), limit=4096)


def test_a_fifo_is_neither_read_nor_waited_on(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    st, data = read_small_file(str(fifo), limit=4096)  # would block without O_NONBLOCK
    assert data is None and stat.S_ISFIFO(st.st_mode)


@pytest.mark.parametrize("compressed", [False, True])
def test_stored_files_are_named_by_what_is_served(tmp_path, compressed):
    store = ObjectStore(tmp_path / "repo")
    store.create_skeleton()
    files = []
    for i, size in enumerate([0, 1, 1024, 4096]):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(size))
        files.append((str(p), size))
    stored = store_files(store, compressed, [p for p, _ in files], limit=4096)
    for (path, size), (st, hex_, stored_size, got_size) in zip(files, stored):
        assert st.st_size == size
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


def test_a_tree_mixing_small_large_and_linked_files_reads_back(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(3 * 65536 + 17)  # several chunks: streamed, not batched
    (src / "sub" / "big").write_bytes(big)
    (src / "small").write_bytes(b"small")
    (src / "link").symlink_to("sub/big")
    with served_repository(tmp_path, compression="zlib", chunk_size=65536) as served:
        with served.repo.begin() as tx:
            assert tx.add_tree(src, "mix") == 5
            tx.publish()
        reader = served.reader()
        reader.check()
        assert reader.read_file("/mix/sub/big") == big
        assert reader.read_file("/mix/small") == b"small"
        assert reader.walk()["/mix/link"].symlink == "sub/big"


def test_a_tree_holding_a_fifo_is_refused_and_nothing_is_published(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_bytes(b"fine")
    os.mkfifo(src / "pipe")
    with served_repository(tmp_path) as served:
        before = served.repo.manifest_bytes()
        with served.repo.begin() as tx:
            with pytest.raises(InvalidPath, match="special files"):
                tx.add_tree(src, "bad")
        assert served.repo.manifest_bytes() == before
