"""Expiry sweep: remove every artifact past its ``expires_at`` in one new revision.

All expired artifacts go in one transaction (``Transaction.remove_expired``), so a run costs one
publish and one notification however many artifacts expire. Which artifacts are expired is
decided again at commit time under the writer lock, so an artifact re-uploaded with a fresh TTL
while the sweep runs survives it.

Crash safety: the sweep writes only through :meth:`Repository.publish`. Killed before the
commit point, nothing changed (the catalogs already written are orphans for gc); killed after
it, the next open rolls the pending revision forward. Either way the served revision is a
complete signed one and the next run sweeps whatever is still expired (and, if the state
already records the sweep but the manifest was not yet replaced, rolls that revision forward).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from ..repository import Repository
from .joblock import job_lock


@dataclass
class CleanResult:
    repository: str
    expired: int  # artifacts past expires_at when the run started
    removed: list[str] = field(default_factory=list)
    revision: int = 0  # the served revision after the run
    new_revision: bool = False
    seconds: float = 0.0
    #: -- retention: a dry run lists in ``would_remove`` what it would remove, removes nothing
    dry_run: bool = False
    would_remove: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = asdict(self)
        out["removed_count"] = len(self.removed)
        return out


def expired_artifacts(repo: Repository, now: float) -> list[str]:
    """Names of the artifacts whose TTL has run out at ``now`` (repository clock)."""
    return [a.name for a in repo.artifacts() if a.expires_at is not None and a.expires_at <= now]


def clean(repo: Repository, *, now: float | None = None, dry_run: bool = False) -> CleanResult:
    """Remove every expired artifact in one revision; no revision when nothing expired.

    ``dry_run``: only list what would be removed now (``would_remove``); it writes nothing,
    not even the roll-forward of a pending revision, so the served revision stays the same.
    """
    started = time.perf_counter()
    with job_lock(repo, "clean"):
        now = repo.clock() if now is None else now
        expired = expired_artifacts(repo, now)
        result = CleanResult(repo.fqrn, len(expired), dry_run=dry_run)
        if dry_run:
            result.would_remove = sorted(expired)
            result.revision = repo.revision()
        elif expired:
            tx = repo.begin()
            tx.remove_expired(now)
            published = repo.publish(tx)
            error = published.error_for(tx)
            if error is not None:
                raise error
            result.removed = sorted(published.removed)
            result.new_revision = published.new_revision
            result.revision = published.revision
        else:
            if any(r["state"] == "pending" for r in repo.revisions()):
                repo.publish()  # an earlier run died after its commit point: roll it forward
            result.revision = repo.revision()
    result.seconds = round(time.perf_counter() - started, 6)
    return result
