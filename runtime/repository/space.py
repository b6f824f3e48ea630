"""The free-space reserve: uploads stop before the disk is full, so everything else keeps working.

Uploads (the only writes that grow the disk without bound) are refused with
:class:`StorageFull` (507, nothing published) as soon as the filesystem holding the data
directory has less than ``CVMFS_EPHEMERAL_MIN_FREE_BYTES`` free (default 256 MiB), checked when
a transaction begins and again while its content streams in. What remains free is the room that
everything else needs and never checks against the reserve: deletes and expiry (a root catalog
and a manifest, a few KiB), state.db's WAL, gc's fence file and catalog cache, and commits of
uploads that were already staged. So list, download, delete, clean and gc keep working after a
507, and the next gc frees the space of what expired without anyone's help.

A disk filled by someone else (another tenant of the volume, a log) is survivable too: reads
need no new file (``state.py``); a publish failing with ENOSPC or SQLITE_FULL answers 507 with
nothing published; and a file of ``RESERVE_FILE_BYTES`` kept in ``private/space.reserve`` is
given up to let a commit that only *removes* artifacts (a delete, the expiry sweep) through,
so the space can be freed without anyone's help. gc puts the file back once there is room.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StorageFull
from .filesystem import nearest_existing

DEFAULT_MIN_FREE_BYTES = 256 * 1024 * 1024
#: How much content may be staged between two checks of the free space (one ``statvfs``).
CHECK_EVERY_BYTES = 4 * 1024 * 1024
#: Size of ``private/space.reserve``: room for a delete's root catalog, manifest and WAL pages.
RESERVE_FILE_BYTES = 4 * 1024 * 1024
RESERVE_FILE = "space.reserve"


class SpaceGuard:
    """Compares the free space under ``path`` with the reserve."""

    def __init__(self, path: Path, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES):
        self.path = Path(path)
        self.min_free_bytes = int(min_free_bytes)
        self.reserve_file = self.path / "private" / RESERVE_FILE

    def free_bytes(self) -> int:
        st = os.statvfs(nearest_existing(self.path))
        return st.f_bavail * st.f_frsize

    def check(self, incoming: int = 0) -> None:
        """Raise :class:`StorageFull` when ``incoming`` more bytes would eat into the reserve."""
        if self.min_free_bytes <= 0:
            return
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise StorageFull(
                f"the server's storage is full ({free} bytes free, {self.min_free_bytes} kept "
                "in reserve); nothing was published, retry later")

    def ensure_reserve(self) -> bool:
        """Put the reserve file back when there is room for it and the reserve; True if present.

        Written under a temp name and renamed, so a full disk never leaves a short one.
        """
        if self.min_free_bytes <= 0:
            return False
        if self.reserve_file.exists():
            return True
        try:
            if self.free_bytes() < self.min_free_bytes + RESERVE_FILE_BYTES:
                return False
            self.reserve_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.reserve_file.with_name(f".{RESERVE_FILE}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_FILE_BYTES)
            except OSError:
                os.close(fd)
                os.unlink(tmp)
                return False
            os.close(fd)
            os.rename(tmp, self.reserve_file)
        except OSError:
            return False
        return True

    def release_reserve(self) -> bool:
        """Give the reserve file's space back to the filesystem; False if there was none."""
        try:
            self.reserve_file.unlink()
        except FileNotFoundError:
            return False
        return True
