"""A plain tar staged into a transaction, member by member, in archive order."""

from __future__ import annotations

import tarfile
from collections import deque

from ..cvmfs.chunking import FileContent
from ..repository import Transaction, ValidPath, split_path
from .content import ContentStore, Stored, resolve
from .errors import ArchiveError
from .limits import EntryBudget, IngestLimits, check_link_target, check_mtime, check_path
from .tar import member_parts

#: Directories of the archive whose validated path is remembered (each validated once while
#: it is recent; archives list a directory's members together).
DIR_CACHE = 4096


class PlainStager:
    """Stages the members of a plain tar into the transaction, in archive order.

    A small file's content is known only once its batch is stored, and a later member with the
    same path must still win, so operations wait in a queue and are applied from its front as
    soon as their content is known (after every stored batch): the queue holds at most the
    files of the batches in flight, not the archive. Paths are validated as the members arrive
    (a bad name fails the upload before more of the archive is read).

    Nothing is kept per member once it is staged: a hard link finds its target among the
    queued files (``_queued``, bounded like the queue) or else in what the transaction has
    staged (on disk past a few thousand entries). Keeping every file's content by path for
    that, as before, cost ~800 bytes and three garbage-collected objects per member: 800 MiB
    and one-second full collections (which hold the GIL, stalling ``/healthz``) for a
    million-file archive.
    """

    def __init__(self, tx: Transaction, name: str, store: ContentStore, limits: IngestLimits,
                 budget: EntryBudget):
        self.tx, self.name, self.store, self.stats = tx, name, store, store.stats
        self.limits, self.budget = limits, budget
        self._root = split_path(name)
        self._dirs: dict[str, ValidPath] = {}
        #: regular files whose operation is still queued (their content may not be stored yet)
        self._queued: dict[ValidPath, Stored | FileContent] = {}
        self._ops: deque[tuple] = deque()
        store.on_settled = self.stage_ready

    def _full(self, member: str) -> ValidPath:
        """Any member name inside the artifact (refuses absolute names and ``..``)."""
        parts = member_parts(member)
        check_path(member, parts, self.limits)
        return split_path("/".join([self.name, *parts]))

    def _path(self, member: str) -> ValidPath:
        """A member's path inside the artifact; its directory part is looked up once."""
        head, _, leaf = member.rpartition("/")
        if leaf in ("", ".", "..") or member.startswith("/") or not head:
            return self._full(member)
        base = self._dirs.get(head)
        if base is None:
            if len(self._dirs) >= DIR_CACHE:
                self._dirs.clear()
            base = self._dirs[head] = self._full(head)
        path = base.child(leaf)
        check_path(member, path[len(self._root):], self.limits)  # type: ignore[arg-type]
        return path

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        self.budget.take()
        path = self._path(info.name)
        mode, mtime = info.mode & 0o7777, check_mtime(info.name, info.mtime)
        if info.isdir():
            self._ops.append(("dir", path, mode, mtime))
            self.stats.directories += 1
        elif info.isreg():
            if len(path) == 1:
                raise ArchiveError(f"archive member {info.name!r} is a file at the root")
            content = self.store.store_member(tar, info)
            self._queued[path] = content
            self._ops.append(("file", path, content, mode, mtime))
            self.stats.files += 1
        elif info.issym():
            if len(path) == 1:
                raise ArchiveError(f"archive member {info.name!r} is a symlink at the root")
            target = check_link_target(info.name, info.linkname, self.limits)
            self._ops.append(("symlink", path, target, mtime))
            self.stats.symlinks += 1
        elif info.islnk():
            target = self._link_target(info.linkname)
            if target is None or len(path) == 1:
                raise ArchiveError(f"hard link {info.name[:200]!r} -> {info.linkname[:200]!r}: "
                                   "the target is not a regular file earlier in the archive")
            # a hard link's header carries its inode's mode and mtime (the target's)
            self._queued[path] = target
            self._ops.append(("file", path, target, mode, mtime))
            self.stats.hardlinks += 1
        else:
            self.stats.skipped += 1  # device, FIFO: documented in the package docstring
        if len(self._ops) > 1 and self._ops[0][0] != "file":
            self.stage_ready()

    def stage_ready(self) -> None:
        """Apply the queued operations, from the front, up to the first whose content is not
        stored yet."""
        tx, ops = self.tx, self._ops
        while ops:
            op = ops[0]
            if op[0] == "file":
                content = op[2]
                if isinstance(content, Stored):
                    if content.content is None:
                        return
                    content = content.content
                if self._queued.get(op[1]) is op[2]:  # staged now: the transaction has it
                    del self._queued[op[1]]
                tx.add_content(op[1], content, mode=op[3], mtime=op[4])
            elif op[0] == "dir":
                tx.add_directory(op[1], mode=op[2], mtime=op[3])
            else:
                tx.add_symlink(op[1], op[2], mtime=op[3])
            ops.popleft()

    def finish(self) -> None:
        """Apply the rest (after ``ContentStore.drain``: all content is stored)."""
        self.stage_ready()
        assert not self._ops
        self._queued.clear()

    def _link_target(self, linkname: str) -> "Stored | FileContent | None":
        """The content a hard link names: a queued file's, or the staged file's at that path."""
        target = self._full(linkname)
        queued = self._queued.get(target)
        if queued is not None:
            return queued
        return self.tx.staged_content(target)


__all__ = ["PlainStager", "resolve"]
