"""Staging: a transaction collects changes, checks them, and writes their content now.

Everything that could make a transaction fail later is checked here, when it is staged
(``names.py``: names and symlink targets valid UTF-8 without control, separator or bidi
characters; mtimes and sizes that fit the catalog's signed 64-bit columns; modes reduced to
permission bits, setuid/setgid/sticky stripped), so that a bad member refuses its own upload
(:class:`InvalidPath`, 400) and never reaches a group commit shared with other uploads.

Free space is checked before a transaction stages its first content and while content streams
in (``space.py``); the staging marker (``markers.py``) is written whole or not at all. On a disk
too full even for the marker, a transaction can still remove artifacts and change expiries
(they stage no object, so gc has nothing of theirs to spare), and refuses content with
:class:`StorageFull` (507).

Names with namespaces (``team-a/app/pr-123``) are declared first (:meth:`Transaction.artifact`),
so that a path below one is known to belong to it rather than to a top-level artifact ``team-a``.

Overwrite is decided at commit: staging an artifact's top-level entry (``add_directory(name)``,
``add_file(name)``, ``add_symlink(name)``, ``open_file(name)``) makes the transaction *replace*
that artifact whole with what it staged, whatever the artifact holds when the commit runs (the
last committed upload wins; two uploads are never merged; a name deleted or expired meanwhile is
simply created).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator, Mapping, Sequence

from ..cvmfs.catalog import Entry
from ..cvmfs.chunking import FileContent, FileWriter
from .errors import ArtifactNotFound, InvalidPath, StorageFull
from .markers import Marker, TransactionAbandoned
from .names import (ValidPath, as_parts, catalog_path, permissions, split_path,
                    validate_artifact_name, validate_mtime, validate_size,
                    validate_symlink_target)
from .space import CHECK_EVERY_BYTES
from .staged import StagedTree

if TYPE_CHECKING:
    from .commit import PublishResult
    from .repository import Repository

#: Files of a tree past which ``add_tree`` starts the helper processes (~60-100 ms to start,
#: paid back after a few thousand files; a small tree never starts them).
HELPER_TREE_FILES = 1000


@dataclass
class Op:
    kind: str  # "file" | "dir" | "symlink" | "remove"
    parts: Sequence[str]
    entry: Entry | None = None
    #: the artifact the path lies in (``Transaction.artifact``): its first segments
    artifact: str = ""


class StagedFile:
    """A file being streamed into a transaction (push API for HTTP bodies)."""

    def __init__(self, tx: "Transaction", parts: ValidPath, mode: int, mtime: int):
        self._tx, self._parts, self._mode, self._mtime = tx, parts, mode, mtime
        self._writer: FileWriter = tx.repo.ingester.open()
        self.bytes_written = 0
        tx.open_files += 1
        tx.last_activity = time.monotonic()
        self._open = True

    def _done(self) -> None:
        if self._open:
            self._open = False
            self._tx.open_files -= 1

    def write(self, data: bytes) -> None:
        self._tx._progress(len(data))
        self._writer.write(data)
        self.bytes_written += len(data)

    async def awrite(self, data: bytes) -> None:
        self._tx._progress(len(data))
        await self._writer.awrite(data)
        self.bytes_written += len(data)

    def close(self) -> FileContent:
        content = self._writer.close()
        self._done()
        self._tx._record_file(self._parts, content, self._mode, self._mtime)
        return content

    async def aclose(self) -> FileContent:
        content = await self._writer.aclose()
        self._done()
        self._tx._record_file(self._parts, content, self._mode, self._mtime)
        return content

    def abort(self) -> None:
        self._done()
        self._writer.abort()


class Transaction:
    """Changes staged against a repository; objects are written now, catalogs at publish.

    Operations replay in order at publish time on top of the then-current revision, so
    transactions staged concurrently can be committed together (group commit).
    """

    def __init__(self, repo: "Repository"):
        self.repo = repo
        self.id = uuid.uuid4().hex
        self.ops: list[Op] = []
        self.expiry: dict[str, float | None] = {}
        #: provenance to record on artifacts (``set_provenance``)
        self.provenance: dict[str, dict | None] = {}
        self.require_absent: set[str] = set()
        # -- retention (set_pin, set_sha256, keep_last; applied at commit, ``commit.py``) --
        #: pin state to record (True: exempt from keep_last)
        self.pins: dict[str, bool] = {}
        #: SHA-256 hex of the file artifacts this transaction replaces whole
        self.sha256: dict[str, str] = {}
        #: artifact -> N: after it is published, keep only the N newest artifacts of its parent
        #: namespace (pinned ones aside); the others are removed in the same revision
        self.keep_last: dict[str, int] = {}
        #: what keep_last removed, filled in when the commit replays this transaction
        self.pruned: list[str] = []
        #: the artifacts this transaction replaces whole (their top-level entry is staged),
        #: with their entries (``staged.py``: on disk once there are many)
        self.staged: dict[str, StagedTree] = {}
        #: set by :meth:`remove_expired`: artifacts expiring at or before it are removed
        self.expired_before: float | None = None
        #: hierarchical artifact names this transaction writes (:meth:`artifact`): their
        #: segments -> the name; a path outside all of them lies in its first segment
        self.roots: dict[tuple[str, ...], str] = {}
        #: namespaces whose every artifact is removed at commit (:meth:`remove_namespace`)
        self.namespace_removals: set[str] = set()
        self.closed = False
        self._unchecked_bytes = 0
        self._space_checked = False
        #: files being streamed in (``open_file``) and when bytes last arrived: a body that
        #: stops sending for the idle timeout stops counting for gc (``markers.Heartbeat``)
        self.open_files = 0
        self.last_activity = time.monotonic()
        #: None when the disk had no room for it: then the transaction may remove artifacts and
        #: change expiries (which stage no objects), and refuses content with StorageFull
        self.marker: Marker | None = None
        self._no_marker: StorageFull | None = None
        try:
            self.marker = Marker.create(repo.staging_dir, self.id)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._no_marker = StorageFull("the server's storage is full (no space for a staging"
                                          " marker); nothing was published, retry later")
        else:
            repo.heartbeat.add(self)

    # -- checks while staging --------------------------------------------------------------
    def _now(self) -> int:
        return int(self.repo.clock())

    def _staging_content(self) -> None:
        """Before the first object or entry: the transaction has a marker and disk space."""
        if self._space_checked:
            return
        if self._no_marker is not None:
            raise self._no_marker
        self.repo.space.check()
        self._space_checked = True

    def _progress(self, nbytes: int) -> None:
        """Count staged bytes: refuse once the free-space reserve would be eaten into.

        Bytes arriving after a long pause first check that gc has not given up on the
        transaction meanwhile (then the upload fails at once, instead of at its commit).
        """
        self._staging_content()
        now = time.monotonic()
        if now - self.last_activity > self.repo.body_idle_timeout_s / 2:
            self.check_alive()
        self.last_activity = now
        self._unchecked_bytes += nbytes
        if self._unchecked_bytes >= CHECK_EVERY_BYTES:
            self._unchecked_bytes = 0
            self.repo.space.check()

    @property
    def replaces(self) -> set[str]:
        """Names of the artifacts this transaction replaces whole."""
        return set(self.staged)

    # -- hierarchical names ----------------------------------------------------------------
    def artifact(self, name: str) -> str:
        """Declare that paths below ``name`` (``team-a/app/pr-123``) belong to that artifact.

        A path is only ambiguous once names have several segments: ``a/b/c`` may be the file
        ``b/c`` of artifact ``a`` or the artifact ``a/b/c``. Staging resolves every path to
        the longest declared name it lies in, else to its first segment (a top-level artifact,
        as before names had namespaces). Idempotent; returns the validated name.
        """
        name = validate_artifact_name(name, self.repo.max_name_depth)
        self.roots[tuple(name.split("/"))] = name
        return name

    def artifact_of(self, parts: Sequence[str]) -> tuple[str, int]:
        """The artifact ``parts`` lies in and its number of segments."""
        if self.roots:
            for k in range(min(len(parts), self.repo.max_name_depth), 0, -1):
                name = self.roots.get(tuple(parts[:k]))
                if name is not None:
                    return name, k
        return parts[0], 1

    def remove_namespace(self, namespace: str) -> None:
        """Remove every artifact under ``namespace`` (``team-a/``), decided at commit time:
        what is there when the commit runs goes, in one revision; nothing there is 404."""
        self.namespace_removals.add(validate_artifact_name(namespace.rstrip("/"),
                                                           self.repo.max_name_depth))

    def _entry(self, kind: str, parts: Sequence[str], mode: int, mtime: int | None,
               path: str | None = None, **fields: object) -> None:
        """Stage one entry at ``parts`` (``path``: its catalog path, when the caller has it).
        Runs once per file of an upload: each lookup and call here is paid 10,000 times."""
        self._staging_content()
        if path is None:
            path = catalog_path(parts)
        now = self._now()
        mtime = now if mtime is None else validate_mtime(mtime, path[1:])
        entry = Entry(path=path, mode=mode, mtime=mtime, **fields)  # type: ignore[arg-type]
        name, depth = self.artifact_of(parts)
        tree = self.staged.get(name)
        if tree is None and len(parts) == depth:
            tree = self._replace(name)
        if tree is not None:
            tree.put(parts, entry, now)
        else:
            self.ops.append(Op(kind, parts, entry, name))

    def _replace(self, name: str) -> StagedTree:
        """From now on ``name`` is replaced whole; what was staged for it so far moves along."""
        tree = self.staged[name] = StagedTree(
            name, self.repo.spill_dir / f"{self.id}.{len(self.staged)}.db")
        earlier = [op for op in self.ops if op.artifact == name]
        self.ops = [op for op in self.ops if op.artifact != name]
        for op in earlier:
            if op.kind == "remove":
                with contextlib.suppress(ArtifactNotFound):
                    tree.remove(catalog_path(op.parts))
            else:
                assert op.entry is not None
                tree.put(op.parts, op.entry, self._now())
        return tree

    # -- staging -------------------------------------------------------------------------
    def _record_file(self, parts: Sequence[str], content: FileContent, mode: int,
                     mtime: int | None) -> None:
        path = catalog_path(parts)
        size = validate_size(content.size, path[1:])
        self._progress(size if size < CHECK_EVERY_BYTES else 0)
        self._entry("file", parts, stat.S_IFREG | permissions(mode), mtime, path, size=size,
                    digest=content.digest, chunks=tuple(content.chunks),
                    compressed=content.compressed)

    def add_file(self, path: str, source: bytes | BinaryIO | Iterable[bytes], *,
                 mode: int = 0o644, mtime: int | None = None) -> FileContent:
        """Stage a regular file from bytes, a binary file object or an iterable of pieces."""
        parts = split_path(path)
        if mtime is not None:
            validate_mtime(mtime, path)
        self._staging_content()
        self.repo.space.check(len(source) if isinstance(source, bytes) else 0)
        content = self.repo.ingester.ingest(source)
        self._record_file(parts, content, mode, mtime)
        return content

    def add_content(self, path: str | ValidPath, content: FileContent, *, mode: int = 0o644,
                    mtime: int | None = None) -> None:
        """Stage a regular file whose content is already stored (``Ingester.ingest_batch``).

        Lets archive unpacking store many small files in parallel and record them afterwards,
        and lets a hardlink become a second entry sharing the stored content.
        """
        self._record_file(as_parts(path), content, mode, mtime)

    def staged_content(self, path: str | ValidPath) -> FileContent | None:
        """The content of the regular file staged at ``path`` so far, or None.

        Lets an archive's hard link find its target's content in what is already staged (on
        disk once there are many entries) instead of the unpacker keeping every file's content
        in memory until the end.
        """
        parts = as_parts(path)
        tree = self.staged.get(self.artifact_of(parts)[0])
        if tree is not None:
            entry = tree.get(catalog_path(parts))
        else:
            entry = next((op.entry for op in reversed(self.ops)
                          if tuple(op.parts) == tuple(parts)), None)
        if entry is None or not stat.S_ISREG(entry.mode):
            return None
        return FileContent(size=entry.size, compressed=entry.compressed, digest=entry.digest,
                           chunks=list(entry.chunks))

    def open_file(self, path: str, *, mode: int = 0o644, mtime: int | None = None) -> StagedFile:
        """Stage a file whose bytes arrive later (``write``/``awrite`` then ``close``/``aclose``)."""
        parts = split_path(path)
        when = self._now() if mtime is None else validate_mtime(mtime, path)
        self._staging_content()
        return StagedFile(self, parts, mode, when)

    def add_directory(self, path: str | ValidPath, *, mode: int = 0o755,
                      mtime: int | None = None) -> None:
        self._entry("dir", as_parts(path), stat.S_IFDIR | permissions(mode), mtime)

    def add_symlink(self, path: str | ValidPath, target: str, *,
                    mtime: int | None = None) -> None:
        parts = as_parts(path)
        validate_symlink_target(target, catalog_path(parts).lstrip("/"))
        self._entry("symlink", parts, stat.S_IFLNK | 0o777, mtime, symlink=target)

    def remove(self, path: str) -> None:
        """Remove a path (an artifact when it is a whole name) and everything below it."""
        parts = split_path(path)
        name, _depth = self.artifact_of(parts)
        tree = self.staged.get(name)
        if tree is not None:
            tree.remove(catalog_path(parts))
        else:
            self.ops.append(Op("remove", parts, None, name))

    def set_expiry(self, name: str, expires_at: float | None) -> None:
        self.expiry[self.artifact(name)] = expires_at

    def set_provenance(self, name: str, provenance: Mapping[str, object] | None) -> None:
        """Record who published artifact ``name`` (and what they said about it) in state.db.

        Kept only in ``state.db``, never in the published tree. An artifact this transaction
        replaces whole gets exactly this provenance (None when it is never set: a new
        uploader never inherits the previous one's); one only edited or given a new expiry
        keeps what it had unless this is called. Must be JSON: refused here (400), so a bad
        value never reaches a group commit.
        """
        name = self.artifact(name)
        if provenance is None:
            self.provenance[name] = None
            return
        try:
            self.provenance[name] = json.loads(json.dumps(dict(provenance)))
        except (TypeError, ValueError) as exc:
            raise InvalidPath(f"provenance of {name!r} is not JSON: {exc}") from None

    # -- retention --
    def set_pin(self, name: str, pinned: bool) -> None:
        """Pin (exempt from ``keep_last``, not from its TTL) or unpin artifact ``name``.

        Kept in ``state.db`` only. An artifact replaced whole without this call keeps the pin
        state it had (a re-run of a pinned build stays pinned).
        """
        self.pins[validate_artifact_name(name)] = bool(pinned)

    def set_sha256(self, name: str, hexdigest: str) -> None:
        """Record the SHA-256 of the bytes of file artifact ``name`` (hashed as it streamed)."""
        if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
            raise InvalidPath(f"invalid sha256 for {name!r}")
        self.sha256[validate_artifact_name(name)] = hexdigest

    def set_keep_last(self, name: str, count: int) -> None:
        """Once ``name`` is published, keep only the ``count`` newest artifacts of its parent
        namespace (``name`` itself always among them; pinned ones neither counted nor removed);
        the older ones are removed in the same revision, decided at commit time."""
        if not isinstance(count, int) or count < 1:
            raise InvalidPath(f"keep_last must be at least 1, got {count!r}")
        self.keep_last[validate_artifact_name(name)] = count

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

        The walk stats directories and symlinks only; a regular file (known from the
        directory entry's type) is opened, stat'ed and read by a worker in one go, so this
        thread, which holds the GIL, makes no system call per file. Past
        ``HELPER_TREE_FILES`` files the helper processes are started in the background and
        take the batches from then on (:meth:`Ingester.ingest_files`). A file that turns out
        larger than a chunk is streamed here afterwards; one that is no longer a regular
        file is refused like any special file.
        """
        source = Path(source)
        base = split_path(dest)
        st = source.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidPath(f"{source} is not a directory")
        self.add_directory(base, mode=st.st_mode, mtime=int(st.st_mtime))
        ingester = self.repo.ingester
        batches: list[tuple[list[tuple[ValidPath, str]], Future]] = []
        batch: list[tuple[ValidPath, str]] = []
        count = 1

        def flush() -> None:
            if batch:
                batches.append((list(batch), ingester.ingest_files([p for _, p in batch])))
                batch.clear()
            while len(batches) > 2 * ingester.workers:
                self._record_batch(*batches.pop(0))

        files = 0
        for parts, entry in _walk(source, base):
            count += 1
            if entry.is_file(follow_symlinks=False):
                batch.append((parts, entry.path))
                files += 1
                if files == HELPER_TREE_FILES:
                    ingester.warm_helpers()  # a large tree: helpers take over once they are up
                if len(batch) >= 64:
                    flush()
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                self.add_directory(parts, mode=st.st_mode, mtime=int(st.st_mtime))
            elif stat.S_ISLNK(st.st_mode):
                self.add_symlink(parts, os.readlink(entry.path), mtime=int(st.st_mtime))
            else:
                raise InvalidPath(f"{entry.path}: special files are not supported")
        flush()
        for item in batches:
            self._record_batch(*item)
        return count

    def _record_batch(self, batch: list[tuple[ValidPath, str]], fut: Future) -> None:
        for (parts, path), (st, content) in zip(batch, fut.result()):
            if not stat.S_ISREG(st.st_mode):
                raise InvalidPath(f"{path}: special files are not supported")
            mtime = validate_mtime(int(st.st_mtime), path)
            if content is None:  # larger than a chunk: streamed in chunks from here
                self.repo.space.check(st.st_size)
                with open(path, "rb") as fh:
                    content = self.repo.ingester.ingest(fh)
            self._record_file(parts, content, st.st_mode, mtime)

    @property
    def stages_no_content(self) -> bool:
        """Only removals and expiry changes: it adds no object and no entry."""
        return not self.staged and all(op.kind == "remove" for op in self.ops)

    # -- lifecycle -----------------------------------------------------------------------
    def check_alive(self) -> None:
        """Raise :class:`TransactionAbandoned` if gc may have given up on this transaction."""
        if self.marker is None:
            return  # it staged no object (see __init__): nothing of it for gc to take
        self.marker.check_alive(self.repo.body_idle_timeout_s, f"transaction {self.id[:8]}")

    def release(self) -> None:
        """Forget the in-flight marker (after publish or abort)."""
        self.closed = True
        for tree in self.staged.values():
            tree.close()
        self.repo.heartbeat.discard(self)
        if self.marker is not None:
            self.marker.release()

    def abort(self) -> None:
        """Drop the staged changes; objects already written are left for gc."""
        self.ops.clear()
        self.release()
        self.staged.clear()

    def publish(self) -> "PublishResult":
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


def _walk(root: Path, base: ValidPath) -> Iterator[tuple[ValidPath, os.DirEntry]]:
    """Depth-first walk yielding (validated repository parts, directory entry), parents first.

    Entries are typed from the directory itself (``d_type``; one ``lstat`` only where the
    filesystem does not say), so walking costs no system call per file.
    """
    stack = [(str(root), base)]
    while stack:
        directory, parts = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            child = parts.child(e.name)
            yield child, e
            if e.is_dir(follow_symlinks=False):
                stack.append((e.path, child))


__all__ = ["Op", "StagedFile", "Transaction", "TransactionAbandoned"]
