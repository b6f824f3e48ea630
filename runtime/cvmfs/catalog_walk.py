"""Walking a catalog's entries from its SQLite file, parents first, in constant memory.

:func:`runtime.cvmfs.catalog.read_catalog` loads a whole catalog (every row, every path) to
rebuild it; a directory download only needs its entries one after another, in an order a tar
can be written in (a directory before what it contains). Catalog rows do not store their paths,
only the MD5 of their own and of their parent's; so the walk goes down the tree by the catalog's
``idx_catalog_parent`` index, one open cursor per directory level, building each path from its
parent's: what it holds is the current path of directories (bounded by the path depth), never
the entry count.

The catalog is inflated from its object into a temp file rather than into memory (a 100k-entry
catalog is tens of MiB), opened read-only and immutable, and unlinked at once: the open handle
keeps it readable, and nothing is left behind whatever ends the walk (the process included).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

from .catalog import FLAG_CHUNKED, Entry, md5_pair, row_entry
from .chunking import Chunk

#: Bytes of compressed catalog inflated at a time.
INFLATE_BLOCK = 1024 * 1024

_COLUMNS = ("md5path_1, md5path_2, hardlinks, hash, size, mode, mtime, flags, name, symlink, "
            "uid, gid, xattr")
_CHILDREN = f"SELECT {_COLUMNS} FROM catalog WHERE parent_1 = ? AND parent_2 = ?"
_ROW = f"SELECT {_COLUMNS} FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?"
_CHUNKS = ("SELECT offset, size, hash FROM chunks WHERE md5path_1 = ? AND md5path_2 = ? "
           "ORDER BY offset")


def open_inflated(compressed_path: str | Path, tmp_dir: str | Path) -> sqlite3.Connection:
    """Inflate the zlib catalog object at ``compressed_path`` into a temp file of ``tmp_dir``
    and open it read-only. The connection may be used from any thread, one at a time."""
    fd, tmp = tempfile.mkstemp(prefix="catalog-walk.", dir=tmp_dir)
    try:
        inflater = zlib.decompressobj()
        with open(compressed_path, "rb") as src, os.fdopen(fd, "wb") as out:
            while block := src.read(INFLATE_BLOCK):
                while block:  # a catalog inflates ~10x: bound each output piece too
                    out.write(inflater.decompress(block, INFLATE_BLOCK))
                    block = inflater.unconsumed_tail
            out.write(inflater.flush())
        conn = sqlite3.connect(f"file:{tmp}?mode=ro&immutable=1", uri=True,
                               check_same_thread=False)
    finally:
        os.unlink(tmp)
    return conn


def _entry(path: str, row: tuple, conn: sqlite3.Connection) -> Entry:
    m1, m2, *columns = row  # hardlinks … flags, name, symlink … xattr
    chunks: tuple[Chunk, ...] = ()
    if columns[5] & FLAG_CHUNKED:
        chunks = tuple(Chunk(off, n, bytes(h)) for off, n, h in conn.execute(_CHUNKS, (m1, m2)))
    return row_entry(path, *columns[:6], *columns[7:], chunks=chunks)


def walk(conn: sqlite3.Connection, root_path: str,
         skip: frozenset[str] = frozenset()) -> Iterator[Entry]:
    """The entries of the catalog rooted at ``root_path`` (``/name``), depth first: the root,
    then each directory right before its contents. Paths in ``skip`` are left out."""
    key = md5_pair(root_path)
    row = conn.execute(_ROW, key).fetchone()
    if row is None:
        raise ValueError(f"catalog has no entry for its root {root_path!r}")
    yield _entry(root_path, row, conn)
    levels = [(root_path, key, conn.execute(_CHILDREN, key))]
    while levels:
        parent_path, parent_key, cursor = levels[-1]
        row = cursor.fetchone()
        if row is None:
            levels.pop()
            continue
        if (row[0], row[1]) == parent_key:
            continue  # never a child of itself
        path = f"{parent_path}/{row[8]}"
        if path in skip:
            continue
        entry = _entry(path, row, conn)
        yield entry
        if entry.is_dir:
            child = (row[0], row[1])
            levels.append((path, child, conn.execute(_CHILDREN, child)))


__all__ = ["open_inflated", "walk"]
