"""One group commit: the steps that turn staged transactions into a signed revision.

Run under the writer lock (``Repository.publish``); each step says what a crash leaves:

1. **recover**: roll a pending revision forward (a crash between steps 5 and 6 of an earlier
   commit).
2. **replay** each transaction, in order, on the current artifacts. A transaction that fails
   (name taken, path missing, a name that would be both an artifact and a namespace,
   abandoned, over its namespace's quota, or any error at all) is left out with its own
   error; the others go on. A transaction's ``keep_last`` removes the older siblings right
   here, as deleted artifacts of the same replay, so they go in the revision that publishes
   the upload (or not at all). Nothing is written.
3. **stage artifacts**: build and store the nested catalog of every changed directory artifact.
   Crash: orphan objects only (gc).
4. **build the root**: root catalog from the artifact rows, certificate, one ``syncfs`` that
   makes every object durable, the signed manifest. Crash: orphans only.
5. **record** (the commit point): the artifact rows and the manifest, as a *pending* revision,
   in one SQLite transaction. Each transaction's marker is checked right before it, so a
   transaction gc gave up on can never be recorded.
6. **publish the manifest**: temp file, fsync, rename over ``.cvmfspublished``, then the
   revision is marked published. A failure here (full disk) does not undo the commit: the
   revision is recorded, the answer is success, and the manifest is rolled forward by the next
   commit or start. Clients only ever see a complete, signed revision.

SQLite's "database or disk is full" becomes :class:`StorageFull` (507); ENOSPC before the
commit point stays an ``OSError`` the upload API also answers with 507. Either way nothing was
published.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..cvmfs import manifest as manifest_mod
from ..cvmfs.catalog import (Counters, Entry, NestedRef, build_catalog, read_catalog,
                             write_nested_catalog)
from ..cvmfs.objects import CATALOG, CERTIFICATE, compress, compressor
from .errors import (ArtifactExists, ArtifactNotFound, InvalidPath, QuotaExceeded,
                     RepositoryError, StorageFull)
from .files import atomic_write
from .names import MARKER_NAME, catalog_path, namespaces_of, parent_namespace, top_namespace
from .staged import StagedTree
from .state import ArtifactRow, State, full_disk_is_storage_full, summarize

if TYPE_CHECKING:
    import sqlite3

    from .repository import Repository
    from .transaction import Transaction

log = logging.getLogger(__name__)

#: An artifact's tree while a commit replays onto it: full path -> entry (None: removed).
Tree = dict[str, Entry]


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


def recover(repo: "Repository") -> None:
    """Roll a pending revision forward (crash between state commit and manifest rename)."""
    with repo.state.connection() as conn:
        rows = conn.execute("SELECT revision, manifest FROM revisions WHERE state='pending'"
                            " ORDER BY revision").fetchall()
        for revision, blob in rows:
            served = repo.manifest().revision if repo.exists() else -1
            if revision > served:
                atomic_write(repo.manifest_path, bytes(blob))
            conn.execute("UPDATE revisions SET state='published' WHERE revision=?",
                         (revision,))


def _path_of(e: Entry) -> str:
    return e.path


def store_catalog_file(repo: "Repository", raw: Path) -> tuple[str, int]:
    """Compress the catalog file ``raw`` into a ``C`` object piece by piece: (hex, raw size).

    The compressed bytes go to a temp file in ``data/txn`` and are renamed to their name; an
    object already there with the right size is kept and its mtime refreshed, as
    ``ObjectStore.put`` does (gc spares what a commit is about to reference).
    """
    store = repo.store
    tmp = store.txn / f"catalog.{os.getpid()}.{uuid.uuid4().hex}.C"
    sha, packer = hashlib.sha1(), compressor()
    raw_size = stored = 0
    try:
        with open(raw, "rb") as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                raw_size += len(block)
                for piece in (packer.compress(block),):
                    sha.update(piece)
                    dst.write(piece)
                    stored += len(piece)
            piece = packer.flush()
            sha.update(piece)
            dst.write(piece)
            stored += len(piece)
        hex_ = sha.hexdigest()
        final = store.path(hex_, CATALOG)
        try:
            if final.stat().st_size == stored:
                os.utime(final)
                return hex_, raw_size
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
        return hex_, raw_size
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def tree_of(repo: "Repository", art: ArtifactRow) -> Tree:
    """The artifact's entries by full path: its own row, or its nested catalog read back."""
    if art.catalog_hash is None:
        return {art.top.path: art.top}
    content = read_catalog(repo.store.read_inflated(art.catalog_hash, CATALOG))
    marker = f"{art.top.path}/{MARKER_NAME}"
    return {e.path: e for e in content.entries if e.path != marker}


class Commit:
    """The steps of one group commit of ``transactions`` (module docstring)."""

    def __init__(self, repo: "Repository", transactions: list["Transaction"]):
        self.repo, self.transactions = repo, transactions
        self.started = time.perf_counter()
        self.now_f = repo.clock()
        self.now = int(self.now_f)
        self.arts: dict[str, ArtifactRow] = {}
        self.work: dict[str, Tree | None] = {}
        self.expiry: dict[str, float | None] = {}
        #: provenance of the accepted transactions' artifacts (``Transaction.set_provenance``)
        self.provenance: dict[str, dict | None] = {}
        # -- retention: pins, sha256 and keep_last of the accepted transactions --
        self.pins: dict[str, bool] = {}
        self.sha256: dict[str, str | None] = {}
        #: artifacts replaced by accepted transactions, in order (newest = highest)
        self.fresh: dict[str, int] = {}
        self.errors: dict[int, Exception] = {}
        self.accepted: list["Transaction"] = []
        self.new_rows: dict[str, ArtifactRow | None] = {}
        self.changed: list[str] = []
        self.removed: list[str] = []
        self.refreshed: list[str] = []
        self._namespaces: dict[str, int] | None = None

    def run(self) -> PublishResult:
        """Steps 1-6; a full disk before the commit point is :class:`StorageFull` (507)."""
        try:
            return self._run()
        except OSError as exc:
            if isinstance(exc, StorageFull) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise StorageFull("the server's storage is full (no space left on device);"
                              " nothing was published, retry later") from exc

    def _run(self) -> PublishResult:
        repo = self.repo
        recover(repo)
        early_sync = repo.store.start_sync() if self.transactions else None
        conn = repo.state.connect()
        committed = False
        try:
            with full_disk_is_storage_full("commit"):
                self.arts = repo.state.load_artifacts(conn)
                self.replay()
                self.stage_artifacts()
                served = repo.manifest() if repo.exists() else None
                if served is not None and not (self.changed or self.removed):
                    self.check_markers()
                    repo.state.write_rows(conn, self.new_rows)
                    repo.state.invalidate()
                    committed = True
                    return PublishResult(
                        served.revision, served.root_hash, served.timestamp,
                        repo.manifest_bytes(), [], [], sorted(self.refreshed), self.errors,
                        new_revision=False, publish_time_s=time.perf_counter() - self.started)
                final = self.final_rows()
                revision, timestamp = self.next_revision(conn, served)
                for name in self.changed:
                    final[name].revision = revision
                if early_sync is not None:
                    early_sync.join()
                manifest_blob, root_hash, root_size = self.build_root(
                    final, revision, timestamp, served.root_hash if served else None)
                self.check_markers()
                self.record(conn, revision, timestamp, manifest_blob, root_hash, root_size,
                            final)
                committed = True
            self.publish_manifest(conn, revision, manifest_blob)
        finally:
            if not committed:
                repo.state.invalidate()  # rows may have been modified in place
            conn.close()
        return PublishResult(revision, root_hash, timestamp, manifest_blob, self.changed,
                             self.removed, sorted(self.refreshed), self.errors,
                             publish_time_s=time.perf_counter() - self.started)

    # -- step 2: replay ------------------------------------------------------------------
    def replay(self) -> None:
        for tx in self.transactions:
            trial = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.work.items()}
            try:
                tx.check_alive()
                if tx.expired_before is not None:
                    for name in self.expired(trial, tx.expired_before):
                        trial[name] = None
                self.apply(tx, trial)
                self.check_names(tx, trial)
                for name in [*tx.expiry, *tx.pins]:
                    present = trial[name] is not None if name in trial else name in self.arts
                    if not present:
                        raise ArtifactNotFound(
                            f"artifact {name!r} not found in {self.repo.fqrn}")
                tx.pruned = self.keep_last(tx, trial)
                self.check_quota(tx, trial)
            except Exception as exc:  # noqa: BLE001 - one transaction never fails another
                if not isinstance(exc, (RepositoryError, KeyError)):
                    log.exception("transaction %s refused while replayed", tx.id)
                self.errors[id(tx)] = exc
                continue
            self.work = trial
            self.expiry.update(tx.expiry)
            for name in tx.staged:  # replaced whole: the previous uploader's record goes
                self.provenance[name] = tx.provenance.get(name)
            self.provenance.update(tx.provenance)
            self.pins.update(tx.pins)
            for name in tx.staged:
                self.sha256[name] = tx.sha256.get(name)
                self.fresh[name] = len(self.fresh) + 1
            self.accepted.append(tx)

    # -- retention: keep_last and quotas, decided on the replayed state -------------------
    def present(self, work: dict[str, Tree | None]) -> list[str]:
        """Names of the artifacts that exist once ``work`` is applied."""
        return [n for n in set(self.arts) | set(work) if self.live(work, n)]

    def pinned(self, name: str, tx: "Transaction") -> bool:
        if name in tx.pins:
            return tx.pins[name]
        if name in self.pins:
            return self.pins[name]
        return bool(name in self.arts and self.arts[name].pinned)

    def newness(self, name: str) -> tuple:
        """Sort key, newest highest: replaced in this commit (in order), else the revision it
        last changed in, then its creation time."""
        if name in self.fresh:
            return (1, self.fresh[name], 0.0, name)
        art = self.arts[name]
        return (0, art.revision, art.created_at, name)

    def keep_last(self, tx: "Transaction", work: dict[str, Tree | None]) -> list[str]:
        """Apply ``tx.keep_last`` onto ``work``: older unpinned siblings removed (the same path
        as a deleted artifact, so they go in this very revision); returns their names."""
        pruned: list[str] = []
        for name, count in tx.keep_last.items():
            parent = parent_namespace(name)
            siblings = [n for n in self.present(work) if n != name and n not in tx.staged
                        and parent_namespace(n) == parent and not self.pinned(n, tx)]
            siblings.sort(key=self.newness, reverse=True)
            keep = count if self.pinned(name, tx) else count - 1
            for doomed in siblings[keep:]:
                work[doomed] = None
                pruned.append(doomed)
        return sorted(pruned)

    def tree_size(self, name: str, work: dict[str, Tree | None]) -> int:
        if name not in work:
            return self.arts[name].size
        tree = work[name]
        if isinstance(tree, StagedTree):
            return tree.regular_bytes()
        return sum(e.size for e in (tree or {}).values() if e.is_regular)

    def check_quota(self, tx: "Transaction", work: dict[str, Tree | None]) -> None:
        """Refuse ``tx`` (413) when a top-level namespace it uploads into would hold more
        than the repository's quota once it is applied. Runs under the writer lock on the
        replayed state, so two uploads racing for the last bytes cannot both fit."""
        quota = self.repo.config.quota_bytes
        if quota is None or not tx.staged:
            return

        def used(state: dict[str, Tree | None], top: str) -> int:
            return sum(self.tree_size(n, state) for n in self.present(state)
                       if top_namespace(n) == top)

        for top in sorted({top_namespace(n) for n in tx.staged}):
            after = used(work, top)
            if after <= quota:
                continue
            before = used(self.work, top)
            raise QuotaExceeded(
                f"quota exceeded: namespace {top!r} of {self.repo.fqrn} may hold {quota} bytes"
                f", {before} are in use and this upload would make it {after}; nothing was "
                "published")

    def expired(self, work: dict[str, Tree | None], before: float) -> list[str]:
        """Artifacts present in ``work`` over ``arts`` whose expiry is at or before ``before``."""
        out = []
        for name in set(self.arts) | set(work):
            if name in work and work[name] is None:
                continue  # already removed by an earlier transaction of the group
            exp = self.expiry[name] if name in self.expiry else (
                self.arts[name].expires_at if name in self.arts else None)
            if exp is not None and exp <= before:
                out.append(name)
        return out

    def apply(self, tx: "Transaction", work: dict[str, Tree | None]) -> None:
        """Replay ``tx``'s operations onto ``work`` (artifact name -> tree, None = removed)."""
        fqrn, now = self.repo.fqrn, self.now
        for name in tx.require_absent:
            current = work[name] if name in work else (self.arts.get(name) and True)
            if current:
                raise ArtifactExists(f"artifact {name!r} already exists in {fqrn}")
        for name, staged in tx.staged.items():
            # replaced whole: what the artifact holds now does not matter
            work[name] = staged if len(staged) else None
        self.remove_namespaces(tx, work)
        for op in tx.ops:
            name = op.artifact or op.parts[0]
            if name not in work:
                art = self.arts.get(name)
                work[name] = dict(tree_of(self.repo, art)) if art else None
            elif isinstance(work[name], StagedTree):
                work[name] = work[name].as_dict()  # type: ignore[union-attr]  # edited after
            tree = work[name]
            path = catalog_path(op.parts)
            if op.kind == "remove":
                if tree is None and path == "/" + name and name in tx.replaces:
                    continue  # "replace": a name deleted or expired meanwhile is just created
                if tree is None or path not in tree:
                    raise ArtifactNotFound(f"{path.lstrip('/')} not found in {fqrn}")
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
                for i in range(name.count("/") + 1, len(op.parts)):
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

    # -- names: artifacts and the namespaces holding them -----------------------------------
    def live(self, work: dict[str, Tree | None], name: str) -> bool:
        """``name`` is an artifact after what ``work`` replayed so far."""
        return work[name] is not None if name in work else name in self.arts

    def namespace_counts(self) -> dict[str, int]:
        """Artifacts of the current revision under each namespace (built once per commit)."""
        if self._namespaces is None:
            counts: dict[str, int] = {}
            for name in self.arts:
                if "/" in name:
                    for ns in namespaces_of(name):
                        counts[ns] = counts.get(ns, 0) + 1
            self._namespaces = counts
        return self._namespaces

    def live_under(self, work: dict[str, Tree | None], namespace: str) -> list[str]:
        """The artifacts under ``namespace`` after what ``work`` replayed so far."""
        prefix = namespace + "/"
        found = {n for n in self.arts if n.startswith(prefix)} \
            if self.namespace_counts().get(namespace) else set()
        for name, tree in work.items():
            if name.startswith(prefix):
                (found.add if tree is not None else found.discard)(name)
        return sorted(found)

    def is_namespace(self, work: dict[str, Tree | None], name: str) -> bool:
        count = self.namespace_counts().get(name, 0)
        prefix = name + "/"
        for other, tree in work.items():
            if other.startswith(prefix):
                count += (tree is not None) - (other in self.arts)
        return count > 0

    def check_names(self, tx: "Transaction", work: dict[str, Tree | None]) -> None:
        """No name is both an artifact and a namespace, decided here, under the writer lock,
        so two uploads racing for ``a/b`` and ``a/b/c`` cannot both be published (409)."""
        touched = {op.artifact or op.parts[0] for op in tx.ops} | set(tx.staged)
        for name in sorted(touched):
            if not self.live(work, name):
                continue
            for ns in namespaces_of(name):
                if self.live(work, ns):
                    raise ArtifactExists(f"{ns!r} is an artifact in {self.repo.fqrn}, so "
                                         f"{name!r} cannot be created under it")
            if self.is_namespace(work, name):
                raise ArtifactExists(f"{name!r} is a namespace holding artifacts in "
                                     f"{self.repo.fqrn}; it cannot also be an artifact")

    def remove_namespaces(self, tx: "Transaction", work: dict[str, Tree | None]) -> None:
        """Recursive deletes (``Transaction.remove_namespace``): every artifact under the
        namespace when the commit runs goes, through the same path as a deleted artifact."""
        for ns in sorted(tx.namespace_removals):
            names = self.live_under(work, ns)
            if not names:
                raise ArtifactNotFound(f"namespace {ns!r} not found in {self.repo.fqrn}")
            for name in names:
                work[name] = None

    # -- step 3: nested catalogs ---------------------------------------------------------
    def stage_artifacts(self) -> None:
        arts = self.arts
        for name, tree in sorted(self.work.items()):
            old = arts.get(name)
            if tree is None:
                if old is not None:
                    self.new_rows[name] = None
                    self.removed.append(name)
                continue
            expires_at = self.expiry.get(name, old.expires_at if old else None)
            if isinstance(tree, StagedTree):
                if tree.spilled:
                    self.stage_streamed(name, tree, old, expires_at)
                    continue
                tree = tree.as_dict()  # a few thousand entries: built in memory, faster
            entries = sorted(tree.values(), key=_path_of)
            digest, size, files = summarize(entries, "/" + name)
            if old is not None and digest == old.content_digest:
                old = copy.copy(old)
                old.expires_at = expires_at
                self.new_rows[name] = old
                self.refreshed.append(name)
                continue
            self.new_rows[name] = self.stage_artifact(name, tree, entries, (digest, size, files),
                                                      old, expires_at)
            self.changed.append(name)
        for name, exp in self.expiry.items():
            if name not in self.work and name in arts:
                row = self.new_rows[name] = copy.copy(arts[name])
                row.expires_at = exp
                self.refreshed.append(name)
        self.attach_provenance()
        self.attach_retention()

    def attach_provenance(self) -> None:
        """Give the rows written by this commit the provenance their transactions set.

        Rows in ``new_rows`` are copies or new (never the shared cached rows); an artifact
        whose provenance alone changes gets a copied row, like an expiry change.
        """
        for name, provenance in self.provenance.items():
            row = self.new_rows.get(name)
            if row is None:
                if name in self.new_rows or name not in self.arts:
                    continue  # removed, or never present: nothing to record it on
                row = self.new_rows[name] = copy.copy(self.arts[name])
                self.refreshed.append(name)
            row.provenance = provenance

    def attach_retention(self) -> None:
        """Pins and sha256 on the rows this commit writes (``attach_provenance``'s rules).

        A row built anew for a replaced artifact keeps the old row's pin unless its
        transaction set one; its sha256 is the one its upload computed (None otherwise). An
        identical re-upload keeps the copied row's sha256 unless a new one came with it.
        """
        for name in self.changed:
            row = self.new_rows.get(name)
            if row is not None and name not in self.pins and name in self.arts:
                row.pinned = self.arts[name].pinned
        for name, pinned in self.pins.items():
            row = self.new_rows.get(name)
            if row is None:
                if name in self.new_rows or name not in self.arts:
                    continue
                row = self.new_rows[name] = copy.copy(self.arts[name])
                self.refreshed.append(name)
            row.pinned = pinned
        for name, digest in self.sha256.items():
            row = self.new_rows.get(name)
            if row is not None and (digest is not None or name in self.changed):
                row.sha256 = digest

    def stage_artifact(self, name: str, tree: Tree, entries: list[Entry],
                       summary: tuple[str, int, int], old: ArtifactRow | None,
                       expires_at: float | None) -> ArtifactRow:
        """Build the nested catalog of a directory artifact (or keep a file/link as a row).

        ``entries`` are the tree's entries in path order and ``summary`` what
        :func:`summarize` made of them: the caller sorted and summed them once.
        """
        repo, now = self.repo, self.now
        top_path = "/" + name
        top = tree[top_path]
        digest, size, files = summary
        created = old.created_at if old is not None else float(repo.clock())
        kept = old.provenance if old is not None else None
        if not top.is_dir:
            return ArtifactRow(name, top, None, None, None, digest, size, files, created,
                               expires_at, 0, kept)
        compressed = repo.config.compression == "zlib"
        empty = repo.store.put_content(b"", "", compressed)
        marker = Entry(path=f"{top_path}/{MARKER_NAME}", mode=stat.S_IFREG | 0o644, mtime=now,
                       size=0, digest=empty.digest, compressed=compressed, hidden=True)
        built = build_catalog(entries + [marker], root_path=top_path, properties={
            "root_prefix": top_path, "last_modified": now, "revision": 1})
        obj = repo.store.put(compress(built.data), CATALOG)
        mount = Entry(path=top_path, mode=top.mode, mtime=top.mtime, size=top.size,
                      uid=top.uid, gid=top.gid, linkcount=2 + built.subdirs.get(top_path, 0))
        return ArtifactRow(name, mount, obj.hex, len(built.data), built.counters, digest, size,
                           files, created, expires_at, 0, kept)

    def stage_streamed(self, name: str, tree: StagedTree, old: ArtifactRow | None,
                       expires_at: float | None) -> None:
        """:meth:`stage_artifact` for a staged tree read back from disk, in bounded memory.

        Two passes in path order: the content digest, size and file count first (an identical
        re-upload stops there: only its expiry moves), then the nested catalog, written
        straight into a file and compressed into the store piece by piece.
        """
        repo, now, top_path = self.repo, self.now, "/" + name
        hexdigest, size, files = summarize((e for e, _subdirs in tree.entries()), top_path)
        if old is not None and hexdigest == old.content_digest:
            row = self.new_rows[name] = copy.copy(old)
            row.expires_at = expires_at
            self.refreshed.append(name)
            return
        created = old.created_at if old is not None else float(repo.clock())
        kept = old.provenance if old is not None else None
        top = tree.top_entry()
        assert top is not None
        self.changed.append(name)
        if not top.is_dir:
            self.new_rows[name] = ArtifactRow(name, top, None, None, None, hexdigest, size,
                                              files, created, expires_at, 0, kept)
            return
        compressed = repo.config.compression == "zlib"
        empty = repo.store.put_content(b"", "", compressed)
        marker = Entry(path=f"{top_path}/{MARKER_NAME}", mode=stat.S_IFREG | 0o644, mtime=now,
                       size=0, digest=empty.digest, compressed=compressed, hidden=True)
        top_subdirs = 0

        def rows() -> Iterator[tuple[Entry, int]]:
            nonlocal top_subdirs
            for e, subdirs in tree.entries():
                if e.path == top_path:
                    top_subdirs = subdirs
                yield e, subdirs
            yield marker, 0

        raw = repo.store.txn / f"catalog.{os.getpid()}.{uuid.uuid4().hex}.db"
        try:
            counters = write_nested_catalog(str(raw), rows(), root_path=top_path, properties={
                "root_prefix": top_path, "last_modified": now, "revision": 1})
            hex_, raw_size = store_catalog_file(repo, raw)
        finally:
            with contextlib.suppress(FileNotFoundError):
                raw.unlink()
        mount = Entry(path=top_path, mode=top.mode, mtime=top.mtime, size=top.size,
                      uid=top.uid, gid=top.gid, linkcount=2 + top_subdirs)
        self.new_rows[name] = ArtifactRow(name, mount, hex_, raw_size, counters, hexdigest, size,
                                          files, created, expires_at, 0, kept)

    # -- step 4: root catalog and manifest -----------------------------------------------
    def final_rows(self) -> dict[str, ArtifactRow]:
        final = dict(self.arts)
        for name, art in self.new_rows.items():
            if art is None:
                final.pop(name, None)
            else:
                final[name] = art
        return final

    def next_revision(self, conn: "sqlite3.Connection",
                      served: manifest_mod.Manifest | None) -> tuple[int, int]:
        """The revision rule: ``S = max(previous + 1, now)``, ``T = max(now, previous T)``."""
        last = max([served.revision if served else 0] + [
            r for (r,) in conn.execute("SELECT MAX(revision) FROM revisions") if r])
        return max(last + 1, self.now), max(self.now, served.timestamp if served else 0)

    def build_root(self, arts: dict[str, ArtifactRow], revision: int, timestamp: int,
                   previous_root: str | None) -> tuple[bytes, str, int]:
        """Root catalog from the artifact rows, certificate object, synced store, signed manifest."""
        repo = self.repo
        entries = [Entry(path="", mode=stat.S_IFDIR | 0o755, mtime=timestamp)]
        nested = []
        namespaces: set[str] = set()
        for name in sorted(arts):
            art = arts[name]
            entries.append(art.top)
            if "/" in name:
                namespaces.update(namespaces_of(name))
            if art.catalog_hash:
                nested.append(NestedRef(art.top.path, art.catalog_hash, art.catalog_size or 0,
                                        art.counters or Counters()))
        # A namespace is a plain directory of the root catalog, there exactly while an
        # artifact lies under it: the client finds a deep mountpoint by walking the root
        # catalog's directories down to it (cvmfs/catalog.cc, Catalog::FindSubtree), and
        # check counts it as a directory (link count 2 + subdirectories, self_dir).
        entries += [Entry(path="/" + ns, mode=stat.S_IFDIR | 0o755, mtime=timestamp)
                    for ns in namespaces]
        entries.sort(key=lambda e: e.path)
        props: dict[str, str | int] = {}
        if repo.config.volatile:
            props["volatile"] = 1
        props.update({"TTL": repo.config.ttl_s, "last_modified": timestamp,
                      "revision": revision})
        if previous_root:
            props["previous_revision"] = previous_root
        built = build_catalog(entries, root_path="", properties=props, nested=nested)
        root = repo.store.put(compress(built.data), CATALOG)
        k = repo.keys
        if k.repository_key is None:
            raise RepositoryError(f"{repo.fqrn}: no repository key to sign the manifest with")
        cert = repo.store.put(compress(k.certificate_pem), CERTIFICATE)
        repo.store.sync()
        m = manifest_mod.Manifest(
            root_hash=root.hex, root_size=len(built.data), ttl=repo.config.ttl_s,
            revision=revision, fqrn=repo.fqrn, certificate_hash=cert.hex, timestamp=timestamp,
            garbage_collectable=repo.config.garbage_collectable)
        return m.sign(k.repository_key), root.hex, len(built.data)

    # -- step 5: the commit point ----------------------------------------------------------
    def check_markers(self) -> None:
        """Every accepted transaction still counts for gc (``markers.py``), or it stays out.

        A transaction refused here changes nothing already built only if it changed nothing:
        in practice a transaction is abandoned long before (idle timeout), so this is the last
        line of defence; when one is refused, the whole batch is refused with it and the
        committer retries the others without it.
        """
        for tx in self.accepted:
            tx.check_alive()

    def record(self, conn: "sqlite3.Connection", revision: int, timestamp: int,
               manifest_blob: bytes, root_hash: str, root_size: int,
               final: dict[str, ArtifactRow]) -> None:
        state = self.repo.state
        conn.execute("BEGIN IMMEDIATE")
        try:
            state.write_rows(conn, self.new_rows, in_tx=True)
            m = manifest_mod.parse(manifest_blob)
            conn.execute(
                "INSERT OR REPLACE INTO revisions VALUES (?,?,?,?,?,?,?, 'pending')",
                (revision, root_hash, root_size, m.certificate_hash, timestamp, self.now_f,
                 manifest_blob))
            generation = State.generation(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        state.remember(generation, final)

    # -- step 6: the manifest --------------------------------------------------------------
    def publish_manifest(self, conn: "sqlite3.Connection", revision: int,
                         manifest_blob: bytes) -> None:
        """Serve the recorded revision; on failure leave it pending (rolled forward later)."""
        try:
            atomic_write(self.repo.manifest_path, manifest_blob)
            conn.execute("UPDATE revisions SET state='published' WHERE revision=?", (revision,))
        except Exception as exc:  # noqa: BLE001 - the revision is committed: roll forward
            log.warning("%s: revision %d is committed but its manifest could not be written"
                        " yet (%s); it is rolled forward by the next commit or start",
                        self.repo.fqrn, revision, exc)
