"""Garbage collection: delete the objects no retained revision references, while uploads go on.

Retention
    The newest revision, plus every revision that stopped being current less than the grace
    period ago (default ``2 x TTL + 300 s``; ``CVMFS_EPHEMERAL_GC_GRACE_S``). Retention counts
    from when a revision was *superseded*, not from when it was published: a client (or a
    stratum 1) keeps reading a revision for up to a TTL plus the kernel-cache timeout after the
    next one appears (docs/cvmfs-format.md, "Revisions"), however old the revision itself is. A repository that is
    not garbage-collectable (manifest ``G=no``) retains every revision and only loses objects
    that no revision ever referenced (aborted uploads, orphans of crashed commits).

Mark
    The root catalog, certificate (``X``) and every catalog reachable from each retained root,
    plus the objects those catalogs name. Catalogs are content-addressed (a Merkle tree), so a
    nested catalog shared by several retained revisions is read once: the cost follows the live
    data and the retained revisions, never all history (revision rows outside retention are
    pruned from ``state.db``). What a catalog references is remembered by hash between runs
    (:mod:`runtime.maintenance.catalog_refs`), so a run reads only the catalogs that are new
    since the previous one.

Sweep, without the writer lock
    Uploads and publishes carry on during a sweep. An object is deleted only when it is
    unreferenced by the marked set *and* its mtime is older than the *cutoff*::

        fence  = mtime of a file gc creates in data/txn when it starts (filesystem clock)
        cutoff = min(fence, start of the oldest transaction still staging) - slack

    Why nothing a reader or an upload needs can be lost:

    1. A revision recorded in ``state.db`` before the mark reads the revision table is marked.
    2. An object staged by a transaction alive when gc starts, or begun later, was written (or,
       if it already existed, had its mtime refreshed by ``ObjectStore.put``) after that
       transaction's start, so its mtime is at or after the cutoff. The transaction's marker
       disappears only after its commit is recorded, and gc reads the markers *before* the
       revision table: a transaction that finished in between is covered by (1). A marker
       stops counting when its process is dead or it was not touched for the body idle
       timeout (``runtime/repository/markers.py``); such a transaction can never be recorded,
       since a commit must find its marker younger than half that timeout right before the
       commit point.
    3. Catalogs and the certificate written by a commit that is recorded after the mark are
       written after the start of the transactions it commits (2). Everything else a new
       revision references it inherits from the revision current at the mark, which is marked.
    4. The check-then-delete race (``put`` finds an old object and refreshes it while gc
       decides to delete it) is closed by deleting through a rename: gc renames the object into
       ``data/txn/gc-trash.<cutoff>.<name>``, then looks at the renamed inode's mtime. If a
       ``put`` refreshed it before the rename, the mtime is now at or past the cutoff and the
       object is linked back; if the ``put`` comes after the rename it finds no object and
       writes a new one.

    The fence uses the filesystem's own clock, so the coarse timestamps of the kernel (and a
    file server's clock) cannot make a fresh object look older than gc's start; ``slack``
    additionally covers clock steps.

Replication (docs/cvmfs-format.md, "Replication and garbage collection")
    Manifests have ``G=yes`` and only root catalogs carry ``previous_revision``, so
    ``cvmfs_swissknife pull`` skips a missing previous root. The roots of dropped revisions are
    therefore deleted first, newest first, before any nested catalog they reference: the chain
    a stratum 1 follows always ends at a missing root, never at a root whose nested catalogs
    are gone.

Crash safety (a kill at any instant)
    Marking writes nothing. Killed while deleting dropped roots: they are outside retention and
    are deleted again by the next run. Row pruning is one SQLite transaction. Killed in the
    sweep: an object may be left in ``data/txn/gc-trash.*``; the next run first puts back any
    trash file a ``put`` refreshed (mtime at or past the cutoff in its name) and deletes the
    rest. Temp files left by killed writers are removed once older than the cutoff.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterable

from ..cvmfs.catalog import referenced_objects
from ..cvmfs.objects import CATALOG, CERTIFICATE, ObjectStore
from ..repository import Repository, RepositoryError
from .catalog_refs import CatalogRefs
from .joblock import job_lock

log = logging.getLogger(__name__)

#: Default margin over the two-TTL retention (covers the client's 60 s kernel-cache drainout).
GRACE_MARGIN_S = 300
#: Default clock slack subtracted from the cutoff (clock steps, file servers' clocks).
DEFAULT_SLACK_S = 2.0
#: Threads deleting objects (the waits are the filesystem journal's, not the CPU's).
SWEEP_WORKERS = 8
TRASH_PREFIX = "gc-trash."
CACHE_NAME = "gc-catalogs.db"
FENCE_PREFIX = "gc-fence."
#: ``atomic_write`` temp files (``.<name>.tmp.<pid>.<thread>``) in the served directory.
ATOMIC_TMP_RE = re.compile(r"^\..+\.tmp\.\d+\.\d+$")
ATOMIC_TMP_MAX_AGE_S = 3600


class GcError(RepositoryError):
    """GC stopped without deleting anything it could not prove unreferenced."""


@dataclass
class GcResult:
    repository: str
    grace_s: float
    retained_revisions: int = 0
    pruned_revisions: int = 0
    catalogs_marked: int = 0
    catalogs_read: int = 0  # the others were known from earlier runs (catalog_refs)
    referenced_objects: int = 0
    objects_scanned: int = 0
    objects_deleted: int = 0
    bytes_freed: int = 0
    unreferenced_kept_young: int = 0
    temp_files_removed: int = 0
    trash_restored: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def default_grace_s(repo: Repository, configured: int | None = None) -> float:
    """``configured``, else twice the larger of the configured and the published TTL + 300 s."""
    if configured is not None:
        return float(configured)
    ttl = repo.config.ttl_s
    try:
        ttl = max(ttl, repo.manifest().ttl)
    except (OSError, ValueError):
        pass
    return float(2 * ttl + GRACE_MARGIN_S)


def retention(rows: list[dict], now: float, grace_s: float) -> tuple[list[dict], list[dict]]:
    """Split revision rows into (retained, dropped), both newest first.

    The newest row is always retained; any other is retained while the revision that replaced
    it was published less than ``grace_s`` before ``now``.
    """
    rows = sorted(rows, key=lambda r: r["revision"], reverse=True)
    if not rows:
        return [], []
    retained, dropped = [rows[0]], []
    for newer, row in zip(rows, rows[1:]):
        (retained if newer["published_at"] >= now - grace_s else dropped).append(row)
    return retained, dropped


def _catalog_refs(store: ObjectStore, hex_: str):
    """``(objects, nested catalogs)`` of one catalog; None if it is missing."""
    try:
        data = store.read_inflated(hex_, CATALOG)
    except FileNotFoundError:
        return None
    except Exception as exc:  # zlib: we cannot know what it references
        raise GcError(f"catalog {hex_}C is unreadable ({exc}); gc stopped, nothing was "
                      "deleted") from exc
    try:
        return referenced_objects(data)
    except Exception as exc:  # sqlite
        raise GcError(f"catalog {hex_}C is unreadable ({exc}); gc stopped, nothing was "
                      "deleted") from exc


def mark(store: ObjectStore, roots: Iterable[tuple[str, str]], workers: int | None = None,
         cache: CatalogRefs | None = None) -> tuple[set[str], int, int]:
    """Every object reachable from ``(root catalog hex, certificate hex)`` pairs.

    Returns the referenced names (``hex + suffix``), the number of catalogs marked and how many
    of them had to be read (the others came from ``cache``). Each catalog is visited once (a
    Merkle tree: same hash, same content), level by level; the reads run on a few threads
    (inflating and querying release the GIL). A missing catalog is skipped (nothing can be read
    through it); an unreadable one stops gc, since what it references is unknown.
    """
    live: set[str] = set()
    visited: set[str] = set()
    frontier: list[str] = []
    for root_hex, cert_hex in roots:
        live.add(cert_hex + CERTIFICATE)
        if root_hex not in visited:
            visited.add(root_hex)
            frontier.append(root_hex)
    marked = read = 0
    workers = workers or min(4, (os.cpu_count() or 1) + 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="gc-mark") as pool:
        depth = 0
        while frontier:
            level, frontier = frontier, []
            known: dict[str, tuple[list[str], list[str]]] = {}
            misses = []
            # roots (depth 0) are not cached: short-lived, and each one lists every artifact
            use_cache = cache if depth > 0 else None
            depth += 1
            for hex_ in level:
                live.add(hex_ + CATALOG)
                refs = use_cache.get(hex_) if use_cache is not None else None
                if refs is None:
                    misses.append(hex_)
                else:
                    known[hex_] = refs
            fresh = []
            for hex_, refs in zip(misses, pool.map(lambda h: _catalog_refs(store, h), misses)):
                if refs is None:
                    log.warning("catalog %sC of a retained revision is missing; skipped", hex_)
                    continue
                objs, nested = refs
                entry = ([h + s for h, s in objs], [h for _path, h, _size in nested])
                known[hex_] = entry
                fresh.append((hex_, entry))
            read += len(fresh)
            if use_cache is not None:
                use_cache.put_many(fresh)
            for objs, nested in known.values():
                marked += 1
                live.update(objs)
                for h in nested:
                    if h not in visited:
                        visited.add(h)
                        frontier.append(h)
    return live, marked, read


def collect(repo: Repository, *, grace_s: float | None = None, now: float | None = None,
            slack_s: float = DEFAULT_SLACK_S) -> GcResult:
    """Run one garbage collection on ``repo`` (see the module docstring for the argument)."""
    started = time.perf_counter()
    grace = default_grace_s(repo) if grace_s is None else float(grace_s)
    result = GcResult(repo.fqrn, grace)
    with job_lock(repo, "gc"):
        store = repo.store
        store.txn.mkdir(parents=True, exist_ok=True)
        result.trash_restored = _recover_trash(store)

        # Order matters (module docstring, points 1-2): fence, then markers, then revisions.
        fence_ns = _fence(store)
        inflight = repo.inflight_since()
        cutoff_ns = fence_ns if inflight is None else min(fence_ns, int(inflight * 1e9))
        cutoff_ns -= int(slack_s * 1e9) + 1_000_000  # + 1 ms: float rounding of marker times
        rows = repo.revisions()
        served = repo.manifest()

        now = repo.clock() if now is None else now
        if repo.config.garbage_collectable:
            retained, dropped = retention(rows, now, grace)
        else:
            retained, dropped = rows, []
        roots = [(served.root_hash, served.certificate_hash)]
        roots += [(r["root_hash"], r["certificate_hash"]) for r in retained]
        with CatalogRefs(repo.private_dir / CACHE_NAME) as cache:
            live, result.catalogs_marked, result.catalogs_read = mark(store, roots, cache=cache)
            result.retained_revisions = len(retained)
            result.referenced_objects = len(live)

            # Dropped roots first, newest first: pull's previous_revision chain ends at a
            # missing root before any nested catalog of a dropped revision disappears (§8.4).
            for row in dropped:
                if row["root_hash"] + CATALOG not in live:
                    freed = store.delete(row["root_hash"], CATALOG)
                    if freed:
                        result.objects_deleted += 1
                        result.bytes_freed += freed
            result.pruned_revisions = repo.forget_revisions(r["revision"] for r in dropped)

            candidates = []
            for hex_, suffix, st in store.iter_objects():
                result.objects_scanned += 1
                if hex_ + suffix in live:
                    continue
                if st.st_mtime_ns >= cutoff_ns:
                    result.unreferenced_kept_young += 1
                    continue
                candidates.append((hex_, suffix))
            deleted, freed = _sweep(store, candidates, cutoff_ns)
            result.objects_deleted += deleted
            result.bytes_freed += freed
            cache.forget([r["root_hash"] for r in dropped]
                         + [h for h, suffix in candidates if suffix == CATALOG])
        result.temp_files_removed = _remove_stale_temps(repo, cutoff_ns)
    repo.space.ensure_reserve()  # after a full disk: the space reserve file comes back
    result.seconds = round(time.perf_counter() - started, 6)
    log.info("gc %s: %d objects (%d bytes) freed, %d revisions retained, %d pruned, %.2f s",
             repo.fqrn, result.objects_deleted, result.bytes_freed, result.retained_revisions,
             result.pruned_revisions, result.seconds)
    return result


# --------------------------------------------------------------------------------------------
# helpers


def _fence(store: ObjectStore) -> int:
    """The filesystem's notion of "now": the mtime of a file created (and removed) here."""
    path = store.txn / f"{FENCE_PREFIX}{os.getpid()}.{uuid.uuid4().hex}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        os.unlink(path)


def _trash_path(store: ObjectStore, hex_: str, suffix: str, cutoff_ns: int):
    return store.txn / f"{TRASH_PREFIX}{cutoff_ns}.{hex_}{suffix}"


def _condemn(store: ObjectStore, hex_: str, suffix: str, cutoff_ns: int) -> int | None:
    """Delete an object unless a concurrent ``put`` refreshed it; bytes freed or None if kept."""
    final = store.path(hex_, suffix)
    trash = _trash_path(store, hex_, suffix, cutoff_ns)
    try:
        os.rename(final, trash)
    except FileNotFoundError:
        return None
    st = os.stat(trash)
    if st.st_mtime_ns >= cutoff_ns:  # refreshed by put() between our listing and the rename
        _restore(trash, final)
        return None
    os.unlink(trash)
    return st.st_size


def _sweep(store: ObjectStore, candidates: list[tuple[str, str]], cutoff_ns: int,
           workers: int = SWEEP_WORKERS) -> tuple[int, int]:
    """Condemn every candidate; (objects deleted, bytes freed).

    Several threads: on ext4 an unlink of a file whose blocks are on disk waits for the
    journal (~0.2-0.6 ms), and such waits overlap well (3-4x with a few threads).
    """
    deleted = freed = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="gc-sweep") as pool:
        for size in pool.map(lambda c: _condemn(store, c[0], c[1], cutoff_ns), candidates):
            if size is not None:
                deleted += 1
                freed += size
    return deleted, freed


def _restore(trash, final) -> None:
    try:
        os.link(trash, final)
    except FileExistsError:
        pass  # a put() already wrote the object again; same hash, same bytes
    os.unlink(trash)


def _recover_trash(store: ObjectStore) -> int:
    """Finish the sweep of a killed gc: put back refreshed objects, delete the rest."""
    restored = 0
    for entry in os.scandir(store.txn):
        if not entry.name.startswith(TRASH_PREFIX):
            continue
        cutoff_text, _, name = entry.name[len(TRASH_PREFIX):].partition(".")
        try:
            cutoff_ns = int(cutoff_text)
            st = entry.stat()
        except (ValueError, FileNotFoundError):
            continue
        hex_, suffix = name[:40], name[40:]
        if st.st_mtime_ns >= cutoff_ns:
            _restore(entry.path, store.path(hex_, suffix))
            restored += 1
        else:
            os.unlink(entry.path)
    return restored


def _remove_stale_temps(repo: Repository, cutoff_ns: int) -> int:
    """Temp files of killed writers: object temps older than the cutoff, atomic-write temps
    older than an hour (a whitelist re-sign is not a transaction, so no marker protects it)."""
    removed = 0
    for entry in os.scandir(repo.store.txn):
        if entry.name.startswith(TRASH_PREFIX):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime_ns < cutoff_ns:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    old_ns = cutoff_ns - ATOMIC_TMP_MAX_AGE_S * 1_000_000_000
    for entry in os.scandir(repo.public_dir):
        if ATOMIC_TMP_RE.match(entry.name):
            try:
                if entry.stat(follow_symlinks=False).st_mtime_ns < old_ns:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
    return removed
