"""Bridging an upload's async body to the synchronous parser on a worker thread.

The event loop only moves body chunks into a bounded pipe; parsing, decompression and
hashing run on a thread of the :class:`~runtime.ingest.pool.UnpackPool`, admitted fairly per
tenant. The loop never waits on the parser: ``put`` suspends when the pipe is full, and the
result is awaited, never joined.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import Executor
from typing import AsyncIterator, Callable, Hashable

from ..repository import Transaction
from .content import UnpackStats
from .errors import ArchiveError, one_line
from .limits import IngestLimits
from .pool import UnpackPool
from .stage import stage_archive
from .streams import ReadStream

#: Body bytes waiting for the parser, per upload.
PIPE_BYTES = 8 * 1024 * 1024


class ClientGone(ArchiveError):
    """The body stream ended with an error (client disconnected); raised in the reader."""


class BodyPipe(ReadStream):
    """A bounded byte pipe: an event loop pushes request body chunks, a thread reads them.

    At most ``limit`` bytes wait in the pipe; ``put`` suspends (without blocking the loop)
    until the reader has made room. When the reader stops early (the archive ended or failed),
    ``put`` discards what it is given so that the producer can finish reading the body.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = PIPE_BYTES):
        self._loop = loop
        self._limit = limit
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._abandoned = False
        self._space = asyncio.Event()

    # -- producer side (event loop) --------------------------------------------------------
    async def put(self, data: bytes) -> None:
        while True:
            with self._cond:
                if self._abandoned:
                    return
                if self._size < self._limit:
                    self._chunks.append(data)
                    self._size += len(data)
                    self._cond.notify()
                    return
                self._space.clear()
            await self._space.wait()

    def finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._eof = True
            self._error = error
            self._cond.notify_all()

    # -- consumer side (worker thread) -----------------------------------------------------
    def abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._chunks.clear()
            self._size = 0
        self._loop.call_soon_threadsafe(self._space.set)

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait()
            if self._error is not None:
                raise ClientGone(f"upload interrupted: {one_line(self._error)}")
            if not self._chunks:
                return b""
            if n is None or n < 0:
                out = b"".join(self._chunks)
                self._chunks.clear()
            else:
                pieces, got = [], 0
                while self._chunks and got < n:
                    c = self._chunks.popleft()
                    if got + len(c) > n:
                        c, rest = c[:n - got], c[n - got:]
                        self._chunks.appendleft(rest)
                    pieces.append(c)
                    got += len(c)
                out = b"".join(pieces)
            self._size -= len(out)
        self._loop.call_soon_threadsafe(self._space.set)
        return out


async def stage_archive_async(tx: Transaction, name: str, chunks: AsyncIterator[bytes], *,
                              executor: Executor, max_bytes: int | None = None,
                              on_bytes: Callable[[int], None] | None = None,
                              tenant: Hashable | None = None,
                              limits: IngestLimits | None = None) -> UnpackStats:
    """Unpack an archive arriving as async chunks: the parser runs on ``executor``.

    When ``executor`` is an :class:`UnpackPool`, the parser waits for a fair slot first (its
    tenants: the repository, and ``tenant`` when given, e.g. the token's label) and its limits
    apply unless ``limits`` is given. ``on_bytes`` sees every received chunk's length (the
    caller enforces upload limits there by raising). Any exception (client gone, limit,
    malformed archive) propagates after the parser has stopped, so the caller can abort ``tx``
    safely.
    """
    loop = asyncio.get_running_loop()
    pipe = BodyPipe(loop)
    pool = executor if isinstance(executor, UnpackPool) else None
    if limits is None:
        limits = pool.limits if pool is not None else IngestLimits()
    keys: list[Hashable] = [("repository", tx.repo.fqrn)]
    if tenant is not None:  # counted within this repository (see pool.py)
        keys.append(("tenant", tx.repo.fqrn, tenant))
    started = False

    def work() -> UnpackStats:
        try:
            return stage_archive(tx, name, pipe, max_bytes=max_bytes,  # type: ignore[arg-type]
                                 limits=limits)
        finally:
            pipe.abandon()

    async def run() -> UnpackStats:
        nonlocal started
        if pool is None:
            started = True
            return await loop.run_in_executor(executor, work)
        async with pool.slot(keys):
            started = True
            return await loop.run_in_executor(executor, work)

    worker = asyncio.ensure_future(run())
    try:
        async for chunk in chunks:
            if on_bytes is not None:
                on_bytes(len(chunk))
            if worker.done() and not worker.cancelled() and worker.exception() is not None:
                break  # the archive is already refused: don't read the rest of the body
            if chunk:
                await pipe.put(chunk)
        pipe.finish()
    except BaseException as exc:
        pipe.finish(exc)
        if not started:
            worker.cancel()
        try:
            await worker
        except BaseException:  # noqa: BLE001 - the producer's error is the one to report
            pass
        raise
    return await worker
