"""The free-space reserve: uploads stop before the disk is full, so everything else keeps working.

Uploads (the only writes that grow the disk without bound) are refused with
:class:`StorageFull` (507, nothing published) as soon as the filesystem holding the data
directory has less than ``CVMFS_EPHEMERAL_MIN_FREE_BYTES`` free (default 256 MiB), checked when
a transaction begins and again while its content streams in. What remains free is the room that
everything else needs and never checks against the reserve: deletes and expiry (a root catalog
and a manifest, a few KiB), state.db's WAL, gc's fence file and catalog cache, and commits of
uploads that were already staged. So list, download, delete, clean and gc keep working after a
507, and the next gc frees the space of what expired without anyone's help.

A disk filled by someone else (another tenant of the volume) is still survivable: reads need no
new file (``state.py``), and a publish failing with ENOSPC or SQLITE_FULL answers 507 with
nothing published.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StorageFull

DEFAULT_MIN_FREE_BYTES = 256 * 1024 * 1024
#: How much content may be staged between two checks of the free space (one ``statvfs``).
CHECK_EVERY_BYTES = 4 * 1024 * 1024


class SpaceGuard:
    """Compares the free space under ``path`` with the reserve."""

    def __init__(self, path: Path, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES):
        self.path = Path(path)
        self.min_free_bytes = int(min_free_bytes)

    def free_bytes(self) -> int:
        path = self.path
        while not path.exists() and path != path.parent:
            path = path.parent
        st = os.statvfs(path)
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
