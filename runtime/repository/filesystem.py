"""What the data directory's filesystem means for creating objects: one known trap, ext4
without a journal.

ext4 skips free inodes that were freed in the last minute (six minutes while their inode table
block is not yet written back) when it picks an inode for a new file, but only on a filesystem
without a journal (``find_inode_bit`` -> ``recently_deleted`` in the kernel's
``fs/ext4/ialloc.c``, gated on ``s_journal == NULL``). It checks them one by one, from the
start of the group, on every new file. A stratum 0 creates one file per object, in the same
``data/XX`` directories that gc has just emptied, so after a gc run that freed many objects
each new object pays for every inode freed before it. Measured on the project's 2-core VM
(ext4 without a journal, one thread creating 2 KiB objects in 256 directories): 28,000
objects/s before a gc-like deletion of 20,000, 4,600/s right after it, 27,000/s 70 s later; on
a journaled ext4 (a loop mount on the same disk) 25,000-28,000/s throughout. The publishes
stay correct, only slow, so this is a start-up warning, not an error.

Detection is from ``/proc`` and ``/sys`` only (no device access): the block device of the
directory (``st_dev`` -> ``/sys/dev/block/MAJ:MIN``) is mounted as ext4 when
``/proc/fs/ext4/<dev>`` exists, and has a journal when ``/proc/fs/jbd2/<dev>-<inode>`` does.
Anything else (another filesystem, a container that hides ``/proc/fs``, an overlay) is
"unknown" and gets no warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC_EXT4 = Path("/proc/fs/ext4")
PROC_JBD2 = Path("/proc/fs/jbd2")
SYS_DEV_BLOCK = Path("/sys/dev/block")


@dataclass(frozen=True)
class Ext4Mount:
    """The ext4 filesystem a directory lives on: its kernel device name, and whether it has a
    journal."""

    device: str
    journal: bool


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists: the filesystem a data directory not created
    yet will be on (for the free-space check too, runtime/repository/space.py)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ext4_of(path: Path, *, proc_ext4: Path | None = None, proc_jbd2: Path | None = None,
            sys_dev_block: Path | None = None) -> Ext4Mount | None:
    """The ext4 filesystem holding ``path`` (or its nearest existing parent); None when it is
    not ext4 or cannot be told. The ``proc_*``/``sys_*`` roots (default: the module's
    constants, read at call time) let the tests lay out the kernel's trees themselves."""
    proc_ext4 = proc_ext4 or PROC_EXT4
    proc_jbd2 = proc_jbd2 or PROC_JBD2
    sys_dev_block = sys_dev_block or SYS_DEV_BLOCK
    try:
        st = os.stat(nearest_existing(Path(path)))
        node = sys_dev_block / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        device = os.path.basename(os.readlink(node))
    except OSError:
        return None
    if not (proc_ext4 / device).is_dir():
        return None
    try:
        journals = [p.name for p in proc_jbd2.iterdir()]
    except FileNotFoundError:
        journals = []  # jbd2 not loaded: no filesystem has a journal
    except OSError:
        return None
    return Ext4Mount(device, any(name.startswith(device + "-") for name in journals))


def object_store_warnings(path: Path, **roots: Path) -> list[str]:
    """Start-up warnings about creating objects under ``path`` (empty when there are none)."""
    mount = ext4_of(path, **roots)
    if mount is None or mount.journal:
        return []
    return [f"the data directory {path} is on ext4 without a journal (/dev/{mount.device}): "
            "after gc frees many objects, new objects are created several times slower for up "
            "to six minutes (ext4 checks every recently freed inode on each new file only when "
            "it has no journal); use a filesystem with a journal (ext4's default, XFS)"]


__all__ = ["Ext4Mount", "ext4_of", "nearest_existing", "object_store_warnings"]
