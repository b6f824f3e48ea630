"""File content compressed by the fast deflate (zlib-ng) is a standard zlib stream.

CVMFS clients inflate objects with stock zlib (cvmfs/compression/compression.cc), so whatever
library compresses, the stream must inflate with stock zlib to exactly the input. The test
reader (tests/cvmfs_reader.py) inflates with Python's stock ``zlib`` like the client does, and
verifies each object's SHA-1 against the catalog, so every read below is a client-side check.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest

from runtime.cvmfs import deflate
from runtime.settings import RepositoryConfig
from tests.served import served_repository

CHUNK = 64 * 1024


def _mixed_corpus() -> bytes:
    """Real artifact-like bytes: this project's Python sources and the interpreter's shared
    libraries (text and machine code), as a CI build tarball holds."""
    root = Path(__file__).resolve().parents[1]
    text = b"".join(p.read_bytes() for p in sorted(root.glob("runtime/**/*.py")))
    libs = sorted(Path(os.__file__).parent.glob("lib-dynload/*.so"))[:40]
    binary = b"".join(p.read_bytes() for p in libs)
    return text + binary


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1], ids=["empty", "1-byte", "chunk",
                                                                 "chunk+1"])
def test_boundary_sizes_round_trip_byte_identically(tmp_path: Path, size: int) -> None:
    data = hashlib.sha256(b"seed").digest() * (size // 32 + 1)
    data = data[:size]
    with served_repository(tmp_path, compression="zlib", chunk_size=CHUNK) as served:
        tx = served.repo.begin()
        tx.add_file("a/blob", data)
        tx.publish()
        reader = served.reader()
        reader.check()
        assert reader.read_file("a/blob") == data
        assert reader.entry("a/blob").chunked == (size > CHUNK)


def test_every_level_is_a_stream_stock_zlib_inflates() -> None:
    data = _mixed_corpus()[: 2 << 20]
    for level in range(deflate.MIN_LEVEL, deflate.MAX_LEVEL + 1):
        assert zlib.decompress(deflate.compress(data, level)) == data


def test_default_level_stays_within_ten_percent_of_stock_zlib_size() -> None:
    data = _mixed_corpus()
    ours = sum(len(deflate.compress(data[i:i + (8 << 20)])) for i in range(0, len(data), 8 << 20))
    stock = sum(len(zlib.compress(data[i:i + (8 << 20)], 6))
                for i in range(0, len(data), 8 << 20))
    assert deflate.BACKEND == "zlib-ng", "the pinned zlib-ng wheel is installed"
    assert ours <= stock * 1.10, (ours, stock)


def test_stock_zlib_fallback_produces_cvmfs_servers_bytes() -> None:
    data = b"fallback" * 1000
    assert deflate.compress(data, 6, backend=zlib) == zlib.compress(data, 6)


def test_compression_level_is_a_repository_setting(tmp_path: Path) -> None:
    data = _mixed_corpus()[: 1 << 20]
    names = {}
    for level in (1, 9):
        with served_repository(tmp_path / str(level), compression="zlib",
                               compression_level=level) as served:
            tx = served.repo.begin()
            tx.add_file("a/blob", data)
            tx.publish()
            reader = served.reader()
            assert reader.read_file("a/blob") == data
            names[level] = reader.entry("a/blob").hash
    assert names[1] != names[9], "the level reaches the compressor"
    with pytest.raises(ValueError):
        RepositoryConfig(fqrn="ci.example.org", compression_level=10)


@pytest.mark.parametrize("backend", [None, zlib], ids=["zlib-ng", "stock zlib"])
def test_a_chunk_compressed_as_the_pieces_it_arrived_in_has_the_same_name(backend) -> None:
    """Chunks are compressed from the network's pieces without joining them: the object name
    must still be that of the whole chunk, whatever the split (dedup across uploads)."""
    import random

    data = _mixed_corpus()[: 3 << 20] + os.urandom(1 << 20)
    rng = random.Random(15)
    whole = deflate.compress(data, 4, backend=backend)
    for _ in range(4):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 200)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        assert b"".join(deflate.compress_pieces(pieces, 4, backend=backend)) == whole
    assert b"".join(deflate.compress_pieces([], 4, backend=backend)) == deflate.compress(
        b"", 4, backend=backend)
