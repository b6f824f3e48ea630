"""Writing tar streams on the fly, piece by piece, without a file or a whole member in memory.

Used by the download route (a directory artifact is sent as a tar) and by the CI client (a
directory is uploaded as a tar). :mod:`tarfile` needs a file object to write into and reads a
member's whole content through ``addfile``; generating headers with ``TarInfo.tobuf`` and
yielding content blocks ourselves keeps memory at one block whatever the sizes. PAX format:
long names, large sizes and UTF-8 names need no special cases.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

BLOCK = tarfile.BLOCKSIZE  # 512
READ_BLOCK = 1024 * 1024
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


def header(name: str, kind: str, *, mode: int, mtime: int, size: int = 0,
           linkname: str = "") -> bytes:
    """The header block(s) of one member; ``kind`` is ``file``, ``dir`` or ``symlink``."""
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE,
                 "symlink": tarfile.SYMTYPE}[kind]
    info.mode = mode & 0o7777
    info.mtime = mtime
    info.size = size if kind == "file" else 0
    info.linkname = linkname
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    """Zero bytes that round a member's content up to a whole block."""
    rest = size % BLOCK
    return b"\0" * (BLOCK - rest) if rest else b""


def member(name: str, kind: str, *, mode: int, mtime: int, size: int = 0, linkname: str = "",
           content: Iterable[bytes] = ()) -> Iterator[bytes]:
    """Header, content pieces and padding of one member; checks the content has ``size`` bytes."""
    yield header(name, kind, mode=mode, mtime=mtime, size=size, linkname=linkname)
    if kind != "file":
        return
    sent = 0
    for piece in content:
        sent += len(piece)
        if sent > size:
            raise ValueError(f"{name}: content longer than its size {size}")
        yield piece
    if sent != size:
        raise ValueError(f"{name}: content ended after {sent} of {size} bytes (file changed?)")
    yield padding(size)


def _read_file(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while True:
            block = fh.read(READ_BLOCK)
            if not block:
                return
            yield block


def directory(root: Path) -> Iterator[bytes]:
    """A tar of the tree below ``root`` (member names relative to it), parents first.

    Regular files, directories and symlinks are included; other file types are refused, since
    the server would refuse them too.
    """
    for name, path, st in _walk(Path(root)):
        if stat.S_ISDIR(st.st_mode):
            yield from member(name, "dir", mode=st.st_mode, mtime=int(st.st_mtime))
        elif stat.S_ISLNK(st.st_mode):
            yield from member(name, "symlink", mode=0o777, mtime=int(st.st_mtime),
                              linkname=os.readlink(path))
        else:
            yield from member(name, "file", mode=st.st_mode, mtime=int(st.st_mtime),
                              size=st.st_size, content=_read_file(path))
    yield END_OF_ARCHIVE


def directory_size(root: Path) -> int:
    """Exact byte length of :func:`directory` for ``root`` (for a progress bar total)."""
    total = 0
    for chunk in _sizes(Path(root)):
        total += chunk
    return total + len(END_OF_ARCHIVE)


def _sizes(root: Path) -> Iterator[int]:
    for name, path, st in _walk(root):
        if stat.S_ISDIR(st.st_mode):
            yield len(header(name, "dir", mode=st.st_mode, mtime=int(st.st_mtime)))
        elif stat.S_ISLNK(st.st_mode):
            yield len(header(name, "symlink", mode=0o777, mtime=int(st.st_mtime),
                             linkname=os.readlink(path)))
        else:
            yield len(header(name, "file", mode=st.st_mode, mtime=int(st.st_mtime),
                             size=st.st_size)) + st.st_size + len(padding(st.st_size))


def _walk(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """(member name, path, lstat) of every entry below ``root``, parents first, sorted.

    Both the stream and its size walk the tree this way, so the size is exact.
    """
    stack = [(str(root), "")]
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            name = f"{rel}{e.name}"
            st = e.stat(follow_symlinks=False)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)
                    or stat.S_ISREG(st.st_mode)):
                raise ValueError(f"{e.path}: only files, directories and symlinks can be sent")
            yield name, e.path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append((e.path, name + "/"))
