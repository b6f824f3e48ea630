"""The bounds one archive upload is held to, so that no upload can take a neighbour's memory.

Every limit is a setting (``runtime/settings.py``, "ingest limits"); :class:`IngestLimits`
carries them to the parser. Each is checked *before* the thing it bounds is allocated: a tar
header's declared size is checked before tarfile reads it, a metadata blob's size before it is
read, the entry count as members arrive. Sizes and counts answer 413
(:class:`ArtifactTooLarge`), names 400 (:class:`ArchiveError`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ArchiveError, ArtifactTooLarge
from ..repository.names import validate_mtime

MiB = 1024 * 1024


@dataclass(frozen=True)
class IngestLimits:
    #: Any single tar header including its PAX extended header or GNU long name/link.
    max_header_bytes: int = 1 * MiB
    #: All non-layer members of an image archive (manifest/config/index JSON) together.
    max_image_metadata_bytes: int = 64 * MiB
    #: Members of one archive (every layer of an image counted).
    max_entries: int = 1_000_000
    #: Components of a member's path.
    max_path_depth: int = 256
    #: Bytes of a member's path (and of a symlink target).
    max_path_bytes: int = 4096
    #: Unpacked bytes; ``None``: unlimited (the server passes ``max_artifact_bytes``).
    max_bytes: int | None = None

    @classmethod
    def from_settings(cls, settings: object, max_bytes: int | None = None) -> "IngestLimits":
        return cls(max_header_bytes=settings.max_tar_header_bytes,  # type: ignore[attr-defined]
                   max_image_metadata_bytes=settings.max_image_metadata_bytes,  # type: ignore[attr-defined]
                   max_entries=settings.max_archive_entries,  # type: ignore[attr-defined]
                   max_path_depth=settings.max_path_depth,  # type: ignore[attr-defined]
                   max_path_bytes=settings.max_path_bytes,  # type: ignore[attr-defined]
                   max_bytes=max_bytes)


class EntryBudget:
    """Counts the entries of one archive against ``max_entries``."""

    __slots__ = ("limit", "count")

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0

    def take(self) -> None:
        self.count += 1
        if self.count > self.limit:
            raise ArtifactTooLarge(f"archive has more than {self.limit} entries (the limit)")


def check_path(name: str, parts: list[str], limits: IngestLimits) -> None:
    """Refuse a member name that is too long or too deep, or not UTF-8 (tarfile hands
    undecodable bytes over as surrogate escapes)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ArchiveError(f"archive member {name.encode('utf-8', 'surrogateescape')!r} "
                           "has a name that is not UTF-8") from None
    if size > limits.max_path_bytes:
        raise ArchiveError(f"archive member name longer than {limits.max_path_bytes} bytes")
    if len(parts) > limits.max_path_depth:
        raise ArchiveError(f"archive member {name[:200]!r} is deeper than "
                           f"{limits.max_path_depth} directories")


def check_link_target(name: str, target: str, limits: IngestLimits) -> str:
    """A symlink target must be UTF-8 (catalogs store text) and no longer than a path."""
    try:
        size = len(target.encode("utf-8"))
    except UnicodeEncodeError:
        raise ArchiveError(f"symlink {name[:200]!r} has a target that is not UTF-8") from None
    if size > limits.max_path_bytes:
        raise ArchiveError(f"symlink {name[:200]!r} has a target longer than "
                           f"{limits.max_path_bytes} bytes")
    return target


def check_mtime(name: str, mtime: float) -> int:
    """A member's mtime as an integer the catalog can hold: the repository's own rule
    (:func:`runtime.repository.names.validate_mtime`: NaN, inf and values outside the signed
    64-bit column refused), applied while parsing, before the member is flattened or staged."""
    return validate_mtime(mtime, name[:200])
