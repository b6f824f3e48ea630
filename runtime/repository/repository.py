"""One CVMFS repository on disk: its paths, keys, writer lock, state and commits.

Layout under the data directory (nginx serves only ``public/`` and ``meta/``)::

    public/<fqrn>/            the stratum-0 tree: .cvmfspublished, .cvmfswhitelist,
                              .cvmfs_master_replica, data/XX/... (served at /cvmfs/<fqrn>/)
    meta/<fqrn>.pub|.crt      public key and certificate (served at /cvmfs-meta/)
    private/<fqrn>/state.db   artifacts (TTL, catalog hash, counters) and revisions (SQLite, WAL)
    private/<fqrn>/writer.lock
    private/<fqrn>/staging/   one marker per transaction in flight (gc keeps their objects)

Every artifact is one directory (or file) of the repository with its own nested catalog, so a
publish rewrites only the catalogs of the artifacts it touches plus the root catalog, whose rows
are rebuilt from ``state.db`` without reading any other catalog. An artifact is top-level
(``build-42``) or lies in namespaces (``team-a/app/pr-123``): the namespaces are plain
directories of the root catalog, derived from the names at each commit (``commit.py``).

Write path: staging (``transaction.py``: content streamed into objects, no lock; a crash leaves
orphan objects for gc), then the group commit under the writer lock (``commit.py``, which lists
its steps and what a crash at each one leaves).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..cvmfs import keys as keys_mod
from ..cvmfs import manifest as manifest_mod
from ..cvmfs import whitelist as whitelist_mod
from ..cvmfs.catalog import Entry
from ..cvmfs.chunking import Ingester
from ..cvmfs.objects import ObjectStore
from ..settings import RepositoryConfig, validate_fqrn
from .commit import Commit, PublishResult, recover, tree_of
from .errors import (ArtifactNotFound, NotInitialized, RepositoryError, RepositoryLocked,
                     StorageFull)
from .files import atomic_write, utcnow
from .markers import Heartbeat, oldest_live_start
from .names import DEFAULT_MAX_NAME_DEPTH, validate_artifact_name, validate_prefix
from .space import DEFAULT_MIN_FREE_BYTES, SpaceGuard
from .staged import remove_orphan_spills
from .state import ArtifactInfo, ArtifactRow, State, kind_of
from .transaction import Transaction

REPLICA_MARKER = b"This file marks the repository as replicatable to stratum 1 servers\n"
#: Default of ``CVMFS_EPHEMERAL_BODY_IDLE_TIMEOUT_S``.
DEFAULT_BODY_IDLE_TIMEOUT_S = 60

log = logging.getLogger(__name__)


def _info(a: ArtifactRow) -> ArtifactInfo:
    return ArtifactInfo(a.name, kind_of(a.top), a.size, a.files, a.created_at, a.expires_at,
                        a.revision, a.content_digest, a.catalog_hash, a.provenance, a.pinned,
                        a.sha256)


class Repository:
    """A repository in ``data_dir`` signed with the keys in ``keys_dir``.

    Thread-safe: staging may run in many threads; commits are serialized by an in-process lock
    plus an exclusive ``flock`` on ``writer.lock`` (one writer across processes).
    ``min_free_bytes`` is the free-space reserve (``space.py``); ``body_idle_timeout_s`` how
    long a staging marker may go untouched before gc stops waiting for it (``markers.py``);
    ``max_name_depth`` how many segments an artifact name may have (``team-a/app/pr-123``).
    """

    def __init__(self, data_dir: Path, keys_dir: Path, config: RepositoryConfig, *,
                 clock: Callable[[], float] = time.time, lock_timeout: float = 30.0,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
                 body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S,
                 max_name_depth: int = DEFAULT_MAX_NAME_DEPTH):
        self.config = config
        self.fqrn = validate_fqrn(config.fqrn)
        self.data_dir = Path(data_dir)
        self.keys_dir = Path(keys_dir)
        self.public_dir = self.data_dir / "public" / self.fqrn
        self.meta_dir = self.data_dir / "meta"
        self.private_dir = self.data_dir / "private" / self.fqrn
        self.clock = clock
        self.lock_timeout = lock_timeout
        self.body_idle_timeout_s = float(body_idle_timeout_s)
        #: segments an artifact name may have (``names.validate_artifact_name``)
        self.max_name_depth = int(max_name_depth)
        self.store = ObjectStore(self.public_dir)
        self.state = State(self.private_dir / "state.db")
        self.space = SpaceGuard(self.data_dir, min_free_bytes)
        self.heartbeat = Heartbeat(self.body_idle_timeout_s)
        self._ingester: Ingester | None = None
        self._ingester_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._keys: keys_mod.RepositoryKeys | None = None
        self.listeners: list[Callable[[PublishResult], None]] = []
        #: called with (job, report) after each maintenance job run in this process
        #: (``maintenance/housekeeping.run_job``): how the server counts expirations per run
        self.job_listeners: list[Callable[[str, dict], None]] = []

    # -- paths and basic state ------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.public_dir / ".cvmfspublished"

    @property
    def whitelist_path(self) -> Path:
        return self.public_dir / ".cvmfswhitelist"

    @property
    def state_path(self) -> Path:
        return self.state.path

    @property
    def staging_dir(self) -> Path:
        return self.private_dir / "staging"

    @property
    def spill_dir(self) -> Path:
        """Entries of large staged artifacts (``staged.py``)."""
        return self.private_dir / "spill"

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
        self.state.close()

    @property
    def keys(self) -> keys_mod.RepositoryKeys:
        if self._keys is None:
            self._keys = keys_mod.load(self.keys_dir, self.fqrn)
        return self._keys

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
            self.space.ensure_reserve()
            if self.exists():
                recover(self)
                return False
            self.store.create_skeleton()
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            replica = self.public_dir / ".cvmfs_master_replica"
            if not replica.exists():
                atomic_write(replica, REPLICA_MARKER)
            if not self.whitelist_path.exists():
                self.write_whitelist(utcnow())
            Commit(self, []).run()
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
                with contextlib.suppress(OSError):  # a full disk must not block the writer
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

    def _rows(self) -> dict[str, ArtifactRow]:
        with self.state.connection(readonly_ok=True) as conn:
            return self.state.load_artifacts(conn)

    def artifacts(self, prefix: str = "") -> list[ArtifactInfo]:
        """Artifacts by name; with ``prefix`` (a namespace, ``team-a/``) only that subtree.

        A prefix is matched at segment boundaries (``team-a`` never lists ``team-ab``) by a
        range query on ``state.db``'s primary key: only the rows listed are read.
        """
        prefix = validate_prefix(prefix, self.max_name_depth)
        if prefix:
            with self.state.connection(readonly_ok=True) as conn:
                rows = self.state.rows_under(conn, prefix)
        else:
            rows = sorted(self._rows().values(), key=lambda a: a.name)
        return [_info(a) for a in rows]

    def artifact(self, name: str) -> ArtifactInfo:
        row = self._rows().get(name)
        if row is None:
            raise ArtifactNotFound(f"artifact {name!r} not found in {self.fqrn}")
        return _info(row)

    def is_namespace(self, name: str) -> bool:
        """Some artifact lies under ``name`` (``a`` for ``a/b``): it is a namespace."""
        name = validate_artifact_name(name, self.max_name_depth)
        with self.state.connection(readonly_ok=True) as conn:
            return self.state.has_rows_under(conn, name)

    def artifact_tree(self, name: str) -> dict[str, Entry]:
        """Every entry of a published artifact, keyed by full path (for downloads)."""
        arts = self._rows()
        if name not in arts:
            raise ArtifactNotFound(f"artifact {name!r} not found in {self.fqrn}")
        return tree_of(self, arts[name])

    def revisions(self) -> list[dict]:
        """Published revisions recorded in state, newest first (gc retention uses them)."""
        return self.state.revisions()

    def forget_revisions(self, revisions: Iterable[int]) -> int:
        """Delete revision rows (gc prunes those outside retention); never the newest one."""
        return self.state.forget_revisions(revisions)

    def inflight_since(self) -> float | None:
        """Start of the oldest transaction that still counts for gc's cut-off (``markers.py``).

        Markers of dead processes and markers idle for longer than the body idle timeout do
        not count (and are removed).
        """
        oldest = oldest_live_start(self.staging_dir, self.body_idle_timeout_s)
        live = {p.name for p in self.staging_dir.iterdir()} if self.staging_dir.is_dir() else set()
        remove_orphan_spills(self.spill_dir, live)
        return oldest

    # -- commit -------------------------------------------------------------------------------
    def publish(self, *transactions: Transaction,
                release_on_error: bool = True) -> PublishResult:
        """Commit several transactions as one new revision (group commit).

        A transaction whose constraints fail (name exists, path missing …) is left out and its
        error reported in ``errors``; the others still publish. Returns without a new revision
        when nothing changes (e.g. identical content re-uploaded: only the TTL moves). If the
        commit as a whole fails, the transactions stay open when ``release_on_error`` is False
        (the group committer retries them without the one at fault).
        """
        try:
            with self.writer_lock():
                result = self._commit(list(transactions))
        except BaseException:
            if release_on_error:
                for tx in transactions:
                    tx.release()
            raise
        for tx in transactions:
            tx.release()
        if result.new_revision:
            self._notify(result)
        return result

    def _commit(self, transactions: list[Transaction]) -> PublishResult:
        """``Commit.run``; a commit that only removes artifacts may use the reserve file.

        On a disk filled by someone else, deleting is how space comes back: such a commit that
        fails for lack of space gives up ``private/space.reserve`` and runs once more.
        """
        try:
            return Commit(self, transactions).run()
        except StorageFull:
            if not all(tx.stages_no_content for tx in transactions) or \
                    not self.space.release_reserve():
                raise
            log.warning("%s: disk full; released the space reserve file to remove artifacts",
                        self.fqrn)
            return Commit(self, transactions).run()

    def _notify(self, result: PublishResult) -> None:
        """Tell listeners (the notification gateway) about a new revision, after the lock."""
        for listener in list(self.listeners):
            try:
                listener(result)
            except Exception:  # noqa: BLE001 - a notifier must never undo a publish
                log.exception("publish listener failed")

    def recover(self) -> None:
        """Roll a recorded but unserved revision forward (``commit.py`` step 6)."""
        with self.writer_lock():
            recover(self)

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
