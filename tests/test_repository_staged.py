"""An artifact of many entries is staged on disk (a spill file) and its nested catalog written
straight into a file: the published catalog holds exactly the rows the in-memory path writes,
the spill file goes with its transaction, and gc removes those of dead processes."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

import runtime.repository.staged as staged_mod
from runtime.cvmfs.objects import CATALOG
from runtime.repository import ArtifactNotFound, InvalidPath, Repository
from runtime.settings import RepositoryConfig
from tests.served import served_repository

NOW = 1_790_000_000


def stage_big(repo: Repository) -> None:
    """~5,000 entries exercising every rule: implicit parents, overwrites, a file replacing a
    directory, removals, chunked files, symlinks, empty directories."""
    tx = repo.begin()
    tx.add_directory("big", mode=0o750, mtime=NOW - 5)
    content = repo.ingester.ingest(b"shared\n")
    for d in range(50):
        for f in range(100):
            tx.add_content(f"big/d{d:02d}/f{f:03d}", content, mtime=NOW - f)
    tx.add_file("big/chunked", bytes(range(256)) * 1024)  # 256 KiB: 4 chunks of 64 KiB
    tx.add_symlink("big/link", "d00/f000", mtime=NOW - 1)
    tx.add_directory("big/empty", mtime=NOW - 2)
    tx.add_content("big/d01/f001", repo.ingester.ingest(b"overwritten\n"), mtime=NOW - 3)
    tx.add_content("big/d02", content, mtime=NOW - 4)  # a file replaces directory d02
    tx.remove("big/d03/f003")
    tx.remove("big/d04")
    with pytest.raises(ArtifactNotFound):
        tx.remove("big/never-there")
    with pytest.raises(InvalidPath, match="not a directory"):
        tx.add_content("big/d02/below-a-file", content)
    tx.publish()


def catalog_rows(repo: Repository, name: str) -> dict[str, list]:
    art = repo.artifact(name)
    raw = zlib.decompress(repo.store.read(art.catalog_hash, CATALOG))
    conn = sqlite3.connect(":memory:")
    conn.deserialize(raw)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
                for table in ("catalog", "chunks", "statistics", "properties",
                              "nested_catalogs")}
    finally:
        conn.close()


def fixed_clock_repo(tmp: Path) -> Repository:
    repo = Repository(tmp / "data", tmp / "keys",
                      RepositoryConfig(fqrn="ci.example.org", chunk_size=65536),
                      clock=lambda: float(NOW))
    repo.init()
    return repo


@pytest.fixture
def spill_early(monkeypatch):  # type: ignore[no-untyped-def]
    """Spill after 1,000 entries, so that a test artifact of 5,000 is mostly on disk."""
    monkeypatch.setattr(staged_mod, "SPILL_ENTRIES", 1000)


def test_a_spilled_artifact_publishes_exactly_the_rows_of_the_in_memory_path(tmp_path,
                                                                             monkeypatch,
                                                                             spill_early):
    spill_at = staged_mod.SPILL_ENTRIES
    spilled = fixed_clock_repo(tmp_path / "spilled")
    stage_big(spilled)
    monkeypatch.setattr(staged_mod, "SPILL_ENTRIES", 10 ** 9)
    in_memory = fixed_clock_repo(tmp_path / "memory")
    stage_big(in_memory)
    try:
        a, b = catalog_rows(spilled, "big"), catalog_rows(in_memory, "big")
        assert len(a["catalog"]) > spill_at
        assert a == b
        assert spilled.artifact("big").content_digest == in_memory.artifact("big").content_digest
        assert spilled.artifact("big").files == in_memory.artifact("big").files
    finally:
        spilled.close()
        in_memory.close()


def test_a_spilled_artifact_reads_back_through_a_client(tmp_path, spill_early):
    with served_repository(tmp_path, chunk_size=65536) as s:
        stage_big(s.repo)
        with s.reader() as reader:
            assert reader.read_file("/big/d01/f001") == b"overwritten\n"
            assert reader.read_file("/big/d02") == b"shared\n"
            assert reader.read_file("/big/chunked") == bytes(range(256)) * 1024
            assert reader.entry("/big/link").symlink == "d00/f000"
            assert reader.listdir("/big/empty") == []
            walked = reader.walk()
            assert "/big/d03/f003" not in walked and "/big/d04" not in walked
            assert "/big/d03/f004" in walked
            reader.check()
        assert list(s.repo.spill_dir.iterdir()) == [], "the spill file went with the commit"


def test_an_identical_large_reupload_only_moves_the_expiry(tmp_path, spill_early):
    repo = fixed_clock_repo(tmp_path)
    try:
        stage_big(repo)
        revision = repo.revision()
        tx = repo.begin()
        tx.set_expiry("big", NOW + 60)
        stage_again = tx  # the same content, staged again by the same rules
        content = repo.ingester.ingest(b"shared\n")
        stage_again.add_directory("big", mode=0o750, mtime=NOW - 5)
        for d in range(50):
            for f in range(100):
                stage_again.add_content(f"big/d{d:02d}/f{f:03d}", content, mtime=NOW - f)
        stage_again.add_file("big/chunked", bytes(range(256)) * 1024)
        stage_again.add_symlink("big/link", "d00/f000", mtime=NOW - 1)
        stage_again.add_directory("big/empty", mtime=NOW - 2)
        stage_again.add_content("big/d01/f001", repo.ingester.ingest(b"overwritten\n"))
        stage_again.add_content("big/d02", content)
        stage_again.remove("big/d03/f003")
        stage_again.remove("big/d04")
        result = stage_again.publish()
        assert result.refreshed == ["big"] and not result.new_revision
        assert repo.revision() == revision and repo.artifact("big").expires_at == NOW + 60
    finally:
        repo.close()


def test_an_aborted_large_upload_leaves_no_spill_file(tmp_path, spill_early):
    repo = fixed_clock_repo(tmp_path)
    try:
        tx = repo.begin()
        content = repo.ingester.ingest(b"x")
        for i in range(staged_mod.SPILL_ENTRIES + 10):
            tx.add_content(f"big/f{i}", content)
        tx.add_directory("big")
        assert len(list(repo.spill_dir.iterdir())) == 1
        tx.abort()
        assert list(repo.spill_dir.iterdir()) == []
    finally:
        repo.close()


def test_gc_removes_the_spill_files_of_dead_processes(tmp_path):
    repo = fixed_clock_repo(tmp_path)
    try:
        repo.spill_dir.mkdir(parents=True, exist_ok=True)
        orphan = repo.spill_dir / "0123456789abcdef.0.db"
        orphan.write_bytes(b"left by a killed server")
        live = repo.begin()
        mine = repo.spill_dir / f"{live.id}.0.db"
        mine.write_bytes(b"")
        repo.inflight_since()  # what gc reads for its cut-off
        assert not orphan.exists() and mine.exists()
        live.abort()
    finally:
        repo.close()
