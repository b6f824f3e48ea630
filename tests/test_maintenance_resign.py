"""Whitelist re-signing, judged by the reader's whitelist verification at a controlled "now"."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

import pytest

from runtime.maintenance.resign import (DAY_S, resign, utc, whitelist_seconds_left)
from runtime.maintenance.scheduler import Scheduler, local_jobs
from runtime.repository import Repository, RepositoryError
from runtime.settings import Settings
from tests.cvmfs_reader import ExpiredWhitelist, RepoReader
from tests.served import object_files, served_repository
from tests.test_maintenance_clean_gc import Clock, publish


def test_resign_moves_the_expiry_and_the_reader_still_verifies(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        publish(repo, "a", {"f": b"data"})
        manifest, objects = repo.manifest_bytes(), object_files(repo)
        clock = Clock(time.time() + 15 * DAY_S)  # 15 days left: below the 20-day threshold
        repo.clock = clock
        old_expiry = repo.whitelist().expires

        result = resign(repo)

        assert result.resigned and result.reason.startswith(("14.", "15.0 days left"))
        new_expiry = repo.whitelist().expires
        assert (new_expiry - old_expiry).total_seconds() == pytest.approx(15 * DAY_S, abs=3600)
        assert result.seconds_left == pytest.approx(30 * DAY_S, abs=3600)
        assert whitelist_seconds_left(repo) == pytest.approx(result.seconds_left, abs=5)
        # clients at that time accept it; the manifest and the data are untouched
        with RepoReader(s.url, repo.fqrn, s.pub, now=utc(clock.t + 29 * DAY_S)) as reader:
            assert reader.revision == repo.revision()
        assert repo.manifest_bytes() == manifest and object_files(repo) == objects


def test_resign_waits_until_it_is_due_unless_forced(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        before = repo.whitelist_path.read_bytes()
        result = resign(repo)
        assert not result.resigned and result.reason == "not due"
        assert repo.whitelist_path.read_bytes() == before
        forced = resign(repo, force=True)
        assert forced.resigned and forced.reason == "forced"
        s.reader()  # verifies the new whitelist


def test_a_whitelist_about_to_expire_is_resigned_by_the_scheduler(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        clock = Clock(time.time() + 28 * DAY_S)  # two days left
        repo.clock = clock
        with pytest.raises(ExpiredWhitelist):
            RepoReader(s.url, repo.fqrn, s.pub, now=utc(clock.t + 3 * DAY_S))

        settings = Settings(data_dir=tmp_path / "data", keys_dir=tmp_path / "keys",
                            clean_interval_s=0, gc_interval_s=0, resign_interval_s=1)
        scheduler = Scheduler(local_jobs(settings, {repo.fqrn: repo}))
        resign_job = scheduler.job("resign")
        resign_job.interval_s = 0.05  # the test's own pace; the setting is whole seconds

        async def run() -> None:
            await scheduler.start()
            try:
                await _until(lambda: resign_job.runs >= 1)
                first_expiry = repo.whitelist().expires
                clock.t += 11 * DAY_S  # 19 days left now: due again at the next run
                await _until(lambda: repo.whitelist().expires > first_expiry)
            finally:
                await scheduler.stop()

        asyncio.run(run())
        assert resign_job.failures == 0
        assert [j.name for j in scheduler.jobs if j.runs] == ["resign"]  # interval 0: disabled
        with RepoReader(s.url, repo.fqrn, s.pub, now=utc(clock.t + 29 * DAY_S)) as reader:
            assert reader.whitelist is not None


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_without_the_master_key_resign_fails_and_warns_below_seven_days(tmp_path, caplog):
    with served_repository(tmp_path) as s:
        offline_keys = tmp_path / "offline-keys"
        shutil.copytree(tmp_path / "keys", offline_keys)
        (offline_keys / f"{s.repo.fqrn}.masterkey").unlink()
        repo = Repository(tmp_path / "data", offline_keys, s.repo.config,
                          clock=Clock(time.time() + 25 * DAY_S))
        caplog.set_level(logging.WARNING, logger="runtime.maintenance.resign")
        with pytest.raises(RepositoryError, match="master key"):
            resign(repo)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("expires in 4." in w or "expires in 5." in w for w in warnings), warnings
