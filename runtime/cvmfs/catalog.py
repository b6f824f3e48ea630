"""SQLite file catalogs, schema 2.5 revision 7, as cvmfs 2.12 writes them (docs/cvmfs-format.md, "File catalogs").

A catalog is built in memory from a list of :class:`Entry` and serialized to bytes
(``sqlite3.Connection.serialize``): no journal or WAL file ever exists, the database is a plain
rollback-mode file, and rowids are dense in insertion order. The bytes are then zlib-compressed
and stored as a ``C`` object by the caller; its SHA-1 and the *uncompressed* size are what the
parent catalog (or the manifest) records.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import stat
import struct
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .chunking import Chunk

SCHEMA_VERSION = "2.5"
SCHEMA_REVISION = "7"

# Table definitions exactly as cvmfs writes them (column order matters: cvmfs tools copy rows
# with SELECT *). Compared with the real catalogs in tests/fixtures/cvmfs-reference by the tests.
SCHEMA_SQL = (
    "CREATE TABLE properties (key TEXT, value TEXT, "
    "CONSTRAINT pk_properties PRIMARY KEY (key));",
    "CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, "
    "parent_2 INTEGER, hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, "
    "mtimens INTEGER, flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, "
    "xattr BLOB,  CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));",
    "CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2);",
    "CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER,  "
    "hash BLOB,  CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),  "
    "FOREIGN KEY (md5path_1, md5path_2) REFERENCES    catalog(md5path_1, md5path_2));",
    "CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));",
    "CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path));",
    "CREATE TABLE statistics (counter TEXT, value INTEGER, "
    "CONSTRAINT pk_statistics PRIMARY KEY (counter));",
)

# flags bits (cvmfs/catalog_sql.h)
FLAG_DIR = 1
FLAG_NESTED_MOUNTPOINT = 2
FLAG_FILE = 4
FLAG_LINK = 8
FLAG_SPECIAL = 16
FLAG_NESTED_ROOT = 32
FLAG_CHUNKED = 64
FLAG_COMPRESSION_NONE = 1 << 11
FLAG_HIDDEN = 0x8000

COUNTER_NAMES = (
    "regular", "symlink", "special", "dir", "nested", "chunked", "chunks",
    "file_size", "chunked_size", "xattr", "external", "external_file_size",
)

#: Directory ``size`` as cvmfs records it for an on-disk directory.
DIR_SIZE = 4096


_MD5_PAIR = struct.Struct("<qq")


def path_md5_pair(path: str) -> tuple[int, int]:
    """MD5 of a full path split into two little-endian signed int64 ("File catalogs")."""
    return _MD5_PAIR.unpack(hashlib.md5(path.encode("utf-8")).digest())


#: The same, remembered: directories are the parents of many rows.
md5_pair = functools.lru_cache(maxsize=1 << 16)(path_md5_pair)


def parent_path(path: str) -> str:
    """``/a/b`` → ``/a``; ``/a`` → ``""`` (the root)."""
    return path[: path.rfind("/")]


@dataclass(slots=True)
class Entry:
    """One catalog row, described by its full repository path (``""`` is the root).

    Slotted: a publish holds one per file (10,000-file artifacts are routine), and without a
    ``__dict__`` each is a third of the size and half the work for the garbage collector.
    """

    path: str
    mode: int
    mtime: int
    size: int = 0
    digest: bytes | None = None
    chunks: tuple[Chunk, ...] | list[Chunk] = ()
    symlink: str = ""
    compressed: bool = True
    uid: int = 0
    gid: int = 0
    hidden: bool = False
    xattr: bytes | None = None
    #: Directory link count when it cannot be derived from the entries of this catalog
    #: (a nested-catalog mountpoint mirrors its child's root entry).
    linkcount: int | None = None

    @property
    def name(self) -> str:
        return self.path[self.path.rfind("/") + 1:]

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


@dataclass(frozen=True)
class NestedRef:
    """A ``nested_catalogs`` row plus what the parent needs to aggregate its counters."""

    path: str
    hex: str
    size: int  # uncompressed catalog size
    counters: "Counters"


@dataclass
class Counters:
    """The 24 statistics rows: ``self_<x>`` and ``subtree_<x>`` ("File catalogs")."""

    self: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    subtree: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))

    def totals(self) -> dict[str, int]:
        """self + subtree: what a parent adds to its own ``subtree_<x>``."""
        return {k: self.self[k] + self.subtree[k] for k in COUNTER_NAMES}

    def rows(self) -> list[tuple[str, int]]:
        return [(f"self_{k}", self.self[k]) for k in COUNTER_NAMES] + [
            (f"subtree_{k}", self.subtree[k]) for k in COUNTER_NAMES
        ]

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"self": dict(self.self), "subtree": dict(self.subtree)}

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, int]]) -> "Counters":
        return cls(dict(data["self"]), dict(data["subtree"]))


@dataclass(frozen=True)
class BuiltCatalog:
    data: bytes  # the uncompressed SQLite file
    counters: Counters
    #: directory path -> number of its subdirectories in this catalog (link counts)
    subdirs: dict[str, int] = field(default_factory=dict)


def catalog_row(e: Entry, count: dict[str, int], subdir_linkcount: int,
                extra_flags: int = 0) -> tuple:
    """The ``catalog`` row of ``e``, counting it in ``count`` (its catalog's ``self`` counters).

    ``subdir_linkcount`` (2 + subdirectories) is a directory's link count unless the entry sets
    its own. One pass with the entry kind taken once: this runs for every file of an upload.
    """
    path = e.path
    md5_1, md5_2 = path_md5_pair(path)  # a file's own path is looked up once: not remembered
    parent = md5_pair(path[: path.rfind("/")]) if path else (0, 0)
    kind = stat.S_IFMT(e.mode)
    if kind == stat.S_IFDIR:
        flags, count["dir"] = FLAG_DIR, count["dir"] + 1
        linkcount = e.linkcount if e.linkcount is not None else subdir_linkcount
        size, digest, symlink = e.size or DIR_SIZE, None, ""
    elif kind == stat.S_IFREG:
        flags, count["regular"] = FLAG_FILE, count["regular"] + 1
        count["file_size"] += e.size
        linkcount, size, symlink = 1, e.size, ""
        if e.chunks:
            flags |= FLAG_CHUNKED
            count["chunked"] += 1
            count["chunked_size"] += e.size
            count["chunks"] += len(e.chunks)
            digest = None
        elif e.digest is None:
            raise ValueError(f"regular file {path!r} has neither a hash nor chunks")
        else:
            digest = e.digest
        # algorithm bits 8-10 stay 0 for SHA-1; compression bits 11-13: 1 = none
        if not e.compressed:
            flags |= FLAG_COMPRESSION_NONE
    elif kind == stat.S_IFLNK:
        flags, count["symlink"] = FLAG_FILE | FLAG_LINK, count["symlink"] + 1
        linkcount, digest, symlink = 1, None, e.symlink
        size = len(symlink.encode("utf-8"))
    else:
        flags, count["special"] = FLAG_FILE | FLAG_SPECIAL, count["special"] + 1
        linkcount, size, digest, symlink = 1, e.size, None, ""
    if e.hidden:
        flags |= FLAG_HIDDEN
    if e.xattr is not None:
        count["xattr"] += 1
    flags |= extra_flags
    return (md5_1, md5_2, parent[0], parent[1], linkcount, digest, size, e.mode, e.mtime, None,
            flags, path[path.rfind("/") + 1:], symlink, e.uid, e.gid, e.xattr)


def build_catalog(
    entries: Iterable[Entry],
    *,
    root_path: str,
    properties: Mapping[str, str | int],
    nested: Iterable[NestedRef] = (),
) -> BuiltCatalog:
    """Build one catalog holding ``entries`` (its root entry at ``root_path`` included).

    ``root_path`` is ``""`` for the repository's root catalog and the mountpoint path for a
    nested one. Directory link counts are derived (2 + subdirectories) unless an entry sets
    ``linkcount``. Every path in ``nested`` must be a directory entry of this catalog with no
    children here; it is flagged as a mountpoint and recorded in ``nested_catalogs``.
    """
    entries = list(entries)
    nested = sorted(nested, key=lambda n: n.path)
    nested_paths = {n.path for n in nested}
    dirs = {e.path for e in entries if stat.S_ISDIR(e.mode)}
    if root_path not in dirs:
        raise ValueError(f"catalog root entry {root_path!r} missing or not a directory")
    subdirs = _check_parents(entries, root_path, dirs, nested_paths)
    by_path = {e.path: e for e in entries} if nested_paths else {}
    for path in nested_paths:
        if path not in by_path or not by_path[path].is_dir:
            raise ValueError(f"nested catalog {path!r} has no directory entry")

    counters = Counters()
    rows, chunk_rows = [], []
    count = counters.self
    extras = dict.fromkeys(nested_paths, FLAG_NESTED_MOUNTPOINT)
    if root_path != "":
        extras[root_path] = extras.get(root_path, 0) | FLAG_NESTED_ROOT
    for e in entries:
        path = e.path
        row = catalog_row(e, count, 2 + subdirs.get(path, 0), extras.get(path, 0))
        rows.append(row)
        for c in e.chunks:
            chunk_rows.append((row[0], row[1], c.offset, c.size, c.digest))
    counters.self["nested"] = len(nested)
    for n in nested:
        for k, v in n.counters.totals().items():
            counters.subtree[k] += v

    conn = sqlite3.connect(":memory:")
    try:
        for sql in SCHEMA_SQL:
            conn.execute(sql)
        conn.executemany("INSERT INTO catalog VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.executemany("INSERT INTO chunks VALUES (?,?,?,?,?)", chunk_rows)
        conn.executemany("INSERT INTO nested_catalogs VALUES (?,?,?)",
                         [(n.path, n.hex, n.size) for n in nested])
        props = {"schema": SCHEMA_VERSION, "schema_revision": SCHEMA_REVISION, **properties}
        conn.executemany("INSERT INTO properties VALUES (?,?)",
                         [(k, str(v)) for k, v in props.items()])
        conn.executemany("INSERT INTO statistics VALUES (?,?)", counters.rows())
        conn.commit()
        data = conn.serialize()
    finally:
        conn.close()
    return BuiltCatalog(bytes(data), counters, subdirs)


def _check_parents(entries: list[Entry], root_path: str, dirs: set[str],
                   nested_paths: set[str]) -> dict[str, int]:
    """Every entry but the root lies in a directory of this catalog, none below a nested
    mountpoint; returns the number of subdirectories of each directory.

    One pass: this runs for every file of a publish.
    """
    subdirs: dict[str, int] = {}
    for e in entries:
        path = e.path
        if path == root_path:
            continue
        parent = parent_path(path)
        if parent not in dirs:
            raise ValueError(f"entry {path!r} has no parent directory in the catalog")
        if parent in nested_paths:
            raise ValueError(f"entry {path!r} lies below nested mountpoint {parent!r}")
        if stat.S_ISDIR(e.mode):
            subdirs[parent] = subdirs.get(parent, 0) + 1
    return subdirs


def write_nested_catalog(path: str, entries: Iterable[tuple[Entry, int]], *, root_path: str,
                         properties: Mapping[str, str | int], batch: int = 4096) -> Counters:
    """Write a nested catalog (no nested catalogs below it) straight into the file ``path``.

    The rows :func:`build_catalog` would produce for the same entries, in the same order, but
    streamed: ``entries`` yields ``(entry, subdirectories)`` in path order (the root entry
    first, every parent before its children), and at most ``batch`` rows are held in memory,
    so an artifact of a million entries costs a file, not a heap. The file is a plain
    rollback-mode database, like the serialized ones (no journal or WAL is ever left).
    """
    counters = Counters()
    count = counters.self
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        for sql in SCHEMA_SQL:
            conn.execute(sql)
        rows: list[tuple] = []
        chunk_rows: list[tuple] = []
        seen_root = False
        for e, subdirs in entries:
            if e.path == root_path:
                if not e.is_dir:
                    raise ValueError(f"catalog root entry {root_path!r} is not a directory")
                seen_root = True
                row = catalog_row(e, count, 2 + subdirs, FLAG_NESTED_ROOT)
            elif not seen_root:
                raise ValueError(f"catalog root entry {root_path!r} missing or not first")
            else:
                row = catalog_row(e, count, 2 + subdirs)
            rows.append(row)
            for c in e.chunks:
                chunk_rows.append((row[0], row[1], c.offset, c.size, c.digest))
            if len(rows) >= batch:
                conn.executemany("INSERT INTO catalog VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                 rows)
                conn.executemany("INSERT INTO chunks VALUES (?,?,?,?,?)", chunk_rows)
                rows.clear()
                chunk_rows.clear()
        if not seen_root:
            raise ValueError(f"catalog root entry {root_path!r} missing or not a directory")
        conn.executemany("INSERT INTO catalog VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.executemany("INSERT INTO chunks VALUES (?,?,?,?,?)", chunk_rows)
        props = {"schema": SCHEMA_VERSION, "schema_revision": SCHEMA_REVISION, **properties}
        conn.executemany("INSERT INTO properties VALUES (?,?)",
                         [(k, str(v)) for k, v in props.items()])
        conn.executemany("INSERT INTO statistics VALUES (?,?)", counters.rows())
        conn.execute("COMMIT")
    finally:
        conn.close()
    return counters


@dataclass
class CatalogContent:
    """What a catalog holds, read back: entries, nested references and properties."""

    entries: list[Entry]
    nested: list[tuple[str, str, int]]  # (path, hex, size)
    properties: dict[str, str]
    counters: Counters


def _open_bytes(data: bytes) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.deserialize(data)
    return conn


def row_entry(path: str, hardlinks: int, digest: bytes | None, size: int, mode: int,
              mtime: int, flags: int, symlink: str | None, uid: int, gid: int,
              xattr: bytes | None, *, chunks: tuple[Chunk, ...] = ()) -> Entry:
    """The :class:`Entry` a catalog row holds (columns ``hardlinks`` … ``flags``, then
    ``symlink`` … ``xattr``, as the ``catalog`` table orders them), at ``path``."""
    return Entry(path=path, mode=mode, mtime=mtime, size=size,
                 digest=bytes(digest) if digest is not None else None, chunks=chunks,
                 symlink=symlink or "", compressed=not flags & FLAG_COMPRESSION_NONE,
                 uid=uid, gid=gid, hidden=bool(flags & FLAG_HIDDEN),
                 xattr=bytes(xattr) if xattr is not None else None,
                 linkcount=(hardlinks & 0xFFFFFFFF) if flags & FLAG_NESTED_MOUNTPOINT else None)


def read_catalog(data: bytes) -> CatalogContent:
    """Parse an uncompressed catalog back into entries with full paths.

    Used when a change touches part of an existing artifact: its catalog is the only record of
    the artifact's tree, so it is read and rebuilt with the change applied.
    """
    conn = _open_bytes(data)
    try:
        props = dict(conn.execute("SELECT key, value FROM properties"))
        stats = dict(conn.execute("SELECT counter, value FROM statistics"))
        chunks: dict[tuple[int, int], list[Chunk]] = {}
        for m1, m2, off, size, digest in conn.execute(
            "SELECT md5path_1, md5path_2, offset, size, hash FROM chunks ORDER BY offset"
        ):
            chunks.setdefault((m1, m2), []).append(Chunk(off, size, bytes(digest)))
        rows = conn.execute(
            "SELECT md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode, mtime,"
            " flags, name, symlink, uid, gid, xattr FROM catalog ORDER BY rowid"
        ).fetchall()
        nested = [tuple(r) for r in conn.execute("SELECT path, sha1, size FROM nested_catalogs")]
    finally:
        conn.close()
    root_prefix = props.get("root_prefix", "")
    if root_prefix == "/":
        root_prefix = ""
    paths: dict[tuple[int, int], str] = {md5_pair(root_prefix): root_prefix}
    pending = rows
    entries_by_key: dict[tuple[int, int], Entry] = {}
    while pending:
        rest = []
        for r in pending:
            key, parent = (r[0], r[1]), (r[2], r[3])
            if key == md5_pair(root_prefix):
                path = root_prefix
            elif parent in paths:
                path = f"{paths[parent]}/{r[10]}"
            else:
                rest.append(r)
                continue
            paths[key] = path
            entries_by_key[key] = row_entry(path, *r[4:10], *r[11:15],
                                            chunks=tuple(chunks.get(key, ())))
        if len(rest) == len(pending):
            raise ValueError("catalog has rows whose parent is not in the catalog")
        pending = rest
    counters = Counters(
        {k: int(stats.get(f"self_{k}", 0)) for k in COUNTER_NAMES},
        {k: int(stats.get(f"subtree_{k}", 0)) for k in COUNTER_NAMES},
    )
    ordered = [entries_by_key[(r[0], r[1])] for r in rows]
    return CatalogContent(ordered, [(p, h, int(s)) for p, h, s in nested], props, counters)


def referenced_objects(data: bytes) -> tuple[set[tuple[str, str]], list[tuple[str, str, int]]]:
    """Objects a catalog references directly: ``{(hex, suffix)}`` and its nested catalogs.

    Regular-file hashes have no suffix, chunk hashes ``P`` ("File catalogs", "Replication and garbage collection").
    """
    conn = _open_bytes(data)
    try:
        objs = {(bytes(h).hex(), "") for (h,) in conn.execute(
            "SELECT hash FROM catalog WHERE hash IS NOT NULL AND (flags & 1) = 0")}
        objs |= {(bytes(h).hex(), "P") for (h,) in conn.execute("SELECT hash FROM chunks")}
        nested = [(p, h, int(s)) for p, h, s in conn.execute(
            "SELECT path, sha1, size FROM nested_catalogs")]
    finally:
        conn.close()
    return objs, nested
