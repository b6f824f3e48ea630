"""One run of a maintenance job per repository at a time, across threads and processes.

The server's scheduler, an admin route and a CLI run on the same host could otherwise start the
same job twice. Each job takes an exclusive, non-blocking ``flock`` on
``private/<fqrn>/maintenance-<job>.lock``; a second run fails fast with :class:`JobBusy` (HTTP
409) instead of queueing. The kernel drops the lock when its holder dies, so a killed job never
leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Iterator

from ..repository import Repository, RepositoryError


class JobBusy(RepositoryError):
    """The same job is already running on this repository."""


@contextlib.contextmanager
def job_lock(repo: Repository, job: str) -> Iterator[None]:
    repo.private_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(repo.private_dir / f"maintenance-{job}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JobBusy(f"{job} is already running on {repo.fqrn}") from None
            raise
        yield
    finally:
        os.close(fd)
