"""The unpack pool: worker threads for archive parsing, shared fairly between tenants.

An archive upload holds a parsing thread for as long as its body keeps arriving, so a client
that stops sending (or sends slowly) holds it too. With one first-come pool, 16 stalled uploads
to one repository blocked every archive upload of every repository. Here every upload names
its tenants: its repository, and the token it came with within that repository when the caller
passes one. A repository runs at most ``per_repository`` parsers at once and one token in it at
most ``per_tenant``; when a slot frees, waiting uploads are served round-robin across
repositories, so one repository's uploads, stalled or just many, never keep another repository
from a slot, and one token's stalled uploads leave room for the other tokens of the same
repository. A token is counted per repository: a single token shared by every CI job (the
embedded default's) must not let one stalled job block the others' repositories. An upload waiting for a slot holds no thread: it waits on the event loop,
and its body stays in the kernel's socket buffers (the body pipe in front of the parser is
bounded), so waiting costs no memory to speak of.

What it cannot do: ``workers // per_tenant`` tenants all stalling at once still fill the pool
until their bodies time out (the body idle timeout of the upload route bounds that).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import AsyncIterator, Hashable, Sequence

from .limits import IngestLimits


class UnpackPool(ThreadPoolExecutor):
    """A thread pool for parsers with fair admission (:meth:`slot`) and the ingest limits.

    It is an executor, so code that only runs work on it keeps working; fairness applies to
    work admitted through :meth:`slot` (what :func:`stage_archive_async` does). Admission runs
    on one event loop (the server's): its state is touched only from that loop.
    """

    def __init__(self, workers: int = 16, per_tenant: int = 4,
                 limits: IngestLimits | None = None, per_repository: int | None = None):
        super().__init__(workers, thread_name_prefix="unpack")
        self.workers = workers
        self.per_tenant = max(1, min(per_tenant, workers))
        #: a repository's cap; its tokens' (per_tenant) is within it. Default: per_tenant, so a
        #: pool without tokens behaves as one with per-repository shares only.
        self.per_repository = max(self.per_tenant, min(per_repository or self.per_tenant, workers))
        self.limits = limits or IngestLimits()
        self.running: dict[Hashable, int] = {}
        self.total = 0
        #: tenant key of the first key of a waiter -> its waiters, in round-robin order
        self._waiting: OrderedDict[Hashable, deque[tuple[tuple, asyncio.Future]]] = OrderedDict()

    def _cap(self, key: Hashable) -> int:
        is_repository = isinstance(key, tuple) and key[:1] == ("repository",)
        return self.per_repository if is_repository else self.per_tenant

    def _fits(self, keys: tuple) -> bool:
        return (self.total < self.workers
                and all(self.running.get(k, 0) < self._cap(k) for k in keys))

    def _take(self, keys: tuple) -> None:
        self.total += 1
        for k in keys:
            self.running[k] = self.running.get(k, 0) + 1

    def _release(self, keys: tuple) -> None:
        self.total -= 1
        for k in keys:
            left = self.running[k] - 1
            if left:
                self.running[k] = left
            else:
                del self.running[k]
        self._dispatch()

    def _dispatch(self) -> None:
        """Grant free slots round-robin: each tenant's oldest waiter that fits, in turn."""
        progress = True
        while progress and self.total < self.workers and self._waiting:
            progress = False
            for tenant in list(self._waiting):
                queue = self._waiting[tenant]
                while queue and queue[0][1].done():  # cancelled while waiting
                    queue.popleft()
                # the oldest waiter that fits: one capped by another of its keys (its token)
                # does not hold up the others queued under the same repository
                chosen = next((w for w in queue if not w[1].done() and self._fits(w[0])), None)
                if chosen is None:
                    if not queue:
                        del self._waiting[tenant]
                    continue
                queue.remove(chosen)
                self._take(chosen[0])
                chosen[1].set_result(None)
                progress = True
                self._waiting.move_to_end(tenant)  # the next grant goes to someone else
                if not queue:
                    del self._waiting[tenant]
                break

    @asynccontextmanager
    async def slot(self, keys: Sequence[Hashable]) -> AsyncIterator[None]:
        """Hold one parser slot for the tenants ``keys`` (the first is the queueing key)."""
        keys = tuple(dict.fromkeys(keys))
        fut = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(keys[0], deque()).append((keys, fut))
        self._dispatch()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # granted, then cancelled: give back
                self._release(keys)
            else:
                fut.cancel()
                self._dispatch()
            raise
        try:
            yield
        finally:
            self._release(keys)

    def snapshot(self) -> dict[str, int]:
        """Slots in use and uploads waiting (metrics, tests)."""
        return {"running": self.total,
                "waiting": sum(len(q) for q in self._waiting.values())}
