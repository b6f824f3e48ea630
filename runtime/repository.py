"""One CVMFS repository on disk: staging, group commit, the revision rule and artifact metadata.

Layout under the data directory (nginx serves only ``public/`` and ``meta/``)::

    public/<fqrn>/            the stratum-0 tree: .cvmfspublished, .cvmfswhitelist,
                              .cvmfs_master_replica, data/XX/... (served at /cvmfs/<fqrn>/)
    meta/<fqrn>.pub|.crt      public key and certificate (served at /cvmfs-meta/)
    private/<fqrn>/state.db   artifacts (TTL, catalog hash, counters) and revisions (SQLite, WAL)
    private/<fqrn>/writer.lock
    private/<fqrn>/staging/   one marker per transaction in flight (gc keeps their objects)

Every top-level directory of the repository is one *artifact* with its own nested catalog, so a
publish rewrites only the catalogs of the artifacts it touches plus the root catalog, whose rows
are rebuilt from ``state.db`` without reading any other catalog.

Write path and what a crash at each step leaves behind:

1. staging: content is streamed into objects (no lock). Crash: orphan objects, reclaimed by gc.
2. commit (writer lock held): nested and root catalogs are built and stored, the certificate
   object is stored, then one ``syncfs`` makes every object durable. Crash: orphans only.
3. the signed manifest is recorded in ``state.db`` as a *pending* revision together with the
   artifact rows, in one SQLite transaction. This is the commit point.
4. the manifest is written to a temp file, fsynced and renamed over ``.cvmfspublished``; the
   directory is fsynced; the revision is marked published. Crash between 3 and 4: the next
   open finds the pending revision and finishes step 4 (roll forward), since all it references
   is already durable. Clients only ever see a complete, signed revision.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

from .cvmfs import keys as keys_mod
from .cvmfs import manifest as manifest_mod
from .cvmfs import whitelist as whitelist_mod
from .cvmfs.catalog import Counters, Entry, NestedRef, build_catalog, read_catalog
from .cvmfs.chunking import Chunk, FileContent, FileWriter, Ingester
from .cvmfs.objects import CATALOG, CERTIFICATE, ObjectStore, compress
from .settings import RepositoryConfig, validate_fqrn

MARKER_NAME = ".cvmfscatalog"
#: Names the format or cvmfs tooling give meaning to (``.cvmfscatalog``, ``.cvmfsdirtab``,
#: ``.cvmfspublished`` …) all start with this; such names are refused for artifacts and entries.
RESERVED_PREFIX = ".cvmfs"
#: Longest name a FUSE client can show (NAME_MAX).
NAME_MAX_BYTES = 255
REPLICA_MARKER = b"This file marks the repository as replicatable to stratum 1 servers\n"


class RepositoryError(Exception):
    """Base of the errors a caller can show to a user as one line."""


class InvalidPath(RepositoryError, ValueError):
    pass


class ArtifactExists(RepositoryError):
    pass


class ArtifactNotFound(RepositoryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class RepositoryLocked(RepositoryError):
    pass


class NotInitialized(RepositoryError):
    pass


# --------------------------------------------------------------------------------------------
# names and paths


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def validate_name(name: str, *, what: str = "name") -> str:
    """One path component: non-empty, no ``/``, NUL or control characters, not ``.``/``..``.

    Runs for every entry of every upload, so it is written for speed (one regex, one encode).
    """
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise InvalidPath(f"invalid {what} {name!r}")
    if "/" in name:
        raise InvalidPath(f"invalid {what} {name!r}: must not contain '/'")
    if _CONTROL_CHARS.search(name):
        raise InvalidPath(f"invalid {what} {name!r}: control characters are not allowed")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPath(f"invalid {what} {name!r}: not valid UTF-8") from exc
    if len(encoded) > NAME_MAX_BYTES:
        raise InvalidPath(f"invalid {what}: longer than {NAME_MAX_BYTES} bytes")
    if name.startswith(RESERVED_PREFIX):
        raise InvalidPath(f"invalid {what} {name!r}: names starting with '.cvmfs' are reserved")
    return name


def validate_artifact_name(name: str) -> str:
    return validate_name(name, what="artifact name")


class ValidPath(tuple):
    """Path components that passed :func:`split_path`.

    The staging methods of :class:`Transaction` take a path either as a string (validated
    there) or as a ``ValidPath`` (taken as it is), so that an archive of 10,000 members in a few
    directories validates each directory once rather than once per member. Make one only with
    :func:`split_path` or :meth:`child`, which validate every component they add.
    """

    __slots__ = ()

    def child(self, name: str) -> "ValidPath":
        """This path plus one validated component."""
        return ValidPath((*self, validate_name(name, what="path component")))


def split_path(path: str) -> ValidPath:
    """A repository-relative path as validated components; refuses escapes and absolute paths."""
    if not isinstance(path, str) or path == "":
        raise InvalidPath("empty path")
    if path.startswith("/"):
        raise InvalidPath(f"invalid path {path!r}: absolute paths are not allowed")
    parts = [p for p in path.split("/") if p != ""]
    if not parts:
        raise InvalidPath(f"invalid path {path!r}")
    for i, part in enumerate(parts):
        validate_name(part, what="artifact name" if i == 0 else "path component")
    return ValidPath(parts)


def _parts(path: "str | ValidPath") -> ValidPath:
    return path if isinstance(path, ValidPath) else split_path(path)


def catalog_path(parts: Sequence[str]) -> str:
    return "/" + "/".join(parts)


# --------------------------------------------------------------------------------------------
# small durable-file helpers


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.rename(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --------------------------------------------------------------------------------------------
# staged changes


@dataclass
class _Op:
    kind: str  # "file" | "dir" | "symlink" | "remove"
    parts: Sequence[str]
    entry: Entry | None = None


@dataclass
class PublishResult:
    """Outcome of one group commit."""

    revision: int
    root_hash: str
    timestamp: int
    manifest: bytes
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    errors: dict[int, Exception] = field(default_factory=dict)  # id(tx) -> error
    new_revision: bool = True
    publish_time_s: float = 0.0

    def error_for(self, tx: "Transaction") -> Exception | None:
        return self.errors.get(id(tx))


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


class StagedFile:
    """A file being streamed into a transaction (push API for HTTP bodies)."""

    def __init__(self, tx: "Transaction", parts: ValidPath, mode: int, mtime: int):
        self._tx, self._parts, self._mode, self._mtime = tx, parts, mode, mtime
        self._writer: FileWriter = tx.repo.ingester.open()
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        self.bytes_written += len(data)

    async def awrite(self, data: bytes) -> None:
        await self._writer.awrite(data)
        self.bytes_written += len(data)

    def close(self) -> FileContent:
        content = self._writer.close()
        self._tx._record_file(self._parts, content, self._mode, self._mtime)
        return content

    async def aclose(self) -> FileContent:
        content = await self._writer.aclose()
        self._tx._record_file(self._parts, content, self._mode, self._mtime)
        return content

    def abort(self) -> None:
        self._writer.abort()


class Transaction:
    """Changes staged against a repository; objects are written now, catalogs at publish.

    Operations replay in order at publish time on top of the then-current revision, so
    transactions staged concurrently can be committed together (group commit).
    """

    def __init__(self, repo: "Repository"):
        self.repo = repo
        self.id = uuid.uuid4().hex
        self.ops: list[_Op] = []
        self.expiry: dict[str, float | None] = {}
        self.require_absent: set[str] = set()
        #: set by :meth:`remove_expired`: artifacts expiring at or before it are removed
        self.expired_before: float | None = None
        self.closed = False
        self._marker = repo.private_dir / "staging" / self.id
        self._marker.parent.mkdir(parents=True, exist_ok=True)
        self._marker.write_text(f"{os.getpid()}\n")

    # -- staging -------------------------------------------------------------------------
    def _now(self) -> int:
        return int(self.repo.clock())

    def _record_file(self, parts: Sequence[str], content: FileContent, mode: int,
                     mtime: int) -> None:
        entry = Entry(path=catalog_path(parts), mode=stat.S_IFREG | (mode & 0o7777),
                      mtime=mtime, size=content.size, digest=content.digest,
                      chunks=tuple(content.chunks), compressed=content.compressed)
        self.ops.append(_Op("file", parts, entry))

    def add_file(self, path: str, source: bytes | BinaryIO | Iterable[bytes], *,
                 mode: int = 0o644, mtime: int | None = None) -> FileContent:
        """Stage a regular file from bytes, a binary file object or an iterable of pieces."""
        parts = split_path(path)
        content = self.repo.ingester.ingest(source)
        self._record_file(parts, content, mode, self._now() if mtime is None else mtime)
        return content

    def add_content(self, path: str | ValidPath, content: FileContent, *, mode: int = 0o644,
                    mtime: int | None = None) -> None:
        """Stage a regular file whose content is already stored (``Ingester.ingest_batch``).

        Lets archive unpacking store many small files in parallel and record them afterwards,
        and lets a hardlink become a second entry sharing the stored content.
        """
        self._record_file(_parts(path), content, mode, self._now() if mtime is None else mtime)

    def open_file(self, path: str, *, mode: int = 0o644, mtime: int | None = None) -> StagedFile:
        """Stage a file whose bytes arrive later (``write``/``awrite`` then ``close``/``aclose``)."""
        return StagedFile(self, split_path(path), mode, self._now() if mtime is None else mtime)

    def add_directory(self, path: str | ValidPath, *, mode: int = 0o755,
                      mtime: int | None = None) -> None:
        parts = _parts(path)
        entry = Entry(path=catalog_path(parts), mode=stat.S_IFDIR | (mode & 0o7777),
                      mtime=self._now() if mtime is None else mtime)
        self.ops.append(_Op("dir", parts, entry))

    def add_symlink(self, path: str | ValidPath, target: str, *,
                    mtime: int | None = None) -> None:
        parts = _parts(path)
        if not target or "\0" in target:
            raise InvalidPath(f"invalid symlink target for {path!r}")
        entry = Entry(path=catalog_path(parts), mode=stat.S_IFLNK | 0o777,
                      mtime=self._now() if mtime is None else mtime, symlink=target)
        self.ops.append(_Op("symlink", parts, entry))

    def remove(self, path: str) -> None:
        """Remove a path (an artifact when it is a single name) and everything below it."""
        self.ops.append(_Op("remove", split_path(path)))

    def set_expiry(self, name: str, expires_at: float | None) -> None:
        self.expiry[validate_artifact_name(name)] = expires_at

    def remove_expired(self, before: float) -> None:
        """Remove every artifact whose ``expires_at`` is at or before ``before``.

        Decided at commit time under the writer lock (not when staged), so an artifact that was
        re-uploaded with a new TTL, or deleted, between staging and commit is left alone: the
        expiry sweep can never remove a live artifact or fail on a vanished one.
        """
        self.expired_before = before

    def add_tree(self, source: Path, dest: str) -> int:
        """Stage a local directory tree at ``dest``; small files are stored in parallel.

        Returns the number of entries staged. Special files are refused: a stratum 0 of CI
        artifacts has no use for device nodes.
        """
        source = Path(source)
        base = split_path(dest)
        st = source.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidPath(f"{source} is not a directory")
        self.ops.append(_Op("dir", base, Entry(path=catalog_path(base),
                                               mode=stat.S_IFDIR | (st.st_mode & 0o7777),
                                               mtime=int(st.st_mtime))))
        batches: list[tuple[list[tuple[ValidPath, int, int]], Future]] = []
        batch: list[tuple[ValidPath, int, int]] = []
        paths: list[str] = []
        count = 1

        def flush() -> None:
            if batch:
                batches.append((list(batch), self.repo.ingester.ingest_files(list(paths))))
                batch.clear()
                paths.clear()
            while len(batches) > 2 * self.repo.ingester.workers:
                self._record_batch(*batches.pop(0))

        for parts, path, st in _walk(source, base):
            count += 1
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                self.ops.append(_Op("dir", parts, Entry(path=catalog_path(parts),
                                                        mode=stat.S_IFDIR | (mode & 0o7777),
                                                        mtime=int(st.st_mtime))))
            elif stat.S_ISLNK(mode):
                self.ops.append(_Op("symlink", parts, Entry(
                    path=catalog_path(parts), mode=stat.S_IFLNK | 0o777,
                    mtime=int(st.st_mtime), symlink=os.readlink(path))))
            elif stat.S_ISREG(mode):
                if st.st_size <= self.repo.ingester.chunk_size:
                    batch.append((parts, mode, int(st.st_mtime)))
                    paths.append(path)
                    if len(batch) >= 64:
                        flush()
                else:
                    with open(path, "rb") as fh:
                        content = self.repo.ingester.ingest(fh)
                    self._record_file(parts, content, mode, int(st.st_mtime))
            else:
                raise InvalidPath(f"{path}: special files are not supported")
        flush()
        for item in batches:
            self._record_batch(*item)
        return count

    def _record_batch(self, batch: list[tuple[ValidPath, int, int]], fut: Future) -> None:
        for (parts, mode, mtime), content in zip(batch, fut.result()):
            self._record_file(parts, content, mode, mtime)

    # -- lifecycle -----------------------------------------------------------------------
    def release(self) -> None:
        """Forget the in-flight marker (after publish or abort)."""
        self.closed = True
        with contextlib.suppress(FileNotFoundError):
            self._marker.unlink()

    def abort(self) -> None:
        """Drop the staged changes; objects already written are left for gc."""
        self.ops.clear()
        self.release()

    def publish(self) -> PublishResult:
        """Commit this transaction alone; raises its error if it was refused."""
        result = self.repo.publish(self)
        err = result.error_for(self)
        if err is not None:
            raise err
        return result

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.abort()


def _walk(root: Path, base: ValidPath) -> Iterator[tuple[ValidPath, str, os.stat_result]]:
    """Depth-first walk yielding (validated repository parts, fs path, lstat), parents first."""
    stack = [(str(root), base)]
    while stack:
        directory, parts = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            child = parts.child(e.name)
            st = e.stat(follow_symlinks=False)
            yield child, e.path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append((e.path, child))


# --------------------------------------------------------------------------------------------
# the repository


_STATE_SCHEMA = """
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
    revision INTEGER NOT NULL
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


def _entry_to_json(e: Entry) -> str:
    return json.dumps({
        "mode": e.mode, "mtime": e.mtime, "size": e.size,
        "digest": e.digest.hex() if e.digest else None,
        "chunks": [[c.offset, c.size, c.digest.hex()] for c in e.chunks],
        "symlink": e.symlink, "compressed": e.compressed, "linkcount": e.linkcount,
    })


def _entry_from_json(name: str, text: str) -> Entry:
    d = json.loads(text)
    return Entry(path="/" + name, mode=d["mode"], mtime=d["mtime"], size=d["size"],
                 digest=bytes.fromhex(d["digest"]) if d["digest"] else None,
                 chunks=tuple(Chunk(o, s, bytes.fromhex(h)) for o, s, h in d["chunks"]),
                 symlink=d["symlink"], compressed=d["compressed"], linkcount=d["linkcount"])


@dataclass
class _Artifact:
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


def content_digest(tree: dict[str, Entry], base: str) -> str:
    """Identity of an artifact's content (names, types, modes, bytes, targets; not mtimes)."""
    lines = []
    cut = len(base)
    for path in sorted(tree):
        e = tree[path]
        content = e.digest.hex() if e.digest else ""
        if e.chunks:
            content += ",".join(f"{c.offset}:{c.size}:{c.digest.hex()}" for c in e.chunks)
        lines.append(f"{path[cut:]}\0{e.mode:o}\0{content}\0{e.symlink}\0{int(e.compressed)}\n")
    return hashlib.sha1("".join(lines).encode("utf-8", "surrogatepass")).hexdigest()


class Repository:
    """A repository in ``data_dir`` signed with the keys in ``keys_dir``.

    Thread-safe: staging may run in many threads; commits are serialized by an in-process lock
    plus an exclusive ``flock`` on ``writer.lock`` (one writer across processes).
    """

    def __init__(self, data_dir: Path, keys_dir: Path, config: RepositoryConfig, *,
                 clock: Callable[[], float] = time.time, lock_timeout: float = 30.0):
        self.config = config
        self.fqrn = validate_fqrn(config.fqrn)
        self.data_dir = Path(data_dir)
        self.keys_dir = Path(keys_dir)
        self.public_dir = self.data_dir / "public" / self.fqrn
        self.meta_dir = self.data_dir / "meta"
        self.private_dir = self.data_dir / "private" / self.fqrn
        self.clock = clock
        self.lock_timeout = lock_timeout
        self.store = ObjectStore(self.public_dir)
        self._ingester: Ingester | None = None
        self._ingester_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._keys: keys_mod.RepositoryKeys | None = None
        self._cache: tuple[int, dict[str, _Artifact]] | None = None
        self.listeners: list[Callable[[PublishResult], None]] = []

    # -- paths and basic state ------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.public_dir / ".cvmfspublished"

    @property
    def whitelist_path(self) -> Path:
        return self.public_dir / ".cvmfswhitelist"

    @property
    def state_path(self) -> Path:
        return self.private_dir / "state.db"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    @property
    def ingester(self) -> Ingester:
        with self._ingester_lock:
            if self._ingester is None:
                self._ingester = Ingester(self.store, compressed=self.config.compression == "zlib",
                                          chunk_size=self.config.chunk_size,
                                          level=self.config.compression_level)
            return self._ingester

    def close(self) -> None:
        if self._ingester is not None:
            self._ingester.close()
            self._ingester = None

    @property
    def keys(self) -> keys_mod.RepositoryKeys:
        if self._keys is None:
            self._keys = keys_mod.load(self.keys_dir, self.fqrn)
        return self._keys

    def _db(self) -> sqlite3.Connection:
        self.private_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.state_path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_STATE_SCHEMA)
        return conn

    # -- creation ---------------------------------------------------------------------------
    def init(self) -> bool:
        """Create keys (if absent) and an empty signed repository; False if it already exists.

        Safe to run at every start of a deployment: an existing repository, its keys and its
        revision are left exactly as they are.
        """
        with self.writer_lock():
            keys_mod.create_missing(self.keys_dir, self.fqrn)
            self._keys = None
            self._export_public_keys()
            if self.exists():
                self._recover()
                return False
            self.store.create_skeleton()
            (self.private_dir / "staging").mkdir(parents=True, exist_ok=True)
            replica = self.public_dir / ".cvmfs_master_replica"
            if not replica.exists():
                atomic_write(replica, REPLICA_MARKER)
            if not self.whitelist_path.exists():
                self.write_whitelist(utcnow())
            self._commit([])
            return True

    def _export_public_keys(self) -> None:
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("pub", "crt"):
            src = keys_mod.key_path(self.keys_dir, self.fqrn, suffix)
            dst = self.meta_dir / f"{self.fqrn}.{suffix}"
            data = src.read_bytes()
            if not dst.exists() or dst.read_bytes() != data:
                atomic_write(dst, data)

    def write_whitelist(self, now: dt.datetime, validity: dt.timedelta | None = None) -> bytes:
        """Sign and atomically replace ``.cvmfswhitelist`` (needs the master key)."""
        k = self.keys
        if k.master_key is None:
            raise RepositoryError(f"{self.fqrn}: no master key to sign the whitelist with")
        validity = validity or whitelist_mod.DEFAULT_VALIDITY
        blob = whitelist_mod.make(self.fqrn, [k.fingerprint], k.master_key, now, validity)
        atomic_write(self.whitelist_path, blob)
        return blob

    def whitelist(self) -> whitelist_mod.Whitelist:
        return whitelist_mod.parse(self.whitelist_path.read_bytes())

    # -- locking ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer_lock(self, timeout: float | None = None) -> Iterator[None]:
        """Exclusive writer: in-process lock plus ``flock`` on ``private/<fqrn>/writer.lock``."""
        timeout = self.lock_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not self._commit_lock.acquire(timeout=max(timeout, 0)):
            raise RepositoryLocked(f"repository {self.fqrn} is busy (commit in progress)")
        try:
            self.private_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.private_dir / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                            raise
                        if time.monotonic() >= deadline:
                            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                            raise RepositoryLocked(
                                f"repository {self.fqrn} is locked by another writer"
                                f" (pid {holder or '?'}); try again later") from None
                        time.sleep(0.01)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                yield
            finally:
                os.close(fd)  # releases the flock
        finally:
            self._commit_lock.release()

    # -- reading state ---------------------------------------------------------------------
    def begin(self) -> Transaction:
        if not self.exists():
            raise NotInitialized(f"repository {self.fqrn} does not exist; run init first")
        return Transaction(self)

    def manifest_bytes(self) -> bytes:
        return self.manifest_path.read_bytes()

    def manifest(self) -> manifest_mod.Manifest:
        return manifest_mod.parse(self.manifest_bytes())

    def revision(self) -> int:
        return self.manifest().revision

    @staticmethod
    def _generation(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def _load_artifacts(self, conn: sqlite3.Connection) -> dict[str, _Artifact]:
        """Every artifact row, decoded once per state generation.

        The root catalog is rebuilt from all rows at every commit, so decoding them again each
        time would make a one-file publish cost grow with the repository. Any writer (this
        process or another) bumps ``generation`` in the same SQLite transaction as its rows, so
        the cache is reused exactly while the rows are unchanged. The rows are shared: callers
        copy an artifact before changing it.
        """
        generation = self._generation(conn)
        cached = self._cache
        if cached is None or cached[0] != generation:
            cached = (generation, self._read_artifacts(conn))
            self._cache = cached
        return dict(cached[1])

    def _read_artifacts(self, conn: sqlite3.Connection) -> dict[str, _Artifact]:
        out = {}
        for row in conn.execute(
            "SELECT name, entry, catalog_hash, catalog_size, counters, content_digest, size,"
            " files, created_at, expires_at, revision FROM artifacts"
        ):
            name = row[0]
            out[name] = _Artifact(
                name=name, top=_entry_from_json(name, row[1]), catalog_hash=row[2],
                catalog_size=row[3],
                counters=Counters.from_json(json.loads(row[4])) if row[4] else None,
                content_digest=row[5], size=row[6], files=row[7], created_at=row[8],
                expires_at=row[9], revision=row[10])
        return out

    def artifacts(self) -> list[ArtifactInfo]:
        with contextlib.closing(self._db()) as conn:
            arts = self._load_artifacts(conn)
        return [ArtifactInfo(a.name, _kind(a.top), a.size, a.files, a.created_at, a.expires_at,
                             a.revision, a.content_digest, a.catalog_hash)
                for a in sorted(arts.values(), key=lambda a: a.name)]

    def artifact(self, name: str) -> ArtifactInfo:
        for a in self.artifacts():
            if a.name == name:
                return a
        raise ArtifactNotFound(f"artifact {name!r} not found in {self.fqrn}")

    def artifact_tree(self, name: str) -> dict[str, Entry]:
        """Every entry of a published artifact, keyed by full path (for downloads)."""
        with contextlib.closing(self._db()) as conn:
            arts = self._load_artifacts(conn)
        if name not in arts:
            raise ArtifactNotFound(f"artifact {name!r} not found in {self.fqrn}")
        return self._tree_of(arts[name])

    def revisions(self) -> list[dict]:
        """Published revisions recorded in state, newest first (gc retention uses them)."""
        with contextlib.closing(self._db()) as conn:
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
        with contextlib.closing(self._db()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            (newest,) = conn.execute("SELECT MAX(revision) FROM revisions").fetchone()
            doomed = [(r,) for r in revisions if r != newest]
            before = conn.total_changes
            conn.executemany("DELETE FROM revisions WHERE revision=?", doomed)
            deleted = conn.total_changes - before
            conn.execute("COMMIT")
        return deleted

    def inflight_since(self) -> float | None:
        """Start time of the oldest transaction still staging in a live process, if any."""
        oldest = None
        staging = self.private_dir / "staging"
        if not staging.is_dir():
            return None
        for marker in staging.iterdir():
            try:
                pid = int(marker.read_text().split()[0])
                mtime = marker.stat().st_mtime
            except (OSError, ValueError, IndexError):
                continue
            if not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    marker.unlink()
                continue
            oldest = mtime if oldest is None else min(oldest, mtime)
        return oldest

    # -- commit -------------------------------------------------------------------------------
    def publish(self, *transactions: Transaction) -> PublishResult:
        """Commit several transactions as one new revision (group commit).

        A transaction whose constraints fail (name exists, path missing …) is left out and its
        error reported in ``errors``; the others still publish. Returns without a new revision
        when nothing changes (e.g. identical content re-uploaded: only the TTL moves).
        """
        try:
            with self.writer_lock():
                result = self._commit(list(transactions))
        finally:
            for tx in transactions:
                tx.release()
        if result.new_revision:
            self._notify(result)
        return result

    def _notify(self, result: PublishResult) -> None:
        """Tell listeners (the notification gateway) about a new revision, after the lock."""
        for listener in list(self.listeners):
            try:
                listener(result)
            except Exception:  # noqa: BLE001 - a notifier must never undo a publish
                logging.getLogger(__name__).exception("publish listener failed")

    def _recover(self) -> None:
        """Roll a pending revision forward (crash between state commit and manifest rename)."""
        with contextlib.closing(self._db()) as conn:
            rows = conn.execute("SELECT revision, manifest FROM revisions WHERE state='pending'"
                                " ORDER BY revision").fetchall()
            for revision, blob in rows:
                served = self.manifest().revision if self.exists() else -1
                if revision > served:
                    atomic_write(self.manifest_path, bytes(blob))
                conn.execute("UPDATE revisions SET state='published' WHERE revision=?",
                             (revision,))

    def _tree_of(self, art: _Artifact) -> dict[str, Entry]:
        """The artifact's entries by full path: its own row, or its nested catalog read back."""
        if art.catalog_hash is None:
            return {art.top.path: art.top}
        content = read_catalog(self.store.read_inflated(art.catalog_hash, CATALOG))
        marker = f"{art.top.path}/{MARKER_NAME}"
        return {e.path: e for e in content.entries if e.path != marker}

    def _apply(self, tx: Transaction, arts: dict[str, _Artifact | None],
               work: dict[str, dict[str, Entry] | None], now: int) -> None:
        """Replay ``tx``'s operations onto ``work`` (artifact name -> tree, None = removed)."""
        for name in tx.require_absent:
            current = work[name] if name in work else (arts.get(name) and True)
            if current:
                raise ArtifactExists(f"artifact {name!r} already exists in {self.fqrn}")
        for op in tx.ops:
            name = op.parts[0]
            if name not in work:
                art = arts.get(name)
                work[name] = dict(self._tree_of(art)) if art else None
            tree = work[name]
            path = catalog_path(op.parts)
            if op.kind == "remove":
                if tree is None or path not in tree:
                    raise ArtifactNotFound(f"{path.lstrip('/')} not found in {self.fqrn}")
                prefix = path + "/"
                for p in [p for p in tree if p == path or p.startswith(prefix)]:
                    del tree[p]
                if not tree:
                    work[name] = None
                continue
            if tree is None:
                tree = work[name] = {}
            # A tree holds the ancestors of each of its entries, so a parent directory that
            # is present means every ancestor is (the common case: one lookup per entry).
            parent_entry = tree.get(path[:path.rfind("/")])
            if parent_entry is None or not parent_entry.is_dir:
                for i in range(1, len(op.parts)):
                    parent = catalog_path(op.parts[:i])
                    existing = tree.get(parent)
                    if existing is None:
                        tree[parent] = Entry(path=parent, mode=stat.S_IFDIR | 0o755, mtime=now)
                    elif not existing.is_dir:
                        raise InvalidPath(f"{parent.lstrip('/')} is not a directory")
            old = tree.get(path)
            if old is not None and old.is_dir and op.kind != "dir":
                prefix = path + "/"
                for p in [p for p in tree if p.startswith(prefix)]:
                    del tree[p]
            assert op.entry is not None
            tree[path] = op.entry

    @staticmethod
    def _expired(arts: dict[str, _Artifact], work: dict[str, dict[str, Entry] | None],
                 expiry: dict[str, float | None], before: float) -> list[str]:
        """Artifacts present in ``work`` over ``arts`` whose expiry is at or before ``before``."""
        out = []
        for name in set(arts) | set(work):
            if name in work and work[name] is None:
                continue  # already removed by an earlier transaction of the group
            exp = expiry[name] if name in expiry else (
                arts[name].expires_at if name in arts else None)
            if exp is not None and exp <= before:
                out.append(name)
        return out

    def _commit(self, transactions: list[Transaction]) -> PublishResult:
        started = time.perf_counter()
        self._recover()
        early_sync = self.store.start_sync() if transactions else None
        now_f = self.clock()
        now = int(now_f)
        conn = self._db()
        committed = False
        try:
            arts = self._load_artifacts(conn)
            work: dict[str, dict[str, Entry] | None] = {}
            expiry: dict[str, float | None] = {}
            errors: dict[int, Exception] = {}
            for tx in transactions:
                trial = {k: (dict(v) if v is not None else None) for k, v in work.items()}
                try:
                    if tx.expired_before is not None:
                        for name in self._expired(arts, trial, expiry, tx.expired_before):
                            trial[name] = None
                    self._apply(tx, arts, trial, now)
                    for name in tx.expiry:
                        present = trial[name] is not None if name in trial else name in arts
                        if not present:
                            raise ArtifactNotFound(f"artifact {name!r} not found in {self.fqrn}")
                except (RepositoryError, KeyError) as exc:
                    errors[id(tx)] = exc
                    continue
                work = trial
                expiry.update(tx.expiry)

            changed, removed, refreshed = [], [], []
            new_rows: dict[str, _Artifact | None] = {}
            for name, tree in sorted(work.items()):
                old = arts.get(name)
                if tree is None:
                    if old is not None:
                        new_rows[name] = None
                        removed.append(name)
                    continue
                digest = content_digest(tree, "/" + name)
                if old is not None and digest == old.content_digest:
                    old = copy.copy(old)
                    old.expires_at = expiry.get(name, old.expires_at)
                    new_rows[name] = old
                    refreshed.append(name)
                    continue
                new_rows[name] = self._stage_artifact(
                    name, tree, digest, old, now,
                    expiry.get(name, old.expires_at if old else None))
                changed.append(name)
            for name, exp in expiry.items():
                if name not in work and name in arts:
                    new_rows[name] = copy.copy(arts[name])
                    new_rows[name].expires_at = exp
                    refreshed.append(name)

            served = self.manifest() if self.exists() else None
            needs_revision = served is None or bool(changed or removed)
            if not needs_revision:
                self._write_rows(conn, new_rows, revision=None)
                self._cache = None
                committed = True
                return PublishResult(served.revision, served.root_hash, served.timestamp,
                                     self.manifest_bytes(), [], [], sorted(refreshed), errors,
                                     new_revision=False,
                                     publish_time_s=time.perf_counter() - started)

            final = dict(arts)
            for name, art in new_rows.items():
                if art is None:
                    final.pop(name, None)
                else:
                    final[name] = art
            last = max([served.revision if served else 0] + [
                r for (r,) in conn.execute("SELECT MAX(revision) FROM revisions") if r])
            revision = max(last + 1, now)
            timestamp = max(now, served.timestamp if served else 0)
            for name in changed:
                final[name].revision = revision
            if early_sync is not None:
                early_sync.join()
            manifest_blob, root_hash, root_size = self._build_root(
                final, revision, timestamp, served.root_hash if served else None)
            conn.execute("BEGIN IMMEDIATE")
            self._write_rows(conn, new_rows, revision=revision, in_tx=True)
            m = manifest_mod.parse(manifest_blob)
            conn.execute(
                "INSERT OR REPLACE INTO revisions VALUES (?,?,?,?,?,?,?, 'pending')",
                (revision, root_hash, root_size, m.certificate_hash, timestamp, now_f,
                 manifest_blob))
            generation = self._generation(conn)
            conn.execute("COMMIT")
            committed = True
            self._cache = (generation, final)
            atomic_write(self.manifest_path, manifest_blob)
            conn.execute("UPDATE revisions SET state='published' WHERE revision=?", (revision,))
        finally:
            if not committed:
                self._cache = None  # rows may have been modified in place before the failure
            conn.close()
        return PublishResult(revision, root_hash, timestamp, manifest_blob, changed, removed,
                             sorted(refreshed), errors,
                             publish_time_s=time.perf_counter() - started)

    def _write_rows(self, conn: sqlite3.Connection, rows: dict[str, _Artifact | None], *,
                    revision: int | None, in_tx: bool = False) -> None:
        if not in_tx:
            conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO meta VALUES ('generation', 1) ON CONFLICT(key) DO UPDATE"
                     " SET value = value + 1")
        for name, art in rows.items():
            if art is None:
                conn.execute("DELETE FROM artifacts WHERE name=?", (name,))
                continue
            conn.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (name, _kind(art.top), _entry_to_json(art.top), art.catalog_hash,
                 art.catalog_size,
                 json.dumps(art.counters.to_json()) if art.counters else None,
                 art.content_digest, art.size, art.files, art.created_at, art.expires_at,
                 art.revision))
        if not in_tx:
            conn.execute("COMMIT")

    def _stage_artifact(self, name: str, tree: dict[str, Entry], digest: str,
                        old: _Artifact | None, now: int, expires_at: float | None) -> _Artifact:
        """Build the nested catalog of a directory artifact (or keep a file/link as a row)."""
        top_path = "/" + name
        top = tree[top_path]
        size = sum(e.size for e in tree.values() if e.is_regular)
        files = sum(1 for e in tree.values() if e.is_regular)
        created = old.created_at if old is not None else float(self.clock())
        if not top.is_dir:
            return _Artifact(name, top, None, None, None, digest, size, files, created,
                             expires_at, 0)
        compressed = self.config.compression == "zlib"
        empty = self.store.put_content(b"", "", compressed)
        marker = Entry(path=f"{top_path}/{MARKER_NAME}", mode=stat.S_IFREG | 0o644, mtime=now,
                       size=0, digest=empty.digest, compressed=compressed, hidden=True)
        entries = sorted(tree.values(), key=lambda e: e.path)
        built = build_catalog(entries + [marker], root_path=top_path, properties={
            "root_prefix": top_path, "last_modified": now, "revision": 1})
        obj = self.store.put(compress(built.data), CATALOG)
        subdirs = sum(1 for e in tree.values() if e.is_dir and e.path != top_path
                      and e.path.rfind("/") == len(top_path))
        mount = Entry(path=top_path, mode=top.mode, mtime=top.mtime, size=top.size,
                      uid=top.uid, gid=top.gid, linkcount=2 + subdirs)
        return _Artifact(name, mount, obj.hex, len(built.data), built.counters, digest, size,
                         files, created, expires_at, 0)

    def _build_root(self, arts: dict[str, _Artifact], revision: int, timestamp: int,
                    previous_root: str | None) -> tuple[bytes, str, int]:
        """Root catalog from the artifact rows, certificate object, synced store, signed manifest."""
        entries = [Entry(path="", mode=stat.S_IFDIR | 0o755, mtime=timestamp)]
        nested = []
        for name in sorted(arts):
            art = arts[name]
            entries.append(art.top)
            if art.catalog_hash:
                nested.append(NestedRef(art.top.path, art.catalog_hash, art.catalog_size or 0,
                                        art.counters or Counters()))
        props: dict[str, str | int] = {}
        if self.config.volatile:
            props["volatile"] = 1
        props.update({"TTL": self.config.ttl_s, "last_modified": timestamp, "revision": revision})
        if previous_root:
            props["previous_revision"] = previous_root
        built = build_catalog(entries, root_path="", properties=props, nested=nested)
        root = self.store.put(compress(built.data), CATALOG)
        k = self.keys
        if k.repository_key is None:
            raise RepositoryError(f"{self.fqrn}: no repository key to sign the manifest with")
        cert = self.store.put(compress(k.certificate_pem), CERTIFICATE)
        self.store.sync()
        m = manifest_mod.Manifest(
            root_hash=root.hex, root_size=len(built.data), ttl=self.config.ttl_s,
            revision=revision, fqrn=self.fqrn, certificate_hash=cert.hex, timestamp=timestamp,
            garbage_collectable=self.config.garbage_collectable)
        return m.sign(k.repository_key), root.hex, len(built.data)

    # -- reporting ----------------------------------------------------------------------------
    def info(self, now: dt.datetime | None = None) -> dict:
        """Revision, whitelist expiry, object count and bytes (``python -m runtime info``)."""
        now = now or utcnow()
        m = self.manifest()
        wl = self.whitelist()
        count = size = 0
        for _hex, _suffix, st in self.store.iter_objects():
            count += 1
            size += st.st_size
        arts = self.artifacts()
        return {
            "fqrn": self.fqrn, "revision": m.revision, "root_hash": m.root_hash,
            "timestamp": m.timestamp, "whitelist_expires": wl.expires.isoformat(),
            "whitelist_seconds_left": int(wl.seconds_left(now)),
            "objects": count, "bytes": size, "artifacts": len(arts),
            "artifact_bytes": sum(a.size for a in arts),
            "compression": self.config.compression, "ttl_s": self.config.ttl_s,
        }


def _kind(e: Entry) -> str:
    return "dir" if e.is_dir else "symlink" if e.is_symlink else "file"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "ArtifactExists", "ArtifactInfo", "ArtifactNotFound", "InvalidPath", "NotInitialized",
    "PublishResult", "Repository", "RepositoryError", "RepositoryLocked", "StagedFile",
    "Transaction", "ValidPath", "atomic_write", "split_path", "validate_artifact_name",
]
