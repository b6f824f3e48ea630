"""Publishing a local tree of small files: each file is read with one open/read/close, at
the size the walk saw, and a file that changed between the walk and its read is never taken
for something it is not. Past HELPER_TREE_FILES files the helper processes store the rest
of the tree, exactly as the threads would."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import time

import pytest

from runtime.cvmfs import batches
from runtime.cvmfs.batches import read_small_file, store_files
from runtime.cvmfs.objects import ObjectStore
from runtime.repository import InvalidPath
from runtime.repository.transaction import HELPER_TREE_FILES
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


def _tree(src, files: int, seed: int = 0) -> dict[str, bytes]:
    """``files`` small files in 13 directories under ``src``: relative path -> bytes."""
    want = {}
    for i in range(files):
        d = src / f"d{i % 13}"
        d.mkdir(parents=True, exist_ok=True)
        data = b"%d.%d " % (seed, i) * (1 + i % 40)
        (d / f"f{i:05d}").write_bytes(data)
        want[f"d{i % 13}/f{i:05d}"] = data
    return want


def publish_and_check(served, src, name: str, want: dict[str, bytes], every: int):
    """Publish ``src`` as ``name``; the client-side check passes and every ``every``-th file
    reads back as written. Returns the reader."""
    with served.repo.begin() as tx:
        tx.add_tree(src, name)
        tx.publish()
    reader = served.reader()
    reader.check()
    for rel, data in list(want.items())[::every]:
        assert reader.read_file(f"/{name}/{rel}") == data
    return reader


@pytest.mark.parametrize("compressed", [False, True])
def test_the_helpers_store_a_tree_as_the_threads_would(tmp_path, compressed):
    """The helper processes read and store a tree's files (``submit_files``): the catalog
    and every object are the ones the threads alone make of the same tree."""
    src = tmp_path / "src"
    want = _tree(src, 3000)
    roots = {}
    for how in ("helpers", "threads"):
        with served_repository(tmp_path / how,
                               compression="zlib" if compressed else "none") as served:
            ingester = served.repo.ingester
            if how == "helpers":
                assert batches.start_helpers(), "the helpers must start on this machine"
                assert batches.helpers_ready()
            else:
                ingester.batches.use_helpers = False
            reader = publish_and_check(served, src, "big", want, every=97)
            roots[how] = {p: (e.hash, e.size, e.mode) for p, e in reader.walk().items()
                          if p.startswith("/big/")}
    assert roots["helpers"] == roots["threads"]
    assert len(roots["helpers"]) == len(want) + 13 + 1  # the directories and .cvmfscatalog


def test_a_large_tree_starts_the_helpers_and_a_small_one_does_not(tmp_path):
    batches.stop_helpers()
    small, large = tmp_path / "small", tmp_path / "large"
    _tree(small, HELPER_TREE_FILES - 1)
    _tree(large, HELPER_TREE_FILES + 1)
    with served_repository(tmp_path / "repo", compression="none") as served:
        with served.repo.begin() as tx:
            tx.add_tree(small, "small")
            tx.publish()
        time.sleep(0.5)
        assert not batches.helpers_ready() and not batches.helper_pids()
        with served.repo.begin() as tx:
            tx.add_tree(large, "large")
            tx.publish()
        deadline = time.monotonic() + 30
        while not batches.helpers_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert batches.helpers_ready() and batches.helper_pids()


def test_a_helper_killed_while_a_tree_is_stored_fails_nothing(tmp_path):
    src = tmp_path / "src"
    want = _tree(src, 6000, seed=1)
    pids = batches.start_helpers()
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    with served_repository(tmp_path, compression="none") as served:
        publish_and_check(served, src, "survivor", want, every=251)
