"""Running jobs over repositories: one job (``run_all``) or all three (``housekeeping``).

The CLI, the admin routes and the scheduler share these, so a job reports the same JSON
wherever it runs. One repository's failure is reported and does not stop the others (a
repository whose sweep failed still gets its whitelist re-signed); a job already running on a
repository is reported as skipped, not as an error.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from .. import logs
from ..repository import Repository
from ..settings import Settings
from .clean import clean
from .gc import collect
from .joblock import JobBusy
from .resign import resign

log = logging.getLogger(__name__)

JOBS = ("clean", "gc", "resign")
#: Per-job numbers summed over repositories in a report.
TOTALS = {"clean": ("removed_count",), "gc": ("objects_deleted", "bytes_freed"),
          "resign": ("resigned",)}


def run_gc(repo: Repository, settings: Settings):
    """gc with the repository's own grace if it has one, else the global one (else the default)."""
    own = settings.repository(repo.fqrn).gc_grace_s
    return collect(repo, grace_s=own if own is not None else settings.gc_grace_s)


def run_resign(repo: Repository, settings: Settings, *, force: bool = False):
    return resign(repo, force=force, below_days=settings.resign_below_days,
                  validity_days=settings.whitelist_validity_days)


def run_job(job: str, repo: Repository, settings: Settings, *, force: bool = False,
            dry_run: bool = False) -> dict:
    """One job on one repository; its result as JSON (exceptions propagate).

    Logs one line per run (job, repository, outcome, duration and the result's numbers): the
    CLI, the admin routes and the scheduler all come through here.
    """
    started = time.perf_counter()
    outcome = "failed"
    result: dict = {}
    try:
        result = _run_job(job, repo, settings, force=force, dry_run=dry_run)
        outcome = "done"
        for listener in list(getattr(repo, "job_listeners", ())):  # metrics (in-process)
            try:
                listener(job, result)
            except Exception:  # noqa: BLE001 - an observer never fails a job
                log.exception("job listener failed")
        return result
    except JobBusy:
        outcome = "skipped"
        raise
    finally:
        numbers = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
        logs.event(log, logging.INFO if outcome != "failed" else logging.ERROR,
                   f"{job} {repo.fqrn}: {outcome}", job=job, repository=repo.fqrn,
                   outcome=outcome, duration_s=round(time.perf_counter() - started, 6),
                   **{k: v for k, v in numbers.items()
                      if k not in ("job", "repository", "outcome", "duration_s")})


def _run_job(job: str, repo: Repository, settings: Settings, *, force: bool,
             dry_run: bool = False) -> dict:
    if job == "clean":
        return clean(repo, dry_run=dry_run).to_json()
    if job == "gc":
        return run_gc(repo, settings).to_json()
    if job == "resign":
        return run_resign(repo, settings, force=force).to_json()
    raise ValueError(f"unknown job {job!r}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_all(job: str, repos: Iterable[Repository], settings: Settings, *,
            force: bool = False, dry_run: bool = False) -> dict:
    """``{"job", "repositories": {fqrn: result | {"error"} | {"skipped"}}, "errors", totals}``."""
    report: dict = {"job": job, "repositories": {}, "errors": 0}
    for key in TOTALS[job]:
        report[key] = 0
    for repo in repos:
        try:
            result = run_job(job, repo, settings, force=force, dry_run=dry_run)
        except JobBusy as exc:
            report["repositories"][repo.fqrn] = {"skipped": str(exc)}
            continue
        except Exception as exc:  # noqa: BLE001 - report, go on with the next repository
            log.exception("%s failed on %s", job, repo.fqrn)
            report["repositories"][repo.fqrn] = {"error": _one_line(exc)}
            report["errors"] += 1
            continue
        report["repositories"][repo.fqrn] = result
        for key in TOTALS[job]:
            report[key] += int(result.get(key, 0))
    return report


def housekeeping(repos: Iterable[Repository], settings: Settings) -> dict:
    """clean, gc and resign on every repository: ``{"clean": report, "gc": …, "resign": …}``."""
    repos = list(repos)
    out = {job: run_all(job, repos, settings) for job in JOBS}
    out["errors"] = sum(out[job]["errors"] for job in JOBS)
    return out
