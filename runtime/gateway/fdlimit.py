"""Raise this process's open-file limit to its hard limit.

Every subscriber is an open socket: with the common soft limit of 1,024 descriptors the
gateway would refuse connections (and fail unrelated requests) long before 10,000 subscribers,
although the hard limit (what the administrator allows) is usually far higher.
"""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def raise_nofile_limit() -> int | None:
    """Set RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit now in force."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target
