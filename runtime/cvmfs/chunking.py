"""Streaming ingestion of file content: fixed-size chunks, hashed and compressed in parallel.

A file is fed to a :class:`FileWriter` in pieces of any size. Whenever more than
``chunk_size`` bytes are buffered, the first ``chunk_size`` bytes become a chunk and are handed
to a thread pool that compresses (zlib, if enabled), hashes and stores it; ``zlib`` and
``hashlib`` release the GIL, so chunks of one file use every core. Memory is bounded by
``chunk_size × max_inflight`` for all files together plus one chunk per file being written,
whatever the file sizes.

Uncompressed content does not wait for whole chunks: past its first ``STREAM_SLICE`` bytes, a
file's bytes are hashed and written to a temp file of ``data/txn/`` as they arrive (one pool
task at a time per file, so in order), and each chunk is renamed to its name once complete.
A file then holds at most about two slices in memory instead of a chunk, so concurrent uploads
cost ~2 MiB each rather than ``chunk_size`` (8 MiB by default, up to 256 MiB) each; hashing
(SHA-1, ~2 GB/s on one core) keeps up with the network on a single worker. Compressed content
keeps the whole-chunk path: deflate is the bottleneck there, and compressing the chunks of one
file in parallel needs them buffered.

A file that ends before its first cut is stored whole (no suffix, catalog ``hash`` set); a
longer one is stored as chunks (suffix ``P``, catalog ``hash`` NULL, ``chunks`` rows). Because a
cut only happens once *more* data than a chunk is buffered, a file never becomes a single chunk,
which cvmfs never writes either (docs/cvmfs-format.md, "Chunked files"). Fixed-size boundaries are opaque to clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable

from . import deflate
from .batches import BatchWriter, store_blobs
from .deflate import DEFAULT_LEVEL
from .objects import EARLY_WRITEBACK_BYTES, FILE, PARTIAL, ObjectStore, StoredObject

#: Pieces read from file objects; large enough to amortise syscalls, small enough to stream.
READ_BLOCK = 1024 * 1024
#: Uncompressed content handed to the pool this many bytes at a time (see the module
#: docstring); a file no larger stays in memory and is stored whole, as before.
STREAM_SLICE = 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    offset: int
    size: int
    digest: bytes  # raw 20-byte SHA-1 of the stored (possibly compressed) chunk


@dataclass
class FileContent:
    """What a catalog row needs to describe stored file content."""

    size: int
    compressed: bool
    digest: bytes | None = None  # whole-file object, or None when chunked
    chunks: list[Chunk] = field(default_factory=list)
    objects: list[StoredObject] = field(default_factory=list)

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
        buffer less per chunk in flight, same object name (:func:`.deflate.compress_pieces`)."""
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
        """Like :meth:`ingest_batch` for local files, read on the worker too."""
        return self._pool.submit(self._store_files, paths)

    def _check_batch(self, blobs: list[bytes]) -> None:
        for data in blobs:
            if len(data) > self.chunk_size:
                raise ValueError("a batched file must fit in one chunk")

    def _contents(self, blobs: list[bytes], stored: list[tuple[str, int]]) -> list[FileContent]:
        """What the catalog needs of each batched blob, from its ``(hex, stored size)``."""
        return [FileContent(len(data), self.compressed, bytes.fromhex(h), [],
                            [StoredObject(h, FILE, n)]) for data, (h, n) in zip(blobs, stored)]

    def _store_files(self, paths: list[str]) -> list[FileContent]:
        blobs = []
        for path in paths:
            with open(path, "rb") as fh:
                # read() sizes its buffer from fstat; read(n) would allocate n bytes per file
                blobs.append(fh.read())
        self._check_batch(blobs)
        return self._contents(blobs, store_blobs(self.store, self.compressed, blobs, self.level))


class _ChunkFile:
    """One uncompressed chunk (or whole file) being written as its bytes arrive: hashed on the
    fly into a temp file of ``data/txn/``, renamed to its name once complete.

    Crash safety: a writer killed mid-chunk leaves only the temp file, which no catalog names
    and gc removes once it is older than the cut-off (the upload's staging marker holds that
    back while the upload is alive); a chunk is under its final name only when complete.
    """

    def __init__(self, store: ObjectStore, offset: int):
        self.store, self.offset = store, offset
        self.tmp = store.temp_path()
        self.fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.sha1 = hashlib.sha1()
        self.size = 0

    def feed(self, view: memoryview) -> None:
        assert self.fd is not None
        self.sha1.update(view)
        self.size += len(view)
        while len(view):
            view = view[os.write(self.fd, view):]

    def finish(self, suffix: str) -> StoredObject:
        fd, self.fd = self.fd, None
        assert fd is not None
        try:
            if self.size >= EARLY_WRITEBACK_BYTES:
                # start the writeback now: the publish's syncfs then finds little left to do
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return self.store.adopt(self.tmp, self.sha1.hexdigest(), suffix, self.size)

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class FileWriter:
    """Push-style writer for one file; see the module docstring for the chunking rule.

    Compressed content: incoming pieces are kept as they arrive and a chunk is handed to the
    pool as the list of pieces that make it up (only a piece that straddles a chunk boundary
    is split), so bytes are copied once, by the ``writev`` that stores them.

    Uncompressed content is streamed (:class:`_ChunkFile`) once more than ``STREAM_SLICE``
    bytes arrived: the pieces go to the pool a slice at a time, one task per file at a time
    (in order); a writer whose previous slice is still being written waits for it, so a file
    holds at most about two slices whatever the chunk size.
    """

    def __init__(self, ingester: Ingester):
        self._ing = ingester
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._offset = 0
        self._pending: list[tuple[int, int, Future]] = []
        self._inflight = ingester.inflight
        # -- streaming (uncompressed) --
        self._stream = not ingester.compressed
        self._task: Future | None = None  # the slice being written, at most one per file
        self._chunk: _ChunkFile | None = None  # touched only by that task (or after it)
        self._chunks: list[tuple[Chunk, StoredObject]] = []

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

    # -- streaming (uncompressed) -----------------------------------------------------------

    def _keep(self, data: bytes) -> bool:
        """Keep ``data``; True when a slice is ready to hand to the pool."""
        if data:
            self._pieces.append(bytes(data) if not isinstance(data, bytes) else data)
            self._buffered += len(data)
        return self._buffered >= STREAM_SLICE

    def _hand_off(self) -> None:
        """Give the buffered pieces to the pool (the previous slice must be done)."""
        pieces, size = list(self._pieces), self._buffered
        self._pieces.clear()
        self._buffered = 0
        self._offset += size
        self._task = self._ing._pool.submit(self._consume, pieces)

    def _consume(self, pieces: list[bytes]) -> None:
        """Write ``pieces`` into the current chunk file (on the pool, in order). A full chunk is
        cut only when more bytes follow, so a file is never a single chunk."""
        size = self._ing.chunk_size
        for piece in pieces:
            view = memoryview(piece)
            while len(view):
                chunk = self._chunk
                if chunk is None:
                    chunk = self._chunk = _ChunkFile(self._ing.store, 0)
                elif chunk.size == size:
                    self._chunks.append(self._finish(chunk, PARTIAL))
                    chunk = self._chunk = _ChunkFile(self._ing.store, chunk.offset + size)
                room = size - chunk.size
                chunk.feed(view[:room])
                view = view[room:]

    @staticmethod
    def _finish(chunk: _ChunkFile, suffix: str) -> tuple[Chunk, StoredObject]:
        obj = chunk.finish(suffix)
        return Chunk(chunk.offset, chunk.size, obj.digest), obj

    def _close_stream(self) -> FileContent:
        if self._task is None and self._buffered <= self._ing.chunk_size:
            # never streamed and not chunked: a small file, stored whole from memory
            tail_size = self._buffered
            obj = self._ing.store.put_content(self._take(tail_size), FILE, False)
            return FileContent(tail_size, False, obj.digest, [], [obj])
        if self._task is not None:
            self._task.result()
        self._offset += self._buffered
        self._consume(self._take(self._buffered))
        chunk, self._chunk = self._chunk, None
        assert chunk is not None
        try:
            if not self._chunks:
                obj = chunk.finish(FILE)
                return FileContent(self._offset, False, obj.digest, [], [obj])
            self._chunks.append(self._finish(chunk, PARTIAL))
        except BaseException:
            chunk.discard()
            raise
        return FileContent(self._offset, False, None, [c for c, _ in self._chunks],
                           [o for _, o in self._chunks])

    # -- the writer's interface ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Buffer ``data``; cut and submit full chunks, blocking when too many are in flight."""
        if self._stream:
            if self._keep(data):
                if self._task is not None:
                    self._task.result()
                self._hand_off()
            return
        size = self._ing.chunk_size
        for _ in range(self._buffer(data)):
            self._inflight.acquire()
            self._submit(self._take(size), size)

    async def awrite(self, data: bytes) -> None:
        """Like :meth:`write`, but waits for pool capacity without blocking the event loop."""
        if self._stream:
            if self._keep(data):
                if self._task is not None:
                    await asyncio.wrap_future(self._task)
                self._hand_off()
            return
        size = self._ing.chunk_size
        for _ in range(self._buffer(data)):
            while not self._inflight.acquire(blocking=False):
                await asyncio.sleep(0.002)
            self._submit(self._take(size), size)

    def close(self) -> FileContent:
        """Store the tail and wait for every chunk; return the file's catalog description."""
        if self._stream:
            return self._close_stream()
        tail_size = self._buffered
        tail = self._take(tail_size)
        if not self._pending:
            obj = self._ing.store.put_content(tail, FILE, self._ing.compressed,
                                              self._ing.level)
            return FileContent(tail_size, self._ing.compressed, obj.digest, [], [obj])
        if tail_size:
            self._inflight.acquire()
            self._submit(tail, tail_size)
        chunks, objects = [], []
        for offset, size, fut in self._pending:
            obj: StoredObject = fut.result()
            chunks.append(Chunk(offset, size, obj.digest))
            objects.append(obj)
        return FileContent(self._offset, self._ing.compressed, None, chunks, objects)

    async def aclose(self) -> FileContent:
        """Async variant of :meth:`close` (the tail is stored on the pool, not the loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.close)

    def abort(self) -> None:
        """Drop buffered data and wait for in-flight chunks (their objects are left to gc; a
        partly written chunk file is removed)."""
        self._pieces.clear()
        self._buffered = 0
        for fut in [f for _, _, f in self._pending] + ([self._task] if self._task else []):
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - nothing to keep from an aborted file
                pass
        self._pending.clear()
        self._task = None
        if self._chunk is not None:
            self._chunk.discard()
            self._chunk = None
