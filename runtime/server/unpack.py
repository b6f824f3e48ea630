"""Unpacking uploaded archives into a transaction: tar (plain, gzip, bzip2, xz, zstd) and
container images (``docker save`` and OCI image layout archives).

Archives are read as a stream (``tarfile`` mode ``r|``), never spooled: file content goes
straight into the object store as it is read, so memory stays bounded whatever the archive
size. The compression is detected from the first bytes, not from a file name.

What becomes of each member (the tree is always confined to the artifact):

- regular files, directories and symbolic links are kept (modes and mtimes too; owners are
  not: every entry belongs to uid 0/gid 0 as on any cvmfs stratum 0). Symlink *targets* are
  kept verbatim, like cvmfs does: they are resolved on the client, inside the mount;
- hard links become independent regular files with the same content (cvmfs catalogs can hold
  hard-link groups, but an artifact does not need them; the content is stored once anyway);
- character/block devices and FIFOs are skipped (counted in ``UnpackStats.skipped``): a CI
  artifact has no use for them and a client could not open them meaningfully;
- a member with an absolute name or a ``..`` component is refused (:class:`ArchiveError`), and
  so is the whole upload: nothing is published.

An image archive is recognised by its layout (``manifest.json``/``index.json``/``oci-layout``,
``blobs/sha256/…``, ``<id>/layer.tar``): its layers are read as they stream past (objects are
stored at once), and once the manifest has said in which order they apply, the layers are
flattened into one root filesystem: ``.wh.<name>`` removes ``<name>`` from the layers below,
``.wh..wh..opq`` empties its directory of what the layers below put there. An archive holding
several images yields the first one of its manifest.

A process dying in the middle leaves stored-but-unreferenced objects (gc removes them) and
nothing published: the staged tree only reaches a catalog when the transaction is committed.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import stat
import tarfile
import threading
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import AsyncIterator, BinaryIO, Callable, Iterator

import zstandard

from ..cvmfs.chunking import READ_BLOCK, FileContent
from ..repository import (RepositoryError, Transaction, ValidPath, split_path,
                          validate_artifact_name)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
#: tarfile's stream buffer: its own default (one 10 KiB record). Larger is slower: the stream
#: keeps what it has not returned yet by slicing (copying) the rest of its buffer on every read,
#: so a 256 KiB buffer made parsing 10,000 small members 45% slower, and large ones too.
TAR_BUFSIZE = tarfile.RECORDSIZE
#: Compressed bytes zstd reads from the source at a time.
ZSTD_READ_SIZE = 256 * 1024
#: Bytes of small files whose storing may be in flight at once (memory bound while unpacking).
MAX_PENDING_BYTES = 64 * 1024 * 1024
#: Non-layer members of an image archive (JSON configs and manifests) are read into memory.
MAX_IMAGE_METADATA = 16 * 1024 * 1024
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_HEX64 = r"[0-9a-f]{64}"
IMAGE_MEMBER_RE = re.compile(
    rf"^(oci-layout|index\.json|manifest\.json|repositories|blobs/sha\d+/[0-9a-f]+"
    rf"|{_HEX64}(/(VERSION|json|layer\.tar))?|{_HEX64}\.(tar|json))$")


class ArchiveError(RepositoryError):
    """The archive is malformed, unsafe (escaping names) or not a supported kind (HTTP 400)."""


class ArtifactTooLarge(RepositoryError):
    """More bytes than ``max_artifact_bytes`` (HTTP 413)."""


@dataclass
class UnpackStats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    skipped: int = 0
    bytes: int = 0
    image: bool = False
    layers: int = 0


# --------------------------------------------------------------------------------------------
# reading: compression detection and member names


class PeekReader(io.RawIOBase):
    """A read-only stream that can look at its first bytes without consuming them."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._head = b""

    def readable(self) -> bool:
        return True

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            more = self._raw.read(n - len(self._head))
            if not more:
                break
            self._head += more
        return self._head[:n]

    def read(self, n: int = -1) -> bytes:
        """May return fewer than ``n`` bytes (like a raw stream) while the peeked head lasts."""
        if self._head:
            if n is None or n < 0:
                head, self._head = self._head, b""
                return head + self._raw.read()
            head, self._head = self._head[:n], self._head[n:]
            return head
        return self._raw.read(n)

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def looks_like_tar(head: bytes) -> bool:
    """A tar header (ustar magic), or a compressed stream that may hold one."""
    return (head[257:262] == b"ustar" or head.startswith((GZIP_MAGIC, ZSTD_MAGIC, BZIP2_MAGIC,
                                                          XZ_MAGIC)))


def open_tar_stream(fileobj: BinaryIO) -> tarfile.TarFile:
    """Open ``fileobj`` as a tar stream; zstd is detected here, gzip/bzip2/xz by tarfile."""
    reader = PeekReader(fileobj)
    magic = reader.peek(4)
    if not magic:
        raise ArchiveError("empty archive: expected a tar, tar.gz or tar.zst stream")
    try:
        if magic == ZSTD_MAGIC:
            source = zstandard.ZstdDecompressor().stream_reader(
                reader, read_size=ZSTD_READ_SIZE, read_across_frames=True)
            return tarfile.open(fileobj=source, mode="r|", bufsize=TAR_BUFSIZE)
        return tarfile.open(fileobj=reader, mode="r|*", bufsize=TAR_BUFSIZE)
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
        raise ArchiveError(f"not a readable tar archive: {_one_line(exc)}") from exc


def iter_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """``tar``'s members in order, with read errors turned into :class:`ArchiveError`."""
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError, ValueError) as exc:
            raise ArchiveError(f"malformed archive: {_one_line(exc)}") from exc
        if info is None:
            return
        yield info


def member_parts(name: str) -> list[str]:
    """Path components of a member name; refuses names that leave the archive root."""
    if name.startswith("/"):
        raise ArchiveError(f"archive member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive member {name!r} escapes the archive root ('..')")
    return parts


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_exact(fileobj: BinaryIO, size: int, what: str) -> bytes:
    pieces, got = [], 0
    try:
        while got < size:
            piece = fileobj.read(size - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
        raise ArchiveError(f"malformed archive at {what!r}: {_one_line(exc)}") from exc
    if got != size:
        raise ArchiveError(f"archive truncated in {what!r}")
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


# --------------------------------------------------------------------------------------------
# storing content


#: Small files are stored in batches (``Ingester.ingest_batch``): one pool task per batch
#: instead of one per file, which made unpacking several times faster.
BATCH_FILES = 256
BATCH_BYTES = 4 * 1024 * 1024


class _Stored:
    """The content of one small file stored as part of a batch; set once the batch is stored
    (:meth:`ContentStore.drain`)."""

    __slots__ = ("content",)

    def __init__(self) -> None:
        self.content: FileContent | None = None


class ContentStore:
    """Stores member content in the repository's object store: small files in batches on a
    worker pool while the tar is being read, large ones chunked through the ingester."""

    def __init__(self, tx: Transaction, stats: UnpackStats, max_bytes: int | None):
        self.ingester = tx.repo.ingester
        self.stats = stats
        self.max_bytes = max_bytes
        self._small = self.ingester.chunk_size
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._items: list[_Stored] = []
        self._inflight: deque[tuple[Future, list[_Stored], int]] = deque()
        self._inflight_bytes = 0

    def _count(self, size: int) -> None:
        self.stats.bytes += size
        if self.max_bytes is not None and self.stats.bytes > self.max_bytes:
            raise ArtifactTooLarge(f"unpacked content exceeds the limit of {self.max_bytes} bytes")

    def _submit(self) -> None:
        if not self._batch:
            return
        fut = self.ingester.ingest_batch(self._batch)
        self._inflight.append((fut, self._items, self._batch_bytes))
        self._inflight_bytes += self._batch_bytes
        self._batch, self._items, self._batch_bytes = [], [], 0
        while self._inflight_bytes > MAX_PENDING_BYTES:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        """Wait for the oldest batch in flight and hand each file its stored content."""
        fut, items, size = self._inflight.popleft()
        for item, content in zip(items, fut.result()):
            item.content = content
        self._inflight_bytes -= size

    def store_member(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> "_Stored | FileContent":
        """Store one regular member; a small one's content is known after :meth:`drain`."""
        size = info.size
        self._count(size)
        src = _member_data(tar, info)
        if size <= self._small:
            item = _Stored()
            self._batch.append(_read_exact(src, size, info.name))
            self._items.append(item)
            self._batch_bytes += size
            if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
                self._submit()
            return item
        writer = self.ingester.open()
        try:
            left = size
            while left:
                block = _read_exact(src, min(READ_BLOCK, left), info.name)
                writer.write(block)
                left -= len(block)
            return writer.close()
        except BaseException:
            writer.abort()
            raise

    def drain(self) -> None:
        """Store what is batched and wait for every batch (errors surface here)."""
        self._submit()
        while self._inflight:
            self._settle_oldest()


def _member_data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> BinaryIO:
    """Where a regular member's bytes are read from.

    A stream-mode ``TarFile`` leaves its stream at the member's first data byte, and its next
    ``next()`` skips forward to the following header from wherever the reader stopped, so the
    bytes can be read from the stream itself: ``extractfile`` wraps it in two file objects per
    member, a fifth of the time of parsing 10,000 small members. Sparse members need tarfile's
    own reader, which maps their holes.
    """
    stream = tar.fileobj
    if info.sparse is None and stream is not None and stream.tell() == info.offset_data:
        return stream  # type: ignore[return-value]
    src = tar.extractfile(info)
    assert src is not None
    return src


def _resolve(content: "_Stored | FileContent") -> FileContent:
    if isinstance(content, _Stored):
        assert content.content is not None, "ContentStore.drain() first"
        return content.content
    return content


# --------------------------------------------------------------------------------------------
# plain tar -> transaction


class _PlainStager:
    """Stages the members of a plain tar into the transaction, in archive order.

    Operations are kept in order and applied by :meth:`flush`, once every small file's batch
    is stored (a later member with the same path must still win). Paths are validated as the
    members arrive (a bad name fails the upload before more of the archive is read), each
    directory of the archive once.
    """

    def __init__(self, tx: Transaction, name: str, store: ContentStore):
        self.tx, self.name, self.store, self.stats = tx, name, store, store.stats
        self._dirs: dict[str, ValidPath] = {"": split_path(name)}
        self._files: dict[ValidPath, tuple[_Stored | FileContent, int, int]] = {}
        self._ops: list[tuple] = []

    def _full(self, member: str) -> ValidPath:
        """Any member name inside the artifact (refuses absolute names and ``..``)."""
        return split_path("/".join([self.name, *member_parts(member)]))

    def _path(self, member: str) -> ValidPath:
        """A member's path inside the artifact; its directory part is looked up once."""
        head, _, leaf = member.rpartition("/")
        if leaf in ("", ".", "..") or member.startswith("/"):
            return self._full(member)
        base = self._dirs.get(head)
        if base is None:
            base = self._dirs[head] = self._full(head)
        return base.child(leaf)

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        path = self._path(info.name)
        mode, mtime = info.mode & 0o7777, int(info.mtime)
        if info.isdir():
            self._ops.append(("dir", path, mode, mtime))
            self.stats.directories += 1
        elif info.isreg():
            if len(path) == 1:
                raise ArchiveError(f"archive member {info.name!r} is a file at the root")
            content = self.store.store_member(tar, info)
            self._files[path] = (content, mode, mtime)
            self._ops.append(("file", path, content, mode, mtime))
            self.stats.files += 1
        elif info.issym():
            if len(path) == 1:
                raise ArchiveError(f"archive member {info.name!r} is a symlink at the root")
            self._ops.append(("symlink", path, info.linkname, mtime))
            self.stats.symlinks += 1
        elif info.islnk():
            target = self._files.get(self._full(info.linkname))
            if target is None or len(path) == 1:
                raise ArchiveError(f"hard link {info.name!r} -> {info.linkname!r}: the target is "
                                   "not a regular file earlier in the archive")
            content, tmode, tmtime = target
            self._files[path] = target
            self._ops.append(("file", path, content, tmode, tmtime))
            self.stats.hardlinks += 1
        else:
            self.stats.skipped += 1  # device, FIFO: documented in the module docstring

    def flush(self) -> None:
        """Apply the staged operations (after ``ContentStore.drain``: all content is stored)."""
        tx = self.tx
        for op in self._ops:
            if op[0] == "dir":
                tx.add_directory(op[1], mode=op[2], mtime=op[3])
            elif op[0] == "file":
                tx.add_content(op[1], _resolve(op[2]), mode=op[3], mtime=op[4])
            else:
                tx.add_symlink(op[1], op[2], mtime=op[3])
        self._ops.clear()


# --------------------------------------------------------------------------------------------
# container images -> one flattened tree


@dataclass
class _Record:
    kind: str  # file | dir | symlink | hardlink | whiteout | opaque
    parts: tuple[str, ...]
    mode: int = 0o755
    mtime: int = 0
    content: _Stored | FileContent | None = None
    target: str = ""  # symlink target, or hardlink target path


@dataclass
class _Node:
    record: _Record | None = None  # None: a directory only implied by its children
    children: dict[str, "_Node"] = field(default_factory=dict)


def _read_layer(tar: tarfile.TarFile, store: ContentStore) -> list[_Record]:
    records = []
    for info in iter_members(tar):
        parts = tuple(member_parts(info.name))
        if not parts:
            continue
        base = parts[-1]
        mode, mtime = info.mode & 0o7777, int(info.mtime)
        if base == OPAQUE:
            records.append(_Record("opaque", parts[:-1]))
        elif base.startswith(WHITEOUT):
            records.append(_Record("whiteout", parts[:-1] + (base[len(WHITEOUT):],)))
        elif info.isdir():
            records.append(_Record("dir", parts, mode, mtime))
        elif info.isreg():
            records.append(_Record("file", parts, mode, mtime, store.store_member(tar, info)))
        elif info.issym():
            records.append(_Record("symlink", parts, 0o777, mtime, target=info.linkname))
        elif info.islnk():
            records.append(_Record("hardlink", parts, mode, mtime,
                                   target="/".join(member_parts(info.linkname))))
        else:
            store.stats.skipped += 1
    return records


class _ImageReader:
    """Collects the members of an image archive: layers parsed, metadata kept in memory."""

    def __init__(self, store: ContentStore):
        self.store = store
        self.layers: dict[str, list[_Record]] = {}
        self.blobs: dict[str, bytes] = {}

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        name = "/".join(member_parts(info.name))
        if info.isdir():
            return
        if not IMAGE_MEMBER_RE.match(name) or not info.isreg():
            raise ArchiveError(f"unexpected member {info.name!r} in an image archive")
        src = tar.extractfile(info)
        assert src is not None
        reader = PeekReader(src)
        if looks_like_tar(reader.peek(512)):
            self.layers[name] = _read_layer(open_tar_stream(reader), self.store)
            while reader.read(READ_BLOCK):  # trailing blocks tarfile did not need
                pass
        elif info.size <= MAX_IMAGE_METADATA:
            self.blobs[name] = _read_exact(reader, info.size, info.name)
        else:
            raise ArchiveError(f"image member {info.name!r} is neither a layer nor metadata")

    def _json(self, name: str) -> object:
        if name not in self.blobs:
            raise ArchiveError(f"image archive lacks {name!r}")
        try:
            return json.loads(self.blobs[name])
        except ValueError as exc:
            raise ArchiveError(f"image archive: {name} is not JSON: {_one_line(exc)}") from exc

    @staticmethod
    def _blob(digest: object) -> str:
        if not isinstance(digest, str) or ":" not in digest:
            raise ArchiveError(f"image archive: bad digest {digest!r}")
        algo, _, hexd = digest.partition(":")
        return f"blobs/{algo}/{hexd}"

    def layer_order(self) -> list[str]:
        """Layer member names, bottom first, from ``manifest.json`` (docker) or ``index.json``."""
        if "manifest.json" in self.blobs:
            manifest = self._json("manifest.json")
            try:
                layers = manifest[0]["Layers"]  # type: ignore[index]
            except (KeyError, IndexError, TypeError) as exc:
                raise ArchiveError("image archive: manifest.json has no Layers") from exc
            return ["/".join(member_parts(str(p))) for p in layers]
        if "index.json" in self.blobs:
            doc = self._json("index.json")
            for _depth in range(4):
                if isinstance(doc, dict) and "layers" in doc:
                    return [self._blob(layer.get("digest")) for layer in doc["layers"]]
                try:
                    doc = self._json(self._blob(doc["manifests"][0]["digest"]))  # type: ignore[index]
                except (KeyError, IndexError, TypeError) as exc:
                    raise ArchiveError("image archive: index.json names no manifest") from exc
            raise ArchiveError("image archive: index nesting too deep")
        raise ArchiveError("image archive without manifest.json or index.json")

    def layer(self, name: str) -> list[_Record]:
        if name in self.layers:
            return self.layers[name]
        if name in self.blobs:  # a tiny layer that did not look like a tar (e.g. all zeros)
            try:
                return _read_layer(open_tar_stream(io.BytesIO(self.blobs[name])), self.store)
            except ArchiveError:
                raise
        raise ArchiveError(f"image archive: layer {name!r} not found")


def _lookup(root: _Node, parts: tuple[str, ...]) -> _Node | None:
    node = root
    for p in parts:
        node = node.children.get(p)  # type: ignore[assignment]
        if node is None:
            return None
    return node


def _flatten(layers: list[list[_Record]]) -> _Node:
    """Apply layers bottom-up: whiteouts and opaque markers first (they hide lower layers)."""
    root = _Node(_Record("dir", (), 0o755, 0))
    for records in layers:
        for rec in records:
            if rec.kind == "whiteout":
                parent = _lookup(root, rec.parts[:-1])
                if parent is not None:
                    parent.children.pop(rec.parts[-1], None)
            elif rec.kind == "opaque":
                node = _lookup(root, rec.parts)
                if node is not None:
                    node.children.clear()
        for rec in records:
            if rec.kind in ("whiteout", "opaque"):
                continue
            if rec.kind == "hardlink":
                target = _lookup(root, tuple(rec.target.split("/")) if rec.target else ())
                if target is None or target.record is None or target.record.kind != "file":
                    raise ArchiveError(f"hard link {'/'.join(rec.parts)!r} -> {rec.target!r}: "
                                       "target is not a regular file")
                rec = _Record("file", rec.parts, target.record.mode, target.record.mtime,
                              target.record.content)
            node = root
            for p in rec.parts[:-1]:
                child = node.children.get(p)
                if child is None or (child.record is not None and child.record.kind != "dir"):
                    child = node.children[p] = _Node()
                node = child
            existing = node.children.get(rec.parts[-1])
            if rec.kind == "dir" and existing is not None and (
                    existing.record is None or existing.record.kind == "dir"):
                existing.record = rec
            else:
                node.children[rec.parts[-1]] = _Node(rec)
    return root


def _stage_tree(tx: Transaction, name: str, root: _Node, stats: UnpackStats) -> None:
    stack: list[tuple[tuple[str, ...], _Node]] = [((), root)]
    while stack:
        parts, node = stack.pop()
        path = "/".join((name,) + parts)
        rec = node.record
        if rec is None or rec.kind == "dir":
            if parts:
                tx.add_directory(path, mode=rec.mode if rec else 0o755,
                                 mtime=rec.mtime if rec else None)
                stats.directories += 1
            for child_name, child in sorted(node.children.items(), reverse=True):
                stack.append((parts + (child_name,), child))
        elif rec.kind == "file":
            assert rec.content is not None
            tx.add_content(path, _resolve(rec.content), mode=rec.mode, mtime=rec.mtime)
            stats.files += 1
        elif rec.kind == "symlink":
            tx.add_symlink(path, rec.target, mtime=rec.mtime)
            stats.symlinks += 1


# --------------------------------------------------------------------------------------------
# entry points


def stage_archive(tx: Transaction, name: str, fileobj: BinaryIO, *,
                  max_bytes: int | None = None) -> UnpackStats:
    """Stage the archive read from ``fileobj`` as the directory artifact ``name``.

    Raises :class:`ArchiveError` for a malformed, unsafe or unsupported archive and
    :class:`ArtifactTooLarge` when the unpacked bytes exceed ``max_bytes``; the caller then
    aborts the transaction, and nothing is published. Synchronous: run it in a worker thread
    when the bytes come from an event loop (see :func:`stage_archive_async`).
    """
    validate_artifact_name(name)
    stats = UnpackStats()
    store = ContentStore(tx, stats, max_bytes)
    tar = open_tar_stream(fileobj)
    tx.add_directory(name, mode=0o755)
    leading_dirs: list[tarfile.TarInfo] = []
    handler: _PlainStager | _ImageReader | None = None
    for info in iter_members(tar):
        if handler is None:
            if info.isdir():
                leading_dirs.append(info)
                continue
            is_image = IMAGE_MEMBER_RE.match("/".join(member_parts(info.name))) is not None
            handler = _ImageReader(store) if is_image else _PlainStager(tx, name, store)
            for d in leading_dirs:
                handler.add(tar, d)
        handler.add(tar, info)
    if handler is None:  # only directories, or nothing
        handler = _PlainStager(tx, name, store)
        for d in leading_dirs:
            handler.add(tar, d)
    store.drain()
    if isinstance(handler, _PlainStager):
        handler.flush()
        return stats
    order = handler.layer_order()
    stats.image, stats.layers = True, len(order)
    root = _flatten([handler.layer(layer) for layer in order])
    store.drain()
    _stage_tree(tx, name, root, stats)
    return stats


# --------------------------------------------------------------------------------------------
# bridging an async body to the synchronous tar reader


class ClientGone(ArchiveError):
    """The body stream ended with an error (client disconnected); raised in the reader."""


class BodyPipe(io.RawIOBase):
    """A bounded byte pipe: an event loop pushes request body chunks, a thread reads them.

    At most ``limit`` bytes wait in the pipe; ``put`` suspends (without blocking the loop)
    until the reader has made room. When the reader stops early (the archive ended or failed),
    ``put`` discards what it is given so that the producer can finish reading the body.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = 8 * 1024 * 1024):
        self._loop = loop
        self._limit = limit
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._abandoned = False
        self._space = asyncio.Event()

    def readable(self) -> bool:
        return True

    # -- producer side (event loop) --------------------------------------------------------
    async def put(self, data: bytes) -> None:
        while True:
            with self._cond:
                if self._abandoned:
                    return
                if self._size < self._limit:
                    self._chunks.append(data)
                    self._size += len(data)
                    self._cond.notify()
                    return
                self._space.clear()
            await self._space.wait()

    def finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._eof = True
            self._error = error
            self._cond.notify_all()

    # -- consumer side (worker thread) -----------------------------------------------------
    def abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._chunks.clear()
            self._size = 0
        self._loop.call_soon_threadsafe(self._space.set)

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait()
            if self._error is not None:
                raise ClientGone(f"upload interrupted: {_one_line(self._error)}")
            if not self._chunks:
                return b""
            if n is None or n < 0:
                out = b"".join(self._chunks)
                self._chunks.clear()
            else:
                pieces, got = [], 0
                while self._chunks and got < n:
                    c = self._chunks.popleft()
                    if got + len(c) > n:
                        c, rest = c[:n - got], c[n - got:]
                        self._chunks.appendleft(rest)
                    pieces.append(c)
                    got += len(c)
                out = b"".join(pieces)
            self._size -= len(out)
        self._loop.call_soon_threadsafe(self._space.set)
        return out

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


async def stage_archive_async(tx: Transaction, name: str, chunks: AsyncIterator[bytes], *,
                              executor: Executor, max_bytes: int | None = None,
                              on_bytes: Callable[[int], None] | None = None) -> UnpackStats:
    """Unpack an archive arriving as async chunks: the tar reader runs in ``executor``.

    ``on_bytes`` sees every received chunk's length (the caller enforces upload limits there
    by raising). Any exception (client gone, limit, malformed archive) propagates after the
    reader thread has stopped, so the caller can abort ``tx`` safely.
    """
    loop = asyncio.get_running_loop()
    pipe = BodyPipe(loop)

    def work() -> UnpackStats:
        try:
            return stage_archive(tx, name, pipe, max_bytes=max_bytes)  # type: ignore[arg-type]
        finally:
            pipe.abandon()

    worker = loop.run_in_executor(executor, work)
    try:
        async for chunk in chunks:
            if on_bytes is not None:
                on_bytes(len(chunk))
            if worker.done() and not worker.cancelled() and worker.exception() is not None:
                break  # the archive is already refused: don't read the rest of the body
            if chunk:
                await pipe.put(chunk)
        pipe.finish()
    except BaseException as exc:
        pipe.finish(exc)
        try:
            await worker
        except BaseException:  # noqa: BLE001 - the producer's error is the one to report
            pass
        raise
    return await worker
