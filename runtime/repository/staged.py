"""The entries of an artifact a transaction replaces, kept on disk once there are many.

A transaction that stages an artifact's top-level entry replaces that artifact whole, so its
tree is known entirely at staging time and is built there, entry by entry, with the same rules
the commit applies to edits (implicit parent directories; a parent that is not a directory
refuses the entry; a non-directory replacing a directory removes what was below it).

Memory does not grow with the number of entries: the first ``SPILL_ENTRIES`` live in a dict
(a one-file artifact never touches the disk), after which every entry goes to a SQLite file of
the transaction's own (``private/<fqrn>/spill/<tx>.<n>.db``, removed with the transaction;
gc removes those of dead processes). The commit reads them back in path order, computing the
content digest and the counters as they stream, and writes the nested catalog straight into
its file (:func:`runtime.cvmfs.catalog.write_nested_catalog`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import struct
from pathlib import Path
from typing import Iterator

from ..cvmfs.catalog import Entry
from ..cvmfs.chunking import Chunk
from .errors import ArtifactNotFound, InvalidPath

#: Entries an artifact keeps in memory before it moves them to its spill file (about 16 MiB:
#: a 10,000-file tarball never touches the spill file, a million-entry one costs a file).
SPILL_ENTRIES = 32768
_CHUNK = struct.Struct("<QQ20s")

_SCHEMA = (
    "CREATE TABLE entries (path TEXT PRIMARY KEY, parent TEXT NOT NULL, is_dir INTEGER NOT NULL,"
    " mode INTEGER NOT NULL, mtime INTEGER NOT NULL, size INTEGER NOT NULL, digest BLOB,"
    " chunks BLOB, symlink TEXT NOT NULL, compressed INTEGER NOT NULL)",
    "CREATE INDEX entries_subdirs ON entries (parent) WHERE is_dir = 1",
)


def _parent(path: str) -> str:
    return path[:path.rfind("/")]


def _to_row(e: Entry) -> tuple:
    chunks = b"".join(_CHUNK.pack(c.offset, c.size, c.digest) for c in e.chunks) or None
    return (e.path, _parent(e.path), int(e.is_dir), e.mode, e.mtime, e.size, e.digest, chunks,
            e.symlink, int(e.compressed))


def _from_row(r: tuple) -> Entry:
    chunks = tuple(Chunk(o, s, d) for o, s, d in _CHUNK.iter_unpack(r[6])) if r[6] else ()
    return Entry(path=r[0], mode=r[1], mtime=r[2], size=r[3], digest=r[4], chunks=chunks,
                 symlink=r[5], compressed=bool(r[7]))


class StagedTree:
    """One replaced artifact's entries: full path -> entry, in memory or in a spill file."""

    def __init__(self, name: str, spill_path: Path):
        self.name = name
        self.top = "/" + name
        #: segments of the artifact's name: the implicit parents ``put`` creates start there
        self.depth = name.count("/") + 1
        self._spill_path = spill_path
        self._mem: dict[str, Entry] | None = {}
        self._db: sqlite3.Connection | None = None
        self._count = 0
        self._known_dir = ""  # the last parent found to be a directory (one lookup saved)

    def __len__(self) -> int:
        return self._count

    @property
    def spilled(self) -> bool:
        """The entries are in the spill file (more than ``SPILL_ENTRIES``)."""
        return self._db is not None

    # -- storage -------------------------------------------------------------------------
    def _get(self, path: str) -> Entry | None:
        if self._mem is not None:
            return self._mem.get(path)
        assert self._db is not None
        row = self._db.execute("SELECT path, mode, mtime, size, digest, symlink, chunks,"
                               " compressed FROM entries WHERE path=?", (path,)).fetchone()
        return _from_row(row) if row else None

    def _is_dir(self, path: str) -> bool | None:
        """True/False for a directory/other entry, None when absent."""
        if self._mem is not None:
            e = self._mem.get(path)
            return None if e is None else e.is_dir
        assert self._db is not None
        row = self._db.execute("SELECT is_dir FROM entries WHERE path=?", (path,)).fetchone()
        return None if row is None else bool(row[0])

    def _set(self, e: Entry, new: bool) -> None:
        if new:
            self._count += 1
        if self._mem is not None:
            self._mem[e.path] = e
            if self._count > SPILL_ENTRIES:
                self._spill()
            return
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)",
                         _to_row(e))

    def _delete_below(self, path: str, *, including: bool) -> None:
        prefix = path + "/"
        if self._mem is not None:
            doomed = [p for p in self._mem if p.startswith(prefix) or (including and p == path)]
            for p in doomed:
                del self._mem[p]
            self._count -= len(doomed)
            return
        assert self._db is not None
        # "/" + 1 == "0": every path below ``path`` sorts in [prefix, path + "0")
        before = self._db.total_changes
        self._db.execute("DELETE FROM entries WHERE path >= ? AND path < ?",
                         (prefix, path + "0"))
        if including:
            self._db.execute("DELETE FROM entries WHERE path = ?", (path,))
        self._count -= self._db.total_changes - before
        self._known_dir = ""

    def _spill(self) -> None:
        assert self._mem is not None
        self._spill_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._spill_path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-16384")  # 16 MiB of page cache, whatever the size
        for sql in _SCHEMA:
            db.execute(sql)
        db.execute("BEGIN")
        db.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (_to_row(e) for e in self._mem.values()))
        self._db, self._mem = db, None

    # -- the rules ---------------------------------------------------------------------
    def put(self, parts: tuple[str, ...] | list[str], entry: Entry, now: int) -> None:
        """Add ``entry`` (at the path ``parts`` name), as the commit would replay it."""
        path = entry.path
        parent = _parent(path)
        if parent and parent != self._known_dir:
            kind = self._is_dir(parent)
            if kind is None:
                for i in range(self.depth, len(parts)):
                    ancestor = "/" + "/".join(parts[:i])
                    found = self._is_dir(ancestor)
                    if found is None:
                        self._set(Entry(path=ancestor, mode=stat.S_IFDIR | 0o755, mtime=now),
                                  new=True)
                    elif not found:
                        raise InvalidPath(f"{ancestor.lstrip('/')} is not a directory")
            elif not kind:
                raise InvalidPath(f"{parent.lstrip('/')} is not a directory")
            self._known_dir = parent
        existing = self._is_dir(path)
        if existing and not entry.is_dir:
            self._delete_below(path, including=False)
        self._set(entry, new=existing is None)

    def remove(self, path: str) -> None:
        if path == self.top:
            self._delete_below(path, including=True)
            return
        if self._is_dir(path) is None:
            raise ArtifactNotFound(f"{path.lstrip('/')} not found in the staged artifact")
        self._delete_below(path, including=True)

    # -- reading back --------------------------------------------------------------------
    def top_entry(self) -> Entry | None:
        return self._get(self.top)

    def get(self, path: str) -> Entry | None:
        """The entry staged at the full catalog path ``path`` (``/name/...``), if any."""
        return self._get(path)

    def entries(self) -> Iterator[tuple[Entry, int]]:
        """``(entry, subdirectories)`` in path order (byte order of UTF-8 = code point order)."""
        if self._mem is not None:
            subdirs: dict[str, int] = {}
            for p, e in self._mem.items():
                if e.is_dir and p != self.top:
                    subdirs[_parent(p)] = subdirs.get(_parent(p), 0) + 1
            for p in sorted(self._mem):
                yield self._mem[p], subdirs.get(p, 0)
            return
        assert self._db is not None
        cur = self._db.execute(
            "SELECT path, mode, mtime, size, digest, symlink, chunks, compressed,"
            " CASE WHEN is_dir THEN (SELECT COUNT(*) FROM entries c"
            "   WHERE c.parent = e.path AND c.is_dir = 1) ELSE 0 END"
            " FROM entries e ORDER BY path")
        while True:
            rows = cur.fetchmany(1024)
            if not rows:
                return
            for r in rows:
                yield _from_row(r), r[8]

    def regular_bytes(self) -> int:
        """Bytes of the regular files staged (an artifact's size; quota checks at commit):
        one SQL sum once spilled, no entry decoded."""
        if self._mem is not None:
            return sum(e.size for e in self._mem.values() if e.is_regular)
        assert self._db is not None
        (total,) = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM entries WHERE (mode & ?) = ?",
            (0o170000, stat.S_IFREG)).fetchone()
        return int(total)

    def as_dict(self) -> dict[str, Entry]:
        """Every entry in memory (when another transaction of the same commit edits it, or to
        build the catalog of a tree that never spilled), in no particular order."""
        if self._mem is not None:
            return dict(self._mem)
        return {e.path: e for e, _ in self.entries()}

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._spill_path)


def remove_orphan_spills(spill_dir: Path, live_ids: set[str]) -> None:
    """Delete spill files whose transaction no longer has a marker (its process died)."""
    if not spill_dir.is_dir():
        return
    for path in spill_dir.iterdir():
        if path.name.split(".", 1)[0] not in live_ids:
            with contextlib.suppress(OSError):
                path.unlink()
