"""Retention rules of the upload API: lifetimes, ``keep_last``/``pin`` and byte quotas.

What a CI user of GitLab or Artifactory expects, per repository (``RepositoryConfig``'s
``# -- retention --`` block, merged with the global settings by ``Settings.lifetimes``):

- **Lifetimes.** An upload without ``ttl_s``/``expire_in`` gets the repository's default
  lifetime. A longer lifetime than the repository's maximum is *refused* (422, naming the
  maximum), not clamped: a job that asked for three months and silently got one would lose
  its artifacts earlier than its author planned, and GitLab itself refuses an ``expire_in`` it
  cannot honour rather than shortening it. ``expire_in: never`` only where the repository
  allows it.
- **keep_last / pin** are decided at commit time (``runtime/repository/commit.py``): here
  they are only parsed, from the query or from multipart form fields.
- **Quota** per top-level namespace: checked here before any byte is staged when the size is
  known from ``Content-Length`` (a plain file), and again at commit time with the real size
  under the writer lock (``Commit.check_quota``), so concurrent uploads cannot overshoot.

When the process dies: nothing here writes. The upload, its ``keep_last`` removals and its pin
are one commit (``runtime/repository/commit.py``): before its commit point none of them
happened, after it all of them did. A pin change alone is one SQLite transaction on
``state.db`` (no new revision), recorded whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from fastapi import HTTPException

from ..repository import ArtifactInfo, QuotaExceeded, top_namespace
from ..settings import Lifetimes
from . import durations

#: Largest ``keep_last`` accepted (a typo of 10^9 would otherwise mean "keep everything"
#: silently; a namespace of more artifacts than this is not what the option is for).
MAX_KEEP_LAST = 100_000


def lifetime(rules: Lifetimes, fqrn: str, ttl_s: int | None,
             expire_in: str | None) -> int | None:
    """Seconds until expiry from ``ttl_s`` or GitLab-style ``expire_in`` (one of them at
    most), else the repository's default; None for ``expire_in=never`` where allowed. 422
    with a one-line detail otherwise."""
    if expire_in is None:
        seconds = rules.default_s if ttl_s is None else ttl_s
        if seconds <= 0 or seconds > rules.max_s:
            raise HTTPException(422, f"ttl_s must be between 1 and {rules.max_s} seconds "
                                     f"(the maximum lifetime in {fqrn}), got {seconds}")
        return seconds
    if ttl_s is not None:
        raise HTTPException(422, "pass either ttl_s or expire_in, not both")
    if expire_in.strip().lower() == durations.NEVER:
        if not rules.allow_never:
            raise HTTPException(422, f"expire_in 'never' is not allowed in {fqrn} (its "
                                     f"maximum lifetime is {rules.max_s} seconds)")
        return None
    try:
        seconds = durations.parse_duration(expire_in)
    except durations.DurationError as exc:
        raise HTTPException(422, str(exc)) from None
    if seconds <= 0 or seconds > rules.max_s:
        raise HTTPException(422, f"expire_in {expire_in!r} is {seconds} s; it must be between "
                                 f"1 and {rules.max_s} seconds (the maximum lifetime in "
                                 f"{fqrn})")
    return seconds


# -- keep_last and pin ------------------------------------------------------------------------
def parse_keep_last(value: str | int | None) -> int | None:
    """``keep_last`` from the query or a form field: None, or 1..MAX_KEEP_LAST (else 422)."""
    if value is None or value == "":
        return None
    try:
        count = int(str(value).strip())
    except ValueError:
        raise HTTPException(422, f"keep_last must be a whole number, got {str(value)[:40]!r}"
                            ) from None
    if not 1 <= count <= MAX_KEEP_LAST:
        raise HTTPException(422, f"keep_last must be between 1 and {MAX_KEEP_LAST}, "
                                 f"got {count}")
    return count


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_pin(value: str | bool | None) -> bool | None:
    """``pin`` as FastAPI reads a boolean query parameter; None when absent (else 422)."""
    if value is None or isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise HTTPException(422, f"pin must be true or false, got {value[:40]!r}")


def merge(what: str, query: object, form: object) -> object:
    """One value from the query and the form (either; both only when they agree)."""
    if query is not None and form is not None and query != form:
        raise HTTPException(422, f"{what} given twice with different values (query and form)")
    return query if query is not None else form


# -- quota and usage ----------------------------------------------------------------------
@dataclass(frozen=True)
class NamespaceUsage:
    namespace: str
    bytes: int
    artifacts: int


def usage(artifacts: Iterable[ArtifactInfo]) -> dict[str, NamespaceUsage]:
    """Bytes and artifacts per top-level namespace."""
    totals: dict[str, list[int]] = {}
    for a in artifacts:
        entry = totals.setdefault(top_namespace(a.name), [0, 0])
        entry[0] += a.size
        entry[1] += 1
    return {ns: NamespaceUsage(ns, b, n) for ns, (b, n) in sorted(totals.items())}


def precheck_quota(rules: Lifetimes, fqrn: str, name: str, incoming: int,
                   artifacts_under: Callable[[str], Iterable[ArtifactInfo]]
                   ) -> "QuotaRoom | None":
    """Refuse (:class:`QuotaExceeded`, 413) before staging when ``incoming`` bytes replacing
    ``name`` cannot fit its top-level namespace's quota (the commit checks again). Returns
    what is left, to refuse a file mid-stream once it outgrows it; None without a quota.

    ``artifacts_under(top)`` lists that namespace's artifacts (a prefix listing), called only
    where a quota applies: an upload without one reads nothing."""
    quota = rules.quota_bytes
    if quota is None:
        return None
    top = top_namespace(name)
    used = replaced = 0
    for a in artifacts_under(top):
        used += a.size
        if a.name == name:
            replaced = a.size
    room = QuotaRoom(fqrn, top, quota, used, used - replaced)
    room.check(incoming)
    return room


@dataclass(frozen=True)
class QuotaRoom:
    """A namespace's quota as seen before staging: ``check`` refuses a size that cannot fit."""

    fqrn: str
    namespace: str
    quota: int
    used: int
    #: bytes the namespace holds without the artifact being replaced
    others: int

    def check(self, incoming: int) -> None:
        after = self.others + incoming
        if after > self.quota:
            raise QuotaExceeded(
                f"quota exceeded: namespace {self.namespace!r} of {self.fqrn} may hold "
                f"{self.quota} bytes, {self.used} are in use and this upload would make it "
                f"{after}; nothing was published")


def usage_report(fqrn: str, revision: int, rules: Lifetimes,
                 artifacts: list[ArtifactInfo]) -> dict:
    """``GET /repos/{repo}/usage``: per namespace, and the repository's totals."""
    quota = rules.quota_bytes
    spaces = usage(artifacts)
    return {
        "repository": fqrn, "revision": revision, "quota_bytes": quota,
        "bytes": sum(u.bytes for u in spaces.values()),
        "artifacts": sum(u.artifacts for u in spaces.values()),
        "namespaces": [{"namespace": u.namespace, "bytes": u.bytes, "artifacts": u.artifacts,
                        "quota_bytes": quota,
                        "quota_used": u.bytes / quota if quota else None}
                       for u in spaces.values()],
    }


__all__ = ["MAX_KEEP_LAST", "NamespaceUsage", "lifetime", "merge", "parse_keep_last",
           "parse_pin", "precheck_quota", "usage", "usage_report"]
