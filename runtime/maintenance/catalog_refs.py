"""What each catalog references, remembered by catalog hash between gc runs.

A catalog's name is the hash of its content, so what it references never changes: gc can keep
``hash -> (objects, nested catalogs)`` and skip inflating and querying the catalogs it has
already read. An hourly gc of a repository whose artifacts mostly predate the previous run then
costs a lookup per live catalog instead of a zlib inflate and three SQLite queries.

Root catalogs are not cached: each is retained for a short grace period only, and one root
lists every artifact. The cache lives in ``private/<fqrn>/gc-catalogs.db`` (SQLite, one transaction per batch). It is
advisory: an entry is written only after its catalog was read completely, entries of catalogs
gc deletes are dropped with them, and a cache that cannot be opened is deleted and rebuilt.
Crash safety: a kill leaves the last committed batch; every committed entry is still true,
since it describes content that cannot change.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

Refs = tuple[list[str], list[str]]  # (objects as hex + suffix, nested catalog hexes)

#: A rowid table on purpose: in a WITHOUT ROWID table every b-tree page holds whole records,
#: and a lookup that passes a large record (a catalog of a big artifact) reads all of it.
_SCHEMA = "CREATE TABLE IF NOT EXISTS catalogs (hash TEXT PRIMARY KEY, objects TEXT NOT NULL," \
          " nested TEXT NOT NULL)"


class CatalogRefs:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection | None:
        for attempt in (1, 2):
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_SCHEMA)
                conn.execute("SELECT COUNT(*) FROM catalogs LIMIT 1").fetchone()
                return conn
            except sqlite3.DatabaseError as exc:
                log.warning("gc catalog cache %s unusable (%s); rebuilding it", self.path, exc)
                with contextlib.suppress(NameError):
                    conn.close()
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        Path(f"{self.path}{suffix}").unlink()
                if attempt == 2:
                    return None
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "CatalogRefs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, hex_: str) -> Refs | None:
        if self._conn is None:
            return None
        row = self._conn.execute("SELECT objects, nested FROM catalogs WHERE hash=?",
                                 (hex_,)).fetchone()
        if row is None:
            return None
        return _split(row[0]), _split(row[1])

    def put_many(self, entries: Iterable[tuple[str, Refs]]) -> None:
        if self._conn is None:
            return
        rows = [(h, "\n".join(objs), "\n".join(nested)) for h, (objs, nested) in entries]
        if not rows:
            return
        with self._transaction():
            self._conn.executemany("INSERT OR REPLACE INTO catalogs VALUES (?,?,?)", rows)

    def forget(self, hexes: Iterable[str]) -> None:
        if self._conn is None:
            return
        with self._transaction():
            self._conn.executemany("DELETE FROM catalogs WHERE hash=?", ((h,) for h in hexes))

    @contextlib.contextmanager
    def _transaction(self):
        assert self._conn is not None
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")


def _split(text: str) -> list[str]:
    return text.split("\n") if text else []
