"""Storing member content in the repository's object store while the archive is read.

Small files are stored in batches (``Ingester.ingest_batch``, a helper process or a thread
pool) overlapping with parsing; large ones are chunked through the ingester as they stream.
The bytes of batches in flight are bounded (``MAX_PENDING_BYTES``), and so is the number of
files waiting for their batch, so memory stays flat whatever the archive size.
"""

from __future__ import annotations

import tarfile
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from ..cvmfs.chunking import READ_BLOCK, FileContent
from ..repository import Transaction
from .errors import ArtifactTooLarge
from .tar import member_data, read_exact, read_small_member

#: Bytes of small files whose storing may be in flight at once (memory bound while unpacking).
MAX_PENDING_BYTES = 64 * 1024 * 1024
#: Small files are stored in batches: one pool task per batch instead of one per file, which
#: made unpacking several times faster.
BATCH_FILES = 256
BATCH_BYTES = 4 * 1024 * 1024
#: Batches in flight at once (bounds the waiting files of an archive of empty files too).
MAX_INFLIGHT_BATCHES = 64


@dataclass
class UnpackStats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    skipped: int = 0
    bytes: int = 0
    image: bool = False
    layers: int = 0


class Stored:
    """The content of one small file stored as part of a batch; set once the batch is stored."""

    __slots__ = ("content",)

    def __init__(self) -> None:
        self.content: FileContent | None = None


def resolve(content: "Stored | FileContent") -> FileContent:
    if isinstance(content, Stored):
        assert content.content is not None, "ContentStore.drain() first"
        return content.content
    return content


class ContentStore:
    """Stores member content: small files in batches on a worker pool while the tar is being
    read, large ones chunked through the ingester. ``on_settled`` runs after each batch is
    stored (the plain stager stages what became complete)."""

    def __init__(self, tx: Transaction, stats: UnpackStats, max_bytes: int | None):
        self.ingester = tx.repo.ingester
        self.stats = stats
        self.max_bytes = max_bytes
        self.on_settled: Callable[[], None] | None = None
        self._small = self.ingester.chunk_size
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._items: list[Stored] = []
        self._inflight: deque[tuple[Future, list[Stored], int]] = deque()
        self._inflight_bytes = 0

    def _count(self, size: int) -> None:
        self.stats.bytes += size
        if self.max_bytes is not None and self.stats.bytes > self.max_bytes:
            raise ArtifactTooLarge(f"unpacked content exceeds the limit of {self.max_bytes} bytes")

    def _submit(self) -> None:
        if not self._batch:
            return
        fut = self.ingester.ingest_batch(self._batch)
        self._inflight.append((fut, self._items, self._batch_bytes))
        self._inflight_bytes += self._batch_bytes
        self._batch, self._items, self._batch_bytes = [], [], 0
        while (self._inflight_bytes > MAX_PENDING_BYTES
               or len(self._inflight) > MAX_INFLIGHT_BATCHES):
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        """Wait for the oldest batch in flight and hand each file its stored content."""
        fut, items, size = self._inflight.popleft()
        for item, content in zip(items, fut.result()):
            item.content = content
        self._inflight_bytes -= size
        if self.on_settled is not None:
            self.on_settled()

    def store_member(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> "Stored | FileContent":
        """Store one regular member; a small one's content is known after its batch settles."""
        size = info.size
        self._count(size)
        if size <= self._small:
            item = Stored()
            self._batch.append(read_small_member(tar, info))
            self._items.append(item)
            self._batch_bytes += size
            if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
                self._submit()
            return item
        src = member_data(tar, info)
        writer = self.ingester.open()
        try:
            left = size
            while left:
                block = read_exact(src, min(READ_BLOCK, left), info.name)
                writer.write(block)
                left -= len(block)
            return writer.close()
        except BaseException:
            writer.abort()
            raise

    def drain(self) -> None:
        """Store what is batched and wait for every batch (errors surface here)."""
        self._submit()
        while self._inflight:
            self._settle_oldest()

    def abandon(self) -> None:
        """Wait for the batches in flight (their errors no longer matter): a refused archive
        must not leave writers running once the upload has been answered."""
        self._batch, self._items = [], []
        while self._inflight:
            fut, _items, _size = self._inflight.popleft()
            try:
                fut.result()
            except BaseException:  # noqa: BLE001 - the archive's own error is reported
                pass
