"""Run the maintenance jobs on intervals: in the server (embedded) or against a remote service.

Each job is one asyncio task that awaits its blocking work in a thread and only then sleeps
until its next start, so a job never overlaps itself (a gc that outlasts its interval starts
again right after it finishes). An error is logged and the loop goes on; an interval of 0
disables the job. The embedded scheduler runs in the server's lifespan
(``runtime/server/admin.py``); ``python -m runtime schedule --url`` runs the same loop against
an upload service's admin routes (the Docker target's maintenance container).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..repository import Repository
from ..settings import Settings
from .housekeeping import run_all

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    interval_s: float
    run: Callable[[], object]  # blocking; runs in a worker thread
    #: seconds before the first run (None: one interval)
    first_delay_s: float | None = None
    runs: int = 0
    failures: int = 0
    last_result: object = None
    last_error: str | None = None
    last_finished: float | None = None  # time.time()


@dataclass
class Scheduler:
    jobs: list[Job]
    _tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks)

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)

    async def start(self) -> None:
        for job in self.jobs:
            if job.interval_s > 0:
                self._tasks.append(asyncio.create_task(self._loop(job), name=f"job-{job.name}"))
        log.info("scheduler: %s", ", ".join(f"{j.name} every {j.interval_s:g} s"
                                            if j.interval_s > 0 else f"{j.name} disabled"
                                            for j in self.jobs))

    async def stop(self) -> None:
        """Cancel the loops; a job running in a thread finishes on its own (it cannot be cut
        short safely, and every job is crash-safe anyway)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _loop(self, job: Job) -> None:
        delay = job.interval_s if job.first_delay_s is None else job.first_delay_s
        while True:
            await asyncio.sleep(max(0.0, delay))
            started = time.monotonic()
            await self.run_once(job)
            delay = job.interval_s - (time.monotonic() - started)

    @staticmethod
    async def run_once(job: Job) -> None:
        try:
            job.last_result = await asyncio.to_thread(job.run)
            job.last_error = None
        except Exception as exc:  # noqa: BLE001 - a failed run must not end the loop
            job.failures += 1
            job.last_error = str(exc) or repr(exc)
            log.error("scheduled %s failed: %s", job.name, job.last_error)
        finally:
            job.runs += 1
            job.last_finished = time.time()


def _checked(body: Callable[[], dict]) -> Callable[[], dict]:
    """A job body whose report counts errors: the run fails (is logged and counted) if any
    repository failed, after every repository had its turn."""
    def run() -> dict:
        report = body()
        if report.get("errors"):
            failed = {fqrn: r["error"] for fqrn, r in report.get("repositories", {}).items()
                      if isinstance(r, dict) and "error" in r}
            raise RuntimeError(f"{report['errors']} error(s): {failed}")
        return report
    return run


def local_jobs(settings: Settings, repositories: Mapping[str, Repository]) -> list[Job]:
    """The embedded default: clean every minute, gc hourly, resign daily (settings)."""
    def job(name: str) -> Callable[[], dict]:
        return _checked(lambda: run_all(name, repositories.values(), settings))
    return [
        Job("clean", settings.clean_interval_s, job("clean")),
        Job("gc", settings.gc_interval_s, job("gc")),
        # resign checks right at start, so an expiring whitelist is re-signed (or warned
        # about) when the server comes up, not a day later
        Job("resign", settings.resign_interval_s, job("resign"), first_delay_s=0),
    ]


def remote_jobs(settings: Settings, client) -> list[Job]:
    """The same schedule, each run a call to the upload service's admin routes."""
    return [
        Job("clean", settings.clean_interval_s, _checked(client.clean)),
        Job("gc", settings.gc_interval_s, _checked(client.gc)),
        Job("resign", settings.resign_interval_s, _checked(client.resign), first_delay_s=0),
    ]


def embedded(settings: Settings, repositories: Mapping[str, Repository]) -> Scheduler:
    return Scheduler(local_jobs(settings, repositories))


async def serve_forever(scheduler: Scheduler) -> None:
    """Run until SIGTERM or SIGINT (the maintenance container's main loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await scheduler.start()
    try:
        await stop.wait()
    finally:
        await scheduler.stop()
