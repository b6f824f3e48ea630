"""Group commit: uploads stage in parallel, and whatever is ready when the writer is free is
published together in one revision.

One :class:`GroupCommitter` per repository runs one commit at a time on its own thread (a
commit signs, writes catalogs and fsyncs: blocking work that must not run on the event loop).
While a commit runs, further transactions queue up; the next commit takes all of them at once
(``Repository.publish(*txs)``). Under load, N uploads that finish together cost a few
revisions instead of N, and the fsync/sign cost is shared. Each caller awaits its own outcome:
its transaction's error (name taken, not found …) or the :class:`PublishResult`.

A caller that goes away (client disconnect) after handing its transaction over does not
cancel the commit: once queued, a transaction is published or refused as a whole. If the
process dies during a commit, the repository's own crash rules apply (``repository.py``):
the revision is either fully published or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable
from concurrent.futures import ThreadPoolExecutor

from ..repository import PublishResult, Repository, Transaction

log = logging.getLogger(__name__)

BATCH_HISTORY = 1024


class GroupCommitter:
    """Serializes commits of one repository and batches the transactions that wait."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self._queue: list[tuple[Transaction, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"commit-{repo.fqrn}")
        #: Sizes of the most recent batches (at most BATCH_HISTORY; tests read it).
        self.batches: list[int] = []
        self._busy = False
        #: Called on the event loop after each commit with (fqrn, batch size, result or None).
        self.on_commit: Callable[[str, int, PublishResult | None], None] | None = None

    @property
    def queued(self) -> int:
        """Transactions waiting for the next commit."""
        return len(self._queue)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"committer:{self.repo.fqrn}")

    async def commit(self, tx: Transaction) -> PublishResult:
        """Publish ``tx`` in the next group commit; raise its own error if it was refused."""
        self._ensure_running()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((tx, fut))
        assert self._wakeup is not None
        self._wakeup.set()
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._queue:
                continue
            batch, self._queue = self._queue, []
            self.batches.append(len(batch))
            if len(self.batches) > 2 * BATCH_HISTORY:
                del self.batches[:BATCH_HISTORY]  # a long-running server keeps a bounded list
            txs = [tx for tx, _ in batch]
            self._busy = True
            try:
                result = await loop.run_in_executor(self._executor, self.repo.publish, *txs)
            except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
                log.exception("commit of %d transaction(s) in %s failed", len(txs),
                              self.repo.fqrn)
                for _tx, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                self._observe(len(batch), None)
                continue
            finally:
                self._busy = False
            self._observe(len(batch), result)
            for tx, fut in batch:
                if fut.done():
                    continue
                err = result.error_for(tx)
                if err is not None:
                    fut.set_exception(err)
                else:
                    fut.set_result(result)

    def _observe(self, batch: int, result: PublishResult | None) -> None:
        if self.on_commit is not None:
            try:
                self.on_commit(self.repo.fqrn, batch, result)
            except Exception:  # noqa: BLE001 - metrics must not break commits
                log.exception("commit observer failed")

    async def aclose(self) -> None:
        """Let queued commits finish, then stop the worker."""
        while self._queue or self._busy:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)
