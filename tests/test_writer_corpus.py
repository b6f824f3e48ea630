"""A published tree reads back byte for byte through the independent client-side reader.

Each test publishes with :class:`runtime.repository.Repository`, serves the result over
loopback HTTP and reads it with ``tests.cvmfs_reader.RepoReader``, which verifies the whitelist,
manifest, certificate and every object hash, and runs the consistency rules of
``cvmfs_swissknife check`` (``check()``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.cvmfs_reader import compare_with_directory
from tests.served import object_files, served_repository

CHUNK = 64 * 1024


def make_corpus(root: Path) -> Path:
    """The issue's corpus: empty, small, multi-chunk, executable, symlinks, deep, odd names."""
    src = root / "src"
    src.mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    (src / "hello.txt").write_bytes(b"hello cvmfs\n")
    big = b"".join(hashlib.sha256(b"block %d" % i).digest() for i in range(CHUNK * 5 // 32 + 7))
    (src / "big.bin").write_bytes(big)  # 5 chunks plus a tail
    (src / "exactly-one-chunk.bin").write_bytes(os.urandom(CHUNK))
    (src / "exec.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "exec.sh").chmod(0o755)
    os.symlink("hello.txt", src / "link-rel")
    os.symlink("/cvmfs/other.example.org/x", src / "link-abs")
    deep = src.joinpath(*[f"level{i}" for i in range(20)])
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"deep\n")
    odd = src / "odd names"
    odd.mkdir()
    for name in ["with space.txt", "naïve ünïcödé.txt", "hash#1.txt", "100%.txt", "日本語"]:
        (odd / name).write_bytes(name.encode() + b"\n")
    (src / "emptydir").mkdir()
    return src


@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_corpus_reads_back_identically(tmp_path: Path, compression: str) -> None:
    src = make_corpus(tmp_path)
    with served_repository(tmp_path, compression=compression, chunk_size=CHUNK) as served:
        tx = served.repo.begin()
        tx.add_tree(src, "corpus")
        tx.publish()
        reader = served.reader()
        reader.check()
        assert compare_with_directory(reader, src, "corpus", mtimes=True, modes=True) == []
        big = reader.entry("corpus/big.bin")
        assert big.chunked and len(big.chunks) == 6
        assert [c.offset for c in big.chunks] == [i * CHUNK for i in range(6)]
        one = reader.entry("corpus/exactly-one-chunk.bin")
        assert not one.chunked, "a file of exactly one chunk is stored whole, never as 1 chunk"
        assert reader.entry("corpus/exec.sh").mode & 0o111
        assert reader.entry("corpus/link-abs").symlink == "/cvmfs/other.example.org/x"
        expected = "none" if compression == "none" else "zlib"
        assert reader.entry("corpus/hello.txt").compression == expected


def test_empty_file_objects_have_the_documented_names(tmp_path: Path) -> None:
    """docs/cvmfs-format.md, "Objects": e8ec3d88… for zlib (cvmfs_server's level 6), da39a3ee… for none.

    The zlib header records the level (RFC 1950 FLEVEL), so the name of compressed content
    follows ``compression_level``; at level 6 it is cvmfs_server's."""
    for compression, name in [("zlib", "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"),
                              ("none", "da39a3ee5e6b4b0d3255bfef95601890afd80709")]:
        with served_repository(tmp_path / compression, compression=compression,
                               compression_level=6) as served:
            tx = served.repo.begin()
            tx.add_file("a/empty", b"")
            tx.publish()
            assert served.reader().entry("a/empty").hash == name
            assert f"data/{name[:2]}/{name[2:]}" in object_files(served.repo)


def test_ten_thousand_small_files(tmp_path: Path) -> None:
    src = tmp_path / "many"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(1000):
            (src / f"d{d}" / f"f{f}.txt").write_bytes(b"%d/%d\n" % (d, f))
    with served_repository(tmp_path) as served:
        tx = served.repo.begin()
        assert tx.add_tree(src, "many") == 10_011
        tx.publish()
        reader = served.reader()
        reader.check()
        entries = reader.walk()
        files = [e for p, e in entries.items() if p.startswith("/many/") and e.type == "file"
                 and not e.hidden]
        assert len(files) == 10_000
        assert reader.read_file("many/d7/f123.txt") == b"7/123\n"


def test_publish_after_publish_keeps_previous_revision_readable(tmp_path: Path) -> None:
    with served_repository(tmp_path) as served:
        tx = served.repo.begin()
        tx.add_file("first/a.txt", b"first\n")
        r1 = tx.publish()
        tx = served.repo.begin()
        tx.add_file("second/b.txt", b"second\n")
        tx.remove("first/a.txt")
        tx.add_file("first/c.txt", b"c\n")
        r2 = tx.publish()
        assert r2.revision > r1.revision
        reader = served.reader()
        assert reader.revision == r2.revision
        reader.check()
        assert set(reader.listdir("first")) == {"c.txt"}
        old = reader.at_root(r1.root_hash)
        assert old.read_file("first/a.txt") == b"first\n"
        assert "second" not in old.listdir("")
        assert reader.previous_root() == r1.root_hash


def test_publishing_one_artifact_rewrites_only_its_catalog_and_the_root(tmp_path: Path) -> None:
    with served_repository(tmp_path) as served:
        tx = served.repo.begin()
        tx.add_tree(make_corpus(tmp_path / "a"), "a")
        tx.publish()
        for name in ("b", "c"):
            tx = served.repo.begin()
            tx.add_file(f"{name}/x.txt", name.encode())
            tx.publish()
        before = {a.name: a.catalog_hash for a in served.repo.artifacts()}
        objects_before = object_files(served.repo)
        tx = served.repo.begin()
        tx.add_file("b/y.txt", b"new\n")
        tx.publish()
        after = {a.name: a.catalog_hash for a in served.repo.artifacts()}
        assert after["a"] == before["a"] and after["c"] == before["c"]
        assert after["b"] != before["b"]
        new = object_files(served.repo) - objects_before
        assert sorted(p[-1] for p in new if p.endswith("C")) == ["C", "C"], new
        served.reader().check()


def test_removing_artifacts_and_paths(tmp_path: Path) -> None:
    with served_repository(tmp_path) as served:
        tx = served.repo.begin()
        tx.add_file("keep/sub/a.txt", b"a")
        tx.add_file("keep/sub/b.txt", b"b")
        tx.add_file("gone/x.txt", b"x")
        tx.add_file("toplevel.txt", b"top")
        tx.publish()
        tx = served.repo.begin()
        tx.remove("keep/sub/a.txt")
        tx.remove("gone")
        tx.remove("toplevel.txt")
        tx.publish()
        reader = served.reader()
        reader.check()
        assert reader.listdir("") == ["keep"]
        assert reader.listdir("keep/sub") == ["b.txt"]
        assert [a.name for a in served.repo.artifacts()] == ["keep"]


def test_top_level_file_and_symlink_artifacts_live_in_the_root_catalog(tmp_path: Path) -> None:
    with served_repository(tmp_path, chunk_size=CHUNK) as served:
        tx = served.repo.begin()
        tx.add_file("tool.bin", os.urandom(3 * CHUNK + 5), mode=0o755)
        tx.add_symlink("latest", "tool.bin")
        tx.publish()
        reader = served.reader()
        reader.check()
        assert len(reader.catalog_hashes()) == 1
        assert reader.entry("tool.bin").chunked
        assert reader.entry("latest").symlink == "tool.bin"
