"""The errors a repository raises for a caller to show as one line.

Every refusal of user input is a :class:`RepositoryError`; the upload API maps each subclass to
an HTTP status (``runtime/server/uploads.py``). Anything else escaping a commit is a bug or an
environment failure and is never blamed on a neighbouring transaction (see ``commit.py``).
"""

from __future__ import annotations


class RepositoryError(Exception):
    """Base of the errors a caller can show to a user as one line."""


class InvalidPath(RepositoryError, ValueError):
    """A name, path, symlink target, mode or mtime that the repository cannot hold (400)."""


class ArtifactExists(RepositoryError):
    pass


class ArtifactNotFound(RepositoryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class QuotaExceeded(RepositoryError):
    """An upload would take its top-level namespace over the repository's byte quota (413).

    Raised at staging time when the declared size already does not fit, and at commit time
    (under the writer lock) with the real size, so that concurrent uploads cannot overshoot.
    """


class RepositoryLocked(RepositoryError):
    pass


class NotInitialized(RepositoryError):
    pass


class StorageFull(RepositoryError, OSError):
    """The disk (or the free-space reserve) is full: nothing was published, retry later (507).

    Also an ``OSError`` with ``errno.ENOSPC``, so callers that test for a full disk by errno
    (``uploads.storage_full``) treat it like the kernel's own ENOSPC.
    """

    def __init__(self, message: str):
        import errno

        OSError.__init__(self, errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message
