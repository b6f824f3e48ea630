"""The synchronous entry point: one archive read from a file object, staged as one artifact."""

from __future__ import annotations

import lzma
import tarfile
import zlib
from typing import BinaryIO

import zstandard

from ..repository import RepositoryError, Transaction
from .content import ContentStore, UnpackStats
from .errors import ArchiveError, one_line
from .image import ImageReader, is_image_member, stage_image
from .limits import EntryBudget, IngestLimits
from .plain import PlainStager
from .tar import iter_members, member_parts, open_tar


def stage_archive(tx: Transaction, name: str, fileobj: BinaryIO, *,
                  max_bytes: int | None = None,
                  limits: IngestLimits | None = None) -> UnpackStats:
    """Stage the archive read from ``fileobj`` as the directory artifact ``name``.

    Raises :class:`ArchiveError` for a malformed, corrupt, truncated, unsafe or unsupported
    archive and :class:`ArtifactTooLarge` when a limit is exceeded (``max_bytes`` unpacked
    bytes, or one of ``limits``); the caller then aborts the transaction, and nothing is
    published. Synchronous: run it on a worker thread when the bytes come from an event loop
    (see :func:`runtime.ingest.bridge.stage_archive_async`).
    """
    name = tx.artifact(name)  # a hierarchical name: its paths belong to that artifact
    limits = limits or IngestLimits()
    if max_bytes is None:
        max_bytes = limits.max_bytes
    stats = UnpackStats()
    store = ContentStore(tx, stats, max_bytes)
    budget = EntryBudget(limits.max_entries)
    try:
        return _stage(tx, name, fileobj, store, limits, budget, stats)
    except RepositoryError:
        store.abandon()
        raise
    except _MALFORMED as exc:
        # a reader below another (a layer inside an image, a tar inside a compression) failed
        # where no closer handler names it: still the archive's fault, never the server's
        store.abandon()
        raise ArchiveError(f"malformed archive: {one_line(exc)}") from exc
    except BaseException:
        store.abandon()
        raise


#: What reading a malformed archive can raise from deep inside tarfile and the decompressors
#: (not OSError: a full disk while storing content must stay a 507).
_MALFORMED = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError,
              ValueError, UnicodeError)


def _stage(tx: Transaction, name: str, fileobj: BinaryIO, store: ContentStore,
           limits: IngestLimits, budget: EntryBudget, stats: UnpackStats) -> UnpackStats:
    tar = open_tar(fileobj, limits)
    tx.add_directory(name, mode=0o755)
    leading_dirs: list[tarfile.TarInfo] = []
    handler: PlainStager | ImageReader | None = None
    for info in iter_members(tar):
        if handler is None:
            if info.isdir() and len(leading_dirs) < 64:
                leading_dirs.append(info)
                continue
            is_image = not info.isdir() and is_image_member("/".join(member_parts(info.name)))
            handler = (ImageReader(store, limits, budget) if is_image
                       else PlainStager(tx, name, store, limits, budget))
            for d in leading_dirs:
                handler.add(tar, d)
            leading_dirs.clear()
        handler.add(tar, info)
    if handler is None:  # only directories, or nothing
        handler = PlainStager(tx, name, store, limits, budget)
        for d in leading_dirs:
            handler.add(tar, d)
    store.drain()
    if isinstance(handler, PlainStager):
        handler.finish()
        return stats
    stage_image(tx, name, handler, stats)
    return stats
