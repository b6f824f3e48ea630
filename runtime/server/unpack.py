"""The archive ingestion the upload routes use; it lives in :mod:`runtime.ingest` (it is not
HTTP). Kept so that ``from runtime.server.unpack import …`` goes on working."""

from ..ingest import (ArchiveError, ArtifactTooLarge, BodyPipe, ClientGone, IngestLimits,
                      UnpackPool, UnpackStats, stage_archive, stage_archive_async)
from ..ingest.image import IMAGE_MEMBER_RE, looks_like_tar
from ..ingest.tar import iter_members, member_parts, open_tar

__all__ = ["ArchiveError", "ArtifactTooLarge", "BodyPipe", "ClientGone", "IMAGE_MEMBER_RE",
           "IngestLimits", "UnpackPool", "UnpackStats", "iter_members", "looks_like_tar",
           "member_parts", "open_tar", "stage_archive", "stage_archive_async"]
