"""Group commit: uploads stage in parallel, and whatever is ready when the writer is free is
published together in one revision.

One :class:`GroupCommitter` per repository runs one commit at a time on its own thread (a
commit signs, writes catalogs and fsyncs: blocking work that must not run on the event loop).
While a commit runs, further transactions queue up; the next commit takes all of them at once
(``Repository.publish(*txs)``). Under load, N uploads that finish together cost a few
revisions instead of N, and the fsync/sign cost is shared. Each caller awaits its own outcome:
its transaction's error (name taken, not found …) or the :class:`PublishResult`.

One transaction never fails another. A transaction the commit refuses (name taken, path
missing …) is left out by the commit itself (``PublishResult.errors``). If a commit fails as a
whole (an error while building catalogs that staging did not catch), the batch is split in
halves and each half committed again on its own, down to the single transaction at fault,
which alone gets the error: a poisoned upload costs its neighbours a few more revisions, never
their upload. A full disk or a busy writer is nobody's fault: then every waiter gets that error
at once (507 / 503).

A caller that goes away (client disconnect) after handing its transaction over does not
cancel the commit: once queued, a transaction is published or refused as a whole. If the
process dies during a commit, the repository's own crash rules apply (``repository/commit.py``):
the revision is either fully published or not at all.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Callable
from concurrent.futures import ThreadPoolExecutor

from ..repository import PublishResult, Repository, RepositoryLocked, StorageFull, Transaction

log = logging.getLogger(__name__)

BATCH_HISTORY = 1024


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


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
            self._busy = True
            try:
                await self._commit_batch(loop, batch)
            finally:
                self._busy = False

    async def _commit_batch(self, loop: asyncio.AbstractEventLoop,
                            batch: list[tuple[Transaction, asyncio.Future]]) -> None:
        """Commit ``batch``; if it fails as a whole, commit each half again (module docstring)."""
        txs = [tx for tx, _ in batch]
        try:
            result = await loop.run_in_executor(
                self._executor, lambda: self.repo.publish(*txs, release_on_error=False))
        except Exception as exc:  # noqa: BLE001 - isolated below, or every waiter gets it
            if len(batch) > 1 and not isinstance(exc, (StorageFull, RepositoryLocked)) \
                    and not _disk_full(exc):
                log.warning("commit of %d transactions in %s failed (%s); retrying in halves",
                            len(batch), self.repo.fqrn, exc)
                half = len(batch) // 2
                await self._commit_batch(loop, batch[:half])
                await self._commit_batch(loop, batch[half:])
                return
            if len(batch) == 1 and not isinstance(exc, (StorageFull, RepositoryLocked)):
                log.exception("transaction %s in %s failed at commit", txs[0].id,
                              self.repo.fqrn)
            for tx, fut in batch:
                tx.release()
                if not fut.done():
                    fut.set_exception(exc)
            self._observe(len(batch), None)
            return
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
