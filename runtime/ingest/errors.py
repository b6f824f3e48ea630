"""Why an archive is refused: the two answers an upload can get from the parser.

Both are :class:`~runtime.repository.RepositoryError` subclasses, so every caller that already
turns repository errors into an answer (HTTP 400/413, a CLI exit code) handles them too.
"""

from __future__ import annotations

from ..repository import RepositoryError


class ArchiveError(RepositoryError):
    """The archive is malformed, corrupt, truncated, unsafe (escaping names) or not a supported
    kind (HTTP 400)."""


class ArtifactTooLarge(RepositoryError):
    """The archive exceeds a size or count limit: unpacked bytes, entries, a header or image
    metadata (HTTP 413)."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's text (answers carry one line)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
