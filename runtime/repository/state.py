"""Artifact state in ``private/<fqrn>/state.db``: artifact rows, revisions, the commit point.

``state.db`` is the only record of the artifacts' metadata (TTL, catalog hash, counters,
content digest) and of every revision's manifest; the root catalog is rebuilt from its rows at
every commit without reading any other catalog.

Opening it on a full disk. In WAL mode every connection needs ``state.db-wal`` and
``state.db-shm``; SQLite deletes both when the *last* connection closes, so the next open must
create them again, which a full disk refuses ("unable to open database file", "disk I/O
error"), and with them every list, download, delete, clean and gc. :class:`State` therefore
keeps one connection open for the life of the process (the *keeper*): the two files then always
exist, and each later connection only opens them. A process that finds them missing on a full
disk (the keeper died with its process) still reads: :meth:`State.connect` falls back to a
read-only ``immutable`` connection, which needs no file at all. SQLite's "database or disk is
full" becomes :class:`StorageFull` (507), never a 500.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..cvmfs.catalog import Counters, Entry
from ..cvmfs.chunking import Chunk
from .errors import StorageFull

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    entry TEXT NOT NULL,
    catalog_hash TEXT,
    catalog_size INTEGER,
    counters TEXT,
    content_digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    files INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revision INTEGER NOT NULL,
    provenance TEXT
);
CREATE TABLE IF NOT EXISTS revisions (
    revision INTEGER PRIMARY KEY,
    root_hash TEXT NOT NULL,
    root_size INTEGER NOT NULL,
    certificate_hash TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    published_at REAL NOT NULL,
    manifest BLOB NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: Columns added to ``artifacts`` after its first release, with their type: a ``state.db``
#: written by an older version gets them (NULL for its artifacts) when it is next opened.
ADDED_COLUMNS: dict[str, str] = {
    # who uploaded the artifact and the metadata they sent (JSON; NULL: not recorded)
    "provenance": "TEXT",
    # -- retention --
    # 1: exempt from keep_last (not from its TTL); NULL/0: not pinned
    "pinned": "INTEGER",
    # SHA-256 (hex) of a file artifact's bytes, computed while it was uploaded; NULL otherwise
    "sha256": "TEXT",
}

ARTIFACT_COLUMNS = ("name", "kind", "entry", "catalog_hash", "catalog_size", "counters",
                    "content_digest", "size", "files", "created_at", "expires_at", "revision",
                    "provenance",
                    # -- retention --
                    "pinned", "sha256")

SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full" (SQLITE_FULL and its extended codes)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == SQLITE_FULL:
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


@contextlib.contextmanager
def full_disk_is_storage_full(what: str) -> Iterator[None]:
    """Turn SQLite's SQLITE_FULL into :class:`StorageFull` (the client sees 507)."""
    try:
        yield
    except sqlite3.Error as exc:
        if is_disk_full(exc):
            raise StorageFull(f"the server's storage is full ({what}); nothing was published"
                              ) from exc
        raise


def entry_to_json(e: Entry) -> str:
    return json.dumps({
        "mode": e.mode, "mtime": e.mtime, "size": e.size,
        "digest": e.digest.hex() if e.digest else None,
        "chunks": [[c.offset, c.size, c.digest.hex()] for c in e.chunks],
        "symlink": e.symlink, "compressed": e.compressed, "linkcount": e.linkcount,
    })


def entry_from_json(name: str, text: str) -> Entry:
    d = json.loads(text)
    return Entry(path="/" + name, mode=d["mode"], mtime=d["mtime"], size=d["size"],
                 digest=bytes.fromhex(d["digest"]) if d["digest"] else None,
                 chunks=tuple(Chunk(o, s, bytes.fromhex(h)) for o, s, h in d["chunks"]),
                 symlink=d["symlink"], compressed=d["compressed"], linkcount=d["linkcount"])


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns of :data:`ADDED_COLUMNS` that an older ``state.db`` lacks.

    ``ALTER TABLE ADD COLUMN`` is one atomic SQLite statement that rewrites no row: a process
    dying during it leaves the old schema or the new one, and the next open finishes the job.
    Two processes migrating at once: the loser's "duplicate column" error is ignored.
    """
    present = {row[1] for row in conn.execute("PRAGMA table_info(artifacts)")}
    for column, decl in ADDED_COLUMNS.items():
        if column in present:
            continue
        try:
            conn.execute(f"ALTER TABLE artifacts ADD COLUMN {column} {decl}")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise


def kind_of(e: Entry) -> str:
    return "dir" if e.is_dir else "symlink" if e.is_symlink else "file"


@dataclass
class ArtifactRow:
    """An artifact as the commit sees it: its row in the root catalog and its metadata."""

    name: str
    top: Entry
    catalog_hash: str | None
    catalog_size: int | None
    counters: Counters | None
    content_digest: str
    size: int
    files: int
    created_at: float
    expires_at: float | None
    revision: int
    #: who uploaded it and the metadata they sent (``Transaction.set_provenance``); None for
    #: artifacts published without it (and those of an older state.db)
    provenance: dict | None = None
    # -- retention --
    #: exempt from ``keep_last`` (``Transaction.set_pin``)
    pinned: bool = False
    #: SHA-256 hex of a file artifact's bytes (``Transaction.set_sha256``); None otherwise
    sha256: str | None = None


@dataclass(frozen=True)
class ArtifactInfo:
    name: str
    kind: str  # "dir" | "file" | "symlink"
    size: int
    files: int
    created_at: float
    expires_at: float | None
    revision: int
    content_digest: str
    catalog_hash: str | None
    provenance: dict | None = None
    # -- retention --
    pinned: bool = False
    sha256: str | None = None


def digest_line(rel_path: str, e: Entry) -> str:
    """One entry's contribution to :func:`content_digest` (paths relative to the artifact)."""
    content = e.digest.hex() if e.digest else ""
    if e.chunks:
        content += ",".join(f"{c.offset}:{c.size}:{c.digest.hex()}" for c in e.chunks)
    return f"{rel_path}\0{e.mode:o}\0{content}\0{e.symlink}\0{int(e.compressed)}\n"


class ContentDigest:
    """:func:`content_digest` computed incrementally, entries given in path order."""

    def __init__(self, base: str):
        self._cut = len(base)
        self._sha = hashlib.sha1()

    def add(self, e: Entry) -> None:
        self._sha.update(digest_line(e.path[self._cut:], e).encode("utf-8", "surrogatepass"))

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def summarize(entries: Iterable[Entry], base: str) -> tuple[str, int, int]:
    """The identity of an artifact's content (names, types, modes, bytes, targets; not
    mtimes) from its ``entries`` in path order, with its bytes and number of regular files,
    in one pass (three passes over a 10,000-file artifact were a tenth of its publish)."""
    digest = ContentDigest(base)
    size = files = 0
    for e in entries:
        digest.add(e)
        if e.is_regular:
            size += e.size
            files += 1
    return digest.hexdigest(), size, files


def _nearly_full(directory: Path) -> bool:
    """Less than 1 MiB free: SQLite's "disk I/O error" opening the WAL index means full disk."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1024 * 1024


class State:
    """``state.db`` of one repository: connections, artifact rows (cached), revisions."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._keeper: sqlite3.Connection | None = None
        self._keeper_lock = threading.Lock()
        self._cache: tuple[int, dict[str, ArtifactRow]] | None = None

    # -- connections ---------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                               check_same_thread=False)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _keep_open(self) -> None:
        """Hold one connection for the life of the process, so the WAL files always exist."""
        if self._keeper is not None:
            return
        with self._keeper_lock:
            if self._keeper is None:
                self._keeper = self._open()

    def connect(self, *, readonly_ok: bool = False) -> sqlite3.Connection:
        """A new read-write connection.

        When SQLite cannot open it (no room for the WAL files), a reader (``readonly_ok``)
        gets a read-only one, and a writer :class:`StorageFull` if the disk is full.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with full_disk_is_storage_full("state.db"):
                self._keep_open()
                return self._open()
        except (sqlite3.OperationalError, StorageFull) as exc:
            if readonly_ok and self.path.exists():
                return self.connect_readonly()
            if isinstance(exc, sqlite3.OperationalError) and _nearly_full(self.path.parent):
                raise StorageFull("the server's storage is full (state.db cannot be opened);"
                                  " nothing was published, retry later") from exc
            raise

    def connect_readonly(self) -> sqlite3.Connection:
        """Read without creating any file: ``immutable`` skips the WAL and lock files.

        Only for a process that finds the WAL files gone (no other connection, hence no
        uncheckpointed writes to miss); writes through it fail with a clear SQLite error.
        """
        uri = f"file:{self.path}?mode=ro&immutable=1"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    @contextlib.contextmanager
    def connection(self, *, readonly_ok: bool = False) -> Iterator[sqlite3.Connection]:
        conn = self.connect(readonly_ok=readonly_ok)
        try:
            with full_disk_is_storage_full("state.db"):
                yield conn
        finally:
            conn.close()

    def close(self) -> None:
        with self._keeper_lock:
            if self._keeper is not None:
                self._keeper.close()
                self._keeper = None

    # -- artifact rows -------------------------------------------------------------------
    @staticmethod
    def generation(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def invalidate(self) -> None:
        self._cache = None

    def remember(self, generation: int, rows: dict[str, ArtifactRow]) -> None:
        self._cache = (generation, rows)

    def load_artifacts(self, conn: sqlite3.Connection) -> dict[str, ArtifactRow]:
        """Every artifact row, decoded once per state generation.

        The root catalog is rebuilt from all rows at every commit, so decoding them again each
        time would make a one-file publish cost grow with the repository. Any writer (this
        process or another) bumps ``generation`` in the same SQLite transaction as its rows, so
        the cache is reused exactly while the rows are unchanged. The rows are shared: callers
        copy an artifact before changing it.
        """
        generation = self.generation(conn)
        cached = self._cache
        if cached is None or cached[0] != generation:
            cached = (generation, self._read_artifacts(conn))
            self._cache = cached
        return dict(cached[1])

    @staticmethod
    def rows_under(conn: sqlite3.Connection, namespace: str) -> list[ArtifactRow]:
        """The artifact ``namespace`` itself and every artifact below ``namespace/``, by name.

        A range on the primary key: ``'/'`` + 1 is ``'0'``, so every name below the namespace
        sorts in ``[namespace/, namespace0)`` and SQLite reads only those rows.
        """
        rows = State._read_artifacts(
            conn, " WHERE name = ? OR (name >= ? AND name < ?) ORDER BY name",
            (namespace, namespace + "/", namespace + "0"))
        return list(rows.values())

    @staticmethod
    def has_rows_under(conn: sqlite3.Connection, namespace: str) -> bool:
        """Some artifact lies below ``namespace/`` (one index probe)."""
        return conn.execute("SELECT 1 FROM artifacts WHERE name >= ? AND name < ? LIMIT 1",
                            (namespace + "/", namespace + "0")).fetchone() is not None

    @staticmethod
    def _read_artifacts(conn: sqlite3.Connection, where: str = "",
                        params: tuple = ()) -> dict[str, ArtifactRow]:
        out = {}
        # a read-only connection to a state.db not yet migrated lacks the added columns
        present = {row[1] for row in conn.execute("PRAGMA table_info(artifacts)")}
        added = ", ".join(c if c in present else "NULL" for c in ADDED_COLUMNS)
        for row in conn.execute(
            "SELECT name, entry, catalog_hash, catalog_size, counters, content_digest, size,"
            f" files, created_at, expires_at, revision, {added} FROM artifacts" + where,
            params
        ):
            name = row[0]
            out[name] = ArtifactRow(
                name=name, top=entry_from_json(name, row[1]), catalog_hash=row[2],
                catalog_size=row[3],
                counters=Counters.from_json(json.loads(row[4])) if row[4] else None,
                content_digest=row[5], size=row[6], files=row[7], created_at=row[8],
                expires_at=row[9], revision=row[10],
                provenance=json.loads(row[11]) if row[11] else None,
                pinned=bool(row[12]), sha256=row[13])
        return out

    @staticmethod
    def write_rows(conn: sqlite3.Connection, rows: dict[str, ArtifactRow | None], *,
                   in_tx: bool = False) -> None:
        """Replace (or delete, for None) artifact rows and bump the generation."""
        if not in_tx:
            conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO meta VALUES ('generation', 1) ON CONFLICT(key) DO UPDATE"
                     " SET value = value + 1")
        for name, art in rows.items():
            if art is None:
                conn.execute("DELETE FROM artifacts WHERE name=?", (name,))
                continue
            conn.execute(
                f"INSERT OR REPLACE INTO artifacts ({', '.join(ARTIFACT_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(ARTIFACT_COLUMNS))})",
                (name, kind_of(art.top), entry_to_json(art.top), art.catalog_hash,
                 art.catalog_size,
                 json.dumps(art.counters.to_json()) if art.counters else None,
                 art.content_digest, art.size, art.files, art.created_at, art.expires_at,
                 art.revision,
                 json.dumps(art.provenance, sort_keys=True) if art.provenance is not None
                 else None,
                 # -- retention --
                 1 if art.pinned else 0, art.sha256))
        if not in_tx:
            conn.execute("COMMIT")

    # -- revisions -----------------------------------------------------------------------
    def revisions(self) -> list[dict]:
        """Revisions recorded in state, newest first (gc retention uses them)."""
        with self.connection(readonly_ok=True) as conn:
            rows = conn.execute(
                "SELECT revision, root_hash, root_size, certificate_hash, timestamp, published_at,"
                " state FROM revisions ORDER BY revision DESC").fetchall()
        keys = ("revision", "root_hash", "root_size", "certificate_hash", "timestamp",
                "published_at", "state")
        return [dict(zip(keys, r)) for r in rows]

    def forget_revisions(self, revisions: Iterable[int]) -> int:
        """Delete revision rows (gc prunes those outside retention); never the newest one.

        One SQLite transaction: a crash leaves all of them or none. Returns the rows deleted.
        """
        with self.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            (newest,) = conn.execute("SELECT MAX(revision) FROM revisions").fetchone()
            doomed = [(r,) for r in revisions if r != newest]
            before = conn.total_changes
            conn.executemany("DELETE FROM revisions WHERE revision=?", doomed)
            deleted = conn.total_changes - before
            conn.execute("COMMIT")
        return deleted
