"""Streaming ingestion of file content: fixed-size chunks, hashed and compressed in parallel.

A file is fed to a :class:`FileWriter` in pieces of any size. Whenever more than
``chunk_size`` bytes are buffered, the first ``chunk_size`` bytes become a chunk and are handed
to a thread pool that compresses (zlib, if enabled), hashes and stores it; ``zlib`` and
``hashlib`` release the GIL, so chunks of one file use every core. Memory is bounded by
``chunk_size × max_inflight`` for all files together plus one chunk per file being written,
whatever the file sizes.

A file that ends before its first cut is stored whole (no suffix, catalog ``hash`` set); a
longer one is stored as chunks (suffix ``P``, catalog ``hash`` NULL, ``chunks`` rows). Because a
cut only happens once *more* data than a chunk is buffered, a file never becomes a single chunk,
which cvmfs never writes either (docs/cvmfs-format.md, "Chunked files"). Fixed-size boundaries are opaque to clients.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable

from . import deflate
from .batches import BatchWriter, helpers_ready, start_helpers_in_background, store_files
from .deflate import DEFAULT_LEVEL
from .objects import FILE, PARTIAL, ObjectStore, StoredObject

#: Pieces read from file objects; large enough to amortise syscalls, small enough to stream.
READ_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    offset: int
    size: int
    digest: bytes  # raw 20-byte SHA-1 of the stored (possibly compressed) chunk


@dataclass(slots=True)
class FileContent:
    """What a catalog row needs to describe stored file content."""

    size: int
    compressed: bool
    digest: bytes | None = None  # whole-file object, or None when chunked
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def chunked(self) -> bool:
        return bool(self.chunks)


class Ingester:
    """A shared thread pool that stores file content into one object store."""

    def __init__(self, store: ObjectStore, *, compressed: bool, chunk_size: int,
                 workers: int | None = None, max_inflight: int | None = None,
                 batch_helpers: bool = True, level: int = DEFAULT_LEVEL):
        self.store = store
        self.compressed = compressed
        #: Deflate level of file content (:mod:`.deflate`), when ``compressed``.
        self.level = level
        self.chunk_size = chunk_size
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.max_inflight = max_inflight or self.workers + 2
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ingest")
        #: Small files from archives go to a helper process (see :mod:`.batches`).
        self.batches = BatchWriter(store, compressed, self._pool, batch_helpers, level)
        #: Chunks handed to the pool and not yet stored, across every file being written:
        #: concurrent uploads share it, so memory stays bounded however many run at once.
        self.inflight = threading.Semaphore(self.max_inflight)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def submit(self, data: bytes | list[bytes], suffix: str) -> Future:
        """Store one object, given whole or as pieces, asynchronously (compress if configured,
        hash, write)."""
        if self.compressed and not isinstance(data, (bytes, bytearray, memoryview)):
            return self._pool.submit(self._put_compressed_pieces, data, suffix)
        return self._pool.submit(self.store.put_content, data, suffix, self.compressed,
                                 self.level)

    def _put_compressed_pieces(self, pieces: list[bytes], suffix: str) -> StoredObject:
        """A chunk compressed from the pieces it arrived in, not joined first: one chunk-sized
        buffer less per chunk in flight (8 MiB each, four in flight on two cores), same
        object name (:func:`.deflate.compress_pieces`)."""
        return self.store.put(deflate.compress_pieces(pieces, self.level), suffix)

    def open(self) -> "FileWriter":
        return FileWriter(self)

    def ingest(self, source: bytes | BinaryIO | Iterable[bytes]) -> FileContent:
        """Store a whole file from bytes, a binary file object or an iterable of byte pieces."""
        writer = self.open()
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                writer.write(bytes(source))
            elif hasattr(source, "read"):
                while True:
                    # whole chunks: each read becomes a chunk without being copied again
                    block = source.read(self.chunk_size)  # type: ignore[union-attr]
                    if not block:
                        break
                    writer.write(block)
            else:
                for piece in source:  # type: ignore[union-attr]
                    writer.write(piece)
            return writer.close()
        except BaseException:
            writer.abort()
            raise

    def ingest_batch(self, blobs: list[bytes]) -> Future:
        """Store several small files (each at most one chunk) as one task of a helper process.

        Handing each tiny file to a thread costs more than storing it (futures, locks, GIL
        hand-offs); a batch pays that once, and in a helper process its writes overlap with
        the caller's parsing (:mod:`.batches`). The future yields one :class:`FileContent` per
        blob, in order.
        """
        self._check_batch(blobs)
        return self.batches.submit(blobs, lambda stored: self._contents(blobs, stored))

    def ingest_files(self, paths: list[str]) -> Future:
        """Like :meth:`ingest_batch` for local files, opened, checked and read in a helper
        process once they run (:meth:`warm_helpers`), else on a worker thread of this process
        (:func:`.batches.store_files`). The future yields ``(status, content)`` per path,
        content None when the file was not stored (larger than a chunk, or not a regular
        file).

        Helpers, where they are up, because the worker threads of one process share its GIL
        with the walk: 10,000-file trees published ~10 % faster through them (ABBA rounds in
        one process). They are not started for a small tree: starting them costs ~60-100 ms.
        """
        if self.batches.use_helpers and helpers_ready():
            return self.batches.submit_files(paths, self.chunk_size, self._file_contents)
        return self._pool.submit(
            lambda: self._file_contents(store_files(self.store, self.compressed, paths,
                                                    self.chunk_size, self.level)))

    def warm_helpers(self) -> None:
        """Start the helper processes in the background (a large tree is being published):
        :meth:`ingest_files` uses them from the first batch after they are up."""
        if self.batches.use_helpers:
            start_helpers_in_background()

    def _file_contents(self, rows: list[tuple[os.stat_result, str, int, int]]
                       ) -> list[tuple[os.stat_result, FileContent | None]]:
        compressed = self.compressed
        return [(st, FileContent(size, compressed, bytes.fromhex(h)) if h else None)
                for st, h, _stored, size in rows]

    def _check_batch(self, blobs: list[bytes]) -> None:
        for data in blobs:
            if len(data) > self.chunk_size:
                raise ValueError("a batched file must fit in one chunk")

    def _contents(self, blobs: list[bytes], stored: list[tuple[str, int]]) -> list[FileContent]:
        """What the catalog needs of each batched blob, from its ``(hex, stored size)``."""
        compressed = self.compressed
        return [FileContent(len(data), compressed, bytes.fromhex(h))
                for data, (h, _stored) in zip(blobs, stored)]


class FileWriter:
    """Push-style writer for one file; see the module docstring for the chunking rule.

    Incoming pieces are kept as they arrive and a chunk is handed to the pool as the list of
    pieces that make it up (only a piece that straddles a chunk boundary is split), so bytes
    are copied once, by the ``writev`` that stores them.
    """

    def __init__(self, ingester: Ingester):
        self._ing = ingester
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._offset = 0
        self._pending: list[tuple[int, int, Future]] = []
        self._inflight = ingester.inflight

    @property
    def size(self) -> int:
        return self._offset + self._buffered

    def _take(self, size: int) -> list[bytes]:
        """Remove and return the first ``size`` buffered bytes, as the pieces that hold them.

        The pieces are not joined: the object store hashes and writes (``writev``) them as
        they are. Joining them into one fresh 8 MiB buffer per chunk cost more than the copy
        itself: the kernel faults in and zeroes new pages for each, which held the event loop
        for ~0.65 s per GiB uploaded.
        """
        parts, need = [], size
        while need:
            piece = self._pieces.popleft()
            if len(piece) > need:
                parts.append(piece[:need])
                self._pieces.appendleft(piece[need:])
                need = 0
            else:
                parts.append(piece)
                need -= len(piece)
        self._buffered -= size
        return parts

    def _submit(self, pieces: list[bytes], size: int) -> None:
        fut = self._ing.submit(pieces, PARTIAL)
        fut.add_done_callback(lambda _f: self._inflight.release())
        self._pending.append((self._offset, size, fut))
        self._offset += size

    def _buffer(self, data: bytes) -> int:
        """Keep ``data``; return how many chunks can be cut (more than a chunk must follow)."""
        if data:
            self._pieces.append(bytes(data) if not isinstance(data, bytes) else data)
            self._buffered += len(data)
        return max(0, (self._buffered - 1) // self._ing.chunk_size)

    def write(self, data: bytes) -> None:
        """Buffer ``data``; cut and submit full chunks, blocking when too many are in flight."""
        size = self._ing.chunk_size
        for _ in range(self._buffer(data)):
            self._inflight.acquire()
            self._submit(self._take(size), size)

    async def awrite(self, data: bytes) -> None:
        """Like :meth:`write`, but waits for pool capacity without blocking the event loop."""
        size = self._ing.chunk_size
        for _ in range(self._buffer(data)):
            while not self._inflight.acquire(blocking=False):
                await asyncio.sleep(0.002)
            self._submit(self._take(size), size)

    def close(self) -> FileContent:
        """Store the tail and wait for every chunk; return the file's catalog description."""
        tail_size = self._buffered
        tail = self._take(tail_size)
        if not self._pending:
            obj = self._ing.store.put_content(tail, FILE, self._ing.compressed,
                                              self._ing.level)
            return FileContent(tail_size, self._ing.compressed, obj.digest)
        if tail_size:
            self._inflight.acquire()
            self._submit(tail, tail_size)
        chunks = []
        for offset, size, fut in self._pending:
            obj: StoredObject = fut.result()
            chunks.append(Chunk(offset, size, obj.digest))
        return FileContent(self._offset, self._ing.compressed, None, chunks)

    async def aclose(self) -> FileContent:
        """Async variant of :meth:`close` (the tail is stored on the pool, not the loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.close)

    def abort(self) -> None:
        """Drop buffered data and wait for in-flight chunks (their objects are left to gc)."""
        self._pieces.clear()
        self._buffered = 0
        for _, _, fut in self._pending:
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - nothing to keep from an aborted file
                pass
        self._pending.clear()
