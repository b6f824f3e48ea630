"""The scheduler's contract: intervals, no self-overlap, errors never end the loop, 0 disables."""

from __future__ import annotations

import asyncio
import threading
import time

from runtime.maintenance.scheduler import Job, Scheduler


def _run_for(scheduler: Scheduler, seconds: float) -> None:
    async def main() -> None:
        await scheduler.start()
        await asyncio.sleep(seconds)
        await scheduler.stop()
    asyncio.run(main())


def test_a_job_slower_than_its_interval_never_overlaps_itself():
    active, peak, lock = [0], [0], threading.Lock()

    def slow() -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.08)
        with lock:
            active[0] -= 1

    job = Job("slow", interval_s=0.01, run=slow, first_delay_s=0)
    _run_for(Scheduler([job]), 0.5)
    assert peak[0] == 1
    assert 3 <= job.runs <= 8  # back to back, each waiting for the previous one


def test_a_failing_job_is_logged_and_keeps_its_schedule(caplog):
    def broken() -> None:
        raise RuntimeError("disk on fire")

    calls = []
    ok = Job("ok", interval_s=0.02, run=lambda: calls.append(1), first_delay_s=0)
    bad = Job("bad", interval_s=0.02, run=broken, first_delay_s=0)
    _run_for(Scheduler([bad, ok]), 0.3)
    assert bad.runs >= 3 and bad.failures == bad.runs and bad.last_error == "disk on fire"
    assert ok.runs >= 3 and ok.failures == 0 and len(calls) == ok.runs
    assert "scheduled bad failed: disk on fire" in caplog.text


def test_interval_zero_disables_a_job_and_the_first_run_waits_one_interval():
    never = Job("never", interval_s=0, run=lambda: None, first_delay_s=0)
    later = Job("later", interval_s=10, run=lambda: None)
    scheduler = Scheduler([never, later])
    _run_for(scheduler, 0.1)
    assert never.runs == 0 and later.runs == 0
    assert not scheduler.running
