"""Content-addressed object store: ``data/XX/<rest><suffix>`` (docs/cvmfs-format.md, "Objects").

An object's name is the SHA-1 of exactly the bytes served, i.e. of the compressed stream for
zlib objects. A new object is created directly under its final name (``O_EXCL``): a temp file
plus a rename would cost a second directory update per object, which made up a third of the
time of unpacking a tarball of small files. Individual objects are *not* fsynced: a publish
calls :meth:`ObjectStore.sync` once (``syncfs``) before the manifest that references them is
written, which makes thousands of small objects durable for the price of one flush.

Why a reader never sees a partial object: readers (clients, stratum 1s, gc's mark) only ask for
objects named by a published catalog, and a catalog is published only after every object it
names was completely written and synced. An object that already exists is trusted only when its
size is the expected one, so a short copy is never reused: it is replaced through a temp file in
``data/txn/`` and a rename, which is atomic towards any concurrent reader of the old copy.

Crash safety: a process killed mid-write leaves a short object under its final name, referenced
by nothing; the next ``put`` of the same content replaces it (wrong size), and gc removes it
otherwise. A kill during a replacement leaves a temp file in ``data/txn/`` (removed by gc).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import itertools
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

from . import deflate

#: Object suffixes (cvmfs/crypto/hash.h).
FILE = ""
CATALOG = "C"
PARTIAL = "P"
HISTORY = "H"
CERTIFICATE = "X"
METAINFO = "M"
SUFFIXES = (FILE, CATALOG, PARTIAL, HISTORY, CERTIFICATE, METAINFO)

HEX_LEN = 40  # SHA-1, the only algorithm this writer emits (flags bits 8-10 = 0)
#: Objects at least this large start their writeback as soon as they are written.
EARLY_WRITEBACK_BYTES = 1024 * 1024


#: Bytes of an object, whole or as the pieces it arrived in (written with one ``writev``).
Buffers = Union[bytes, Sequence[bytes]]
#: Most buffers one ``writev`` takes (Linux ``IOV_MAX``).
IOV_MAX = 1024


def _pieces(payload: Buffers) -> Sequence[bytes]:
    return (payload,) if isinstance(payload, (bytes, bytearray, memoryview)) else payload


def object_relpath(hex_digest: str, suffix: str = FILE) -> str:
    """``data/`` + first two hex chars + ``/`` + the rest + suffix."""
    return f"data/{hex_digest[:2]}/{hex_digest[2:]}{suffix}"


#: Deflate level of catalogs, histories and the certificate (:func:`compress`).
METADATA_LEVEL = 4


def compress(data: bytes) -> bytes:
    """A zlib (RFC 1950) stream of a catalog, history or certificate, from :mod:`.deflate`.

    Clients inflate these with their own zlib like file content, so the faster deflate
    serves here too: a 10,000-entry catalog (1.5 MiB) took 24 ms at stock zlib's level 6,
    11 ms with zlib-ng at level 4, 1.5 % larger; compressing it was a fifth of a publish.
    """
    return deflate.compress(data, METADATA_LEVEL)


def compressor() -> "zlib._Compress":
    """A streaming :func:`compress` (the same bytes for the same input, however it is fed)."""
    return deflate.compressobj(METADATA_LEVEL)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object in the store: its hex name, suffix and the number of bytes served."""

    hex: str
    suffix: str
    stored_size: int

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.hex)

    @property
    def relpath(self) -> str:
        return object_relpath(self.hex, self.suffix)


_libc = None


def _syncfs(fd: int) -> None:
    """Flush the filesystem holding ``fd`` (Linux ``syncfs``); fall back to ``os.sync``."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name, use_errno=True) if name else False
    if _libc and hasattr(_libc, "syncfs"):
        if _libc.syncfs(fd) == 0:
            return
    os.sync()


class ObjectStore:
    """The ``data/`` tree of one repository's served directory."""

    def __init__(self, repo_dir: Path):
        self.root = Path(repo_dir)
        self.data = self.root / "data"
        self.txn = self.data / "txn"
        self._counter = itertools.count()
        self._tag = f"{os.getpid()}"
        self._data_str = str(self.data)
        self._txn_str = str(self.txn)

    def create_skeleton(self) -> None:
        """``data/00`` … ``data/ff`` and ``data/txn`` like cvmfs_server (cvmfs_server_common.sh)."""
        self.txn.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.data / f"{i:02x}").mkdir(exist_ok=True)

    def path(self, hex_digest: str, suffix: str = FILE) -> Path:
        return self.root / object_relpath(hex_digest, suffix)

    def exists(self, hex_digest: str, suffix: str = FILE) -> bool:
        return self.path(hex_digest, suffix).exists()

    def _tmp_name(self) -> str:
        return f"{self._txn_str}/{self._tag}.{threading.get_ident()}.{next(self._counter)}"

    def put(self, payload: Buffers, suffix: str = FILE) -> StoredObject:
        """Store ``payload`` (the exact served bytes, whole or as pieces) under its SHA-1;
        idempotent.

        An object that already exists with the right size is not rewritten; its mtime is
        refreshed so that a concurrent gc, which only collects objects older than its own start,
        cannot remove it between now and the publish that references it.
        """
        pieces = _pieces(payload)
        h = hashlib.sha1()
        for piece in pieces:
            h.update(piece)
        hex_digest = h.hexdigest()
        size = sum(map(len, pieces))
        stored = StoredObject(hex_digest, suffix, size)
        # plain strings: this runs once per object, and pathlib costs more than the syscalls
        final = f"{self._data_str}/{hex_digest[:2]}/{hex_digest[2:]}{suffix}"
        for _attempt in range(3):
            try:
                fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    if os.stat(final).st_size == size:
                        os.utime(final)
                        return stored
                except FileNotFoundError:
                    continue  # gc took it meanwhile: create it again
                self._replace(final, pieces, size)  # a short copy (killed writer): never reused
                return stored
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                continue
            self._write(fd, pieces, size)
            return stored
        raise OSError(f"object {hex_digest}{suffix}: could not be created at {final}")

    @staticmethod
    def _write(fd: int, pieces: Sequence[bytes], size: int) -> None:
        """Write ``pieces`` (``size`` bytes) to ``fd`` with ``writev`` and close it.

        A failed write (disk full) leaves a short object, exactly like a killed writer: it is
        not removed here, because a concurrent ``put`` of the same content may already have
        replaced it with a complete copy under the same name.
        """
        try:
            views = [memoryview(p) for p in pieces if len(p)]
            first = 0
            while first < len(views):
                done = os.writev(fd, views[first:first + IOV_MAX])
                while done:  # drop what was written; a short write leaves part of a piece
                    if done >= len(views[first]):
                        done -= len(views[first])
                        first += 1
                    else:
                        views[first] = views[first][done:]
                        done = 0
            if size >= EARLY_WRITEBACK_BYTES:
                # Start writing this object to disk now, without waiting: the publish's one
                # syncfs then finds little left to flush instead of the whole upload.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def _replace(self, final: str, pieces: Sequence[bytes], size: int) -> None:
        """Atomically replace whatever is at ``final`` with ``pieces`` (temp file + rename)."""
        tmp = self._tmp_name()
        try:
            self._write(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), pieces, size)
            os.rename(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def put_content(self, data: Buffers, suffix: str, compressed: bool,
                    level: int = deflate.DEFAULT_LEVEL) -> StoredObject:
        """Compress (a zlib stream from :mod:`.deflate`, at ``level``) or not, then :meth:`put`.

        Compressed content is joined first: zlib's output (and so the object's name) must not
        depend on how the bytes happened to be split when they arrived.
        """
        if compressed:
            pieces = _pieces(data)
            whole = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            return self.put(deflate.compress(whole, level), suffix)
        return self.put(data, suffix)

    def read(self, hex_digest: str, suffix: str = FILE) -> bytes:
        return self.path(hex_digest, suffix).read_bytes()

    def read_inflated(self, hex_digest: str, suffix: str = FILE) -> bytes:
        return zlib.decompress(self.read(hex_digest, suffix))

    def delete(self, hex_digest: str, suffix: str = FILE) -> int:
        """Remove an object; return the bytes freed (0 if it was already gone)."""
        path = self.path(hex_digest, suffix)
        try:
            size = path.stat().st_size
            path.unlink()
            return size
        except FileNotFoundError:
            return 0

    def iter_objects(self) -> Iterator[tuple[str, str, os.stat_result]]:
        """Yield ``(hex, suffix, stat)`` for every object (temp files excluded)."""
        if not self.data.is_dir():
            return
        for bucket in sorted(os.scandir(self.data), key=lambda e: e.name):
            if len(bucket.name) != 2 or not bucket.is_dir():
                continue
            for entry in os.scandir(bucket.path):
                name = entry.name
                rest, suffix = (name[:-1], name[-1]) if len(name) == HEX_LEN - 1 else (name, "")
                if len(rest) != HEX_LEN - 2 or suffix not in SUFFIXES:
                    continue
                yield bucket.name + rest, suffix, entry.stat()

    def start_sync(self) -> threading.Thread:
        """Begin :meth:`sync` on a thread and return it (``join`` waits).

        A commit starts flushing the staged objects while it builds catalogs, so its final
        :meth:`sync` only has the catalogs left to write.
        """
        thread = threading.Thread(target=self.sync, name="objects-sync", daemon=True)
        thread.start()
        return thread

    def sync(self) -> None:
        """Make every object written so far durable (one ``syncfs`` for the whole store)."""
        fd = os.open(self.data, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)
