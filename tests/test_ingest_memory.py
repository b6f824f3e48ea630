"""What unpacking keeps per archive member: nothing once it is staged.

A million-file archive must unpack in bounded memory (the transaction spills its entries to
disk), so the archive path may not keep per-member state either: these tests stage many empty
files and bound the Python heap's peak by a constant, and check that a hard link still finds
a target staged long before (now read back from the transaction's spill file).
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc

from runtime.ingest import stage_archive
from tests.ingestkit import _raw_header, empty_files_tar


def test_staging_many_members_keeps_no_state_per_member(repo):
    entries = 100_000
    data = b"".join(empty_files_tar(entries))
    tx = repo.begin()
    tracemalloc.start()
    try:
        stats = stage_archive(tx, "many", io.BytesIO(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        tx.abort()
    assert stats.files == entries
    # the transaction's in-memory entries before it spills (~16 MiB) plus batches in flight;
    # keeping ~600 bytes per member, as the unpacker did, would add ~60 MiB here
    assert peak < 40 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_hard_link_finds_a_target_staged_long_before(repo):
    first = b"the first file\n"
    head = _raw_header("d/first.txt", tarfile.REGTYPE, len(first))
    pad = bytes(-len(first) % 512)
    filler = b"".join(empty_files_tar(40_000))[:-1024]  # past the transaction's spill point
    link = tarfile.TarInfo("d/link.txt")
    link.type, link.linkname, link.mtime = tarfile.LNKTYPE, "d/first.txt", 1704067200
    tail = link.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict") + bytes(1024)
    tx = repo.begin()
    stats = stage_archive(tx, "art", io.BytesIO(head + first + pad + filler + tail))
    tx.publish()
    assert (stats.files, stats.hardlinks) == (40_001, 1)
    tree = repo.artifact_tree("art")
    a, b = tree["/art/d/first.txt"], tree["/art/d/link.txt"]
    assert a.size == len(first) and a.digest is not None
    assert (b.size, b.digest, b.compressed) == (a.size, a.digest, a.compressed)
