"""Whitelist re-signing: keep ``.cvmfswhitelist`` valid so clients never refuse the repository.

Clients refuse a repository whose whitelist has expired (docs/cvmfs-format.md, "Whitelist": hours),
which blocks every new revision and every fresh mount. A run re-signs the whitelist with the
master key when fewer than ``resign_below_days`` remain (default 20 of 30; ``force`` re-signs
now); the manifest and the data are not touched.

Crash safety: the new whitelist is written to a temp file, fsynced and renamed over the old one
(``Repository.write_whitelist``), so a kill leaves the old or the new whitelist, both signed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass

from ..cvmfs import whitelist as whitelist_mod
from ..repository import Repository
from .joblock import job_lock

log = logging.getLogger(__name__)

DAY_S = 86400
#: Below this many seconds of validity the server logs a warning at every check.
WARN_BELOW_S = 7 * DAY_S


@dataclass
class ResignResult:
    repository: str
    resigned: bool
    reason: str
    expires: str  # ISO time clients stop accepting the whitelist (hour granularity)
    seconds_left: float
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)


def whitelist_seconds_left(repo: Repository, now: float | None = None) -> float | None:
    """Seconds until clients refuse the whitelist (negative once expired); None if unreadable.

    The gauge ``/metrics`` exports and ``info`` prints.
    """
    now = repo.clock() if now is None else now
    try:
        return repo.whitelist().seconds_left(utc(now))
    except (OSError, whitelist_mod.WhitelistError):
        return None


def _why_resign(repo: Repository, now: float, below_days: float, force: bool) -> str | None:
    if force:
        return "forced"
    try:
        wl = repo.whitelist()
    except FileNotFoundError:
        return "whitelist missing"
    except whitelist_mod.WhitelistError as exc:
        return f"whitelist unreadable ({exc})"
    if wl.fqrn != repo.fqrn:
        return "whitelist names another repository"
    if not whitelist_mod.lists(wl, repo.keys.fingerprint):
        return "whitelist does not list the current certificate"
    left = wl.seconds_left(utc(now))
    if left < below_days * DAY_S:
        return f"{left / DAY_S:.1f} days left, below {below_days:g}"
    return None


def resign(repo: Repository, *, force: bool = False, below_days: float = 20,
           validity_days: int = 30, now: float | None = None) -> ResignResult:
    """Re-sign the whitelist if it is due (or ``force``); warn when it is close to expiry."""
    started = time.perf_counter()
    with job_lock(repo, "resign"):
        now = repo.clock() if now is None else now
        reason = _why_resign(repo, now, below_days, force)
        failure: Exception | None = None
        if reason is not None:
            try:
                repo.write_whitelist(utc(now), dt.timedelta(days=validity_days))
                log.info("re-signed the whitelist of %s (%s)", repo.fqrn, reason)
            except Exception as exc:  # noqa: BLE001 - warn about the expiry, then re-raise
                failure = exc
        left = whitelist_seconds_left(repo, now)
    if left is None or left < WARN_BELOW_S:
        state = ("is unreadable" if left is None else "has expired: clients refuse new revisions"
                 if left <= 0 else f"expires in {left / DAY_S:.1f} days")
        log.warning("whitelist of %s %s; re-sign it with the master key", repo.fqrn, state)
    if failure is not None:
        raise failure
    wl = repo.whitelist()
    return ResignResult(repo.fqrn, reason is not None, reason or "not due",
                        wl.expires.replace(minute=0, second=0).isoformat(), left,
                        round(time.perf_counter() - started, 6))
