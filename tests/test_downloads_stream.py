"""A directory artifact downloads as a tar streamed from its nested catalog, in memory that
does not grow with its entries, with every entry of the uploaded tree, parents first."""

from __future__ import annotations

import io
import os
import tarfile
import tracemalloc

import httpx

from runtime.ingest import stage_archive
from runtime.server import downloads
from tests.live_server import live_server
from tests.uploadkit import FQRN, TOKEN, settings

ENTRIES = 100_000
DIRS = 100


def tree_tar(files: int, dirs: int) -> bytes:
    """``files`` small distinct files spread over ``dirs`` directories (one nested level more
    every 10), plus a symlink and an empty directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(files):
            data = b"%d\n" % i
            info = tarfile.TarInfo(f"d{i % dirs}/s{i % 10}/f{i}.txt")
            info.size, info.mtime = len(data), 1704067200
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("d0/link")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "s0/f0.txt", 1704067200
        tar.addfile(link)
        empty = tarfile.TarInfo("empty")
        empty.type, empty.mode, empty.mtime = tarfile.DIRTYPE, 0o755, 1704067200
        tar.addfile(empty)
    return buf.getvalue()


def check_tar(data: bytes | str, name: str, files: int, dirs: int) -> None:
    """The tar holds exactly the uploaded tree, each directory before what it contains."""
    seen: set[str] = set()
    regular = 0
    with tarfile.open(data if isinstance(data, str) else None, mode="r|",
                      fileobj=None if isinstance(data, str) else io.BytesIO(data)) as tar:
        for member in tar:
            parent = member.name.rpartition("/")[0]
            assert member.name == name or parent in seen, f"{member.name} before its parent"
            seen.add(member.name)
            if member.isfile():
                i = int(member.name.rsplit("/f", 1)[1].removesuffix(".txt"))
                assert member.name == f"{name}/d{i % dirs}/s{i % 10}/f{i}.txt"
                assert tar.extractfile(member).read() == b"%d\n" % i
                regular += 1
            elif member.issym():
                assert (member.name, member.linkname) == (f"{name}/d0/link", "s0/f0.txt")
    assert regular == files
    subdirs = {f"{name}/d{i % dirs}/s{i % 10}" for i in range(files)}
    assert seen == ({name, f"{name}/empty", f"{name}/d0/link"} | {f"{name}/d{d}" for d in
                    range(dirs)} | subdirs | {f"{name}/d{i % dirs}/s{i % 10}/f{i}.txt"
                                              for i in range(files)})


def test_a_100k_entry_directory_streams_in_constant_memory(repo, tmp_path):
    tx = repo.begin()
    stage_archive(tx, "many", io.BytesIO(tree_tar(ENTRIES, DIRS)))
    tx.publish()
    info = repo.artifact("many")
    out = tmp_path / "many.tar"
    tracemalloc.start()
    try:
        entries = downloads.artifact_entries(repo, "many", info.catalog_hash)
        with open(out, "wb") as fh:
            for piece in downloads.tar_pieces(repo, entries):
                fh.write(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ~4 MiB whatever the entry count; holding the tree, as the download did, peaked at
    # ~105 MiB for these 100k entries
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    check_tar(str(out), "many", ENTRIES, DIRS)
    assert os.listdir(repo.spill_dir) == [], "the inflated catalog is not left behind"


def test_the_download_route_streams_the_uploaded_tree(tmp_path):
    files = 3_000
    with live_server(settings(tmp_path)) as srv:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.put(f"{srv.url}/repos/{FQRN}/team-tree", params={"unpack": "true"},
                      content=tree_tar(files, 30), headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        r = httpx.get(f"{srv.url}/repos/{FQRN}/team-tree", timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
        check_tar(r.content, "team-tree", files, 30)


def test_the_entry_budget_no_longer_refuses_a_large_tree(tmp_path):
    """``CVMFS_EPHEMERAL_MAX_DOWNLOAD_ENTRIES`` is accepted but bounds nothing any more: two
    downloads of a tree larger than it run at once."""
    files = 500
    with live_server(settings(tmp_path, max_download_entries=10, max_downloads_per_client=2,
                              max_downloads=2)) as srv:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.put(f"{srv.url}/repos/{FQRN}/t", params={"unpack": "true"},
                      content=tree_tar(files, 5), headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        with httpx.Client(timeout=60) as c, \
                c.stream("GET", f"{srv.url}/repos/{FQRN}/t") as first:
            assert first.status_code == 200
            second = c.get(f"{srv.url}/repos/{FQRN}/t")
            assert second.status_code == 200
            check_tar(second.content, "t", files, 5)
            check_tar(first.read(), "t", files, 5)
