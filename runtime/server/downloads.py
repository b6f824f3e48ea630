"""Downloading a directory artifact as a tar stream, at a bounded cost per client and in total.

Downloads are public, so what one costs must not depend on who asks how often. Two things made
a 1M-entry directory expensive: the tar was produced one small piece per thread hop (a header
here, 512 bytes of padding there: three hops per entry, 251 s for 1M entries), and each download
held its whole tree in memory (4 at once: 4.5 GB).

- The tar is generated lazily in a worker thread and handed to the event loop in pieces of
  about :data:`PIECE_BYTES` (small members are coalesced; a large file's chunks pass as they
  are), so the number of hops follows the bytes, not the entries.
- The entries come from the artifact's nested catalog, walked in the worker thread with one
  SQLite cursor per directory level (:mod:`runtime.cvmfs.catalog_walk`, parents before
  children): memory is constant in the entry count (the tree used to be held whole while
  streaming, ~80 MiB per 100k entries).
- :class:`DownloadSlots` admits a directory download only while the client has fewer than
  ``CVMFS_EPHEMERAL_MAX_DOWNLOADS_PER_CLIENT`` running (else 429) and the server fewer than
  ``CVMFS_EPHEMERAL_MAX_DOWNLOADS`` (else 503). ``CVMFS_EPHEMERAL_MAX_DOWNLOAD_ENTRIES`` is
  still accepted but no longer limits anything: it bounded the memory of trees held whole.

A slot is released when the stream ends, fails or the client goes away.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import zlib
from collections import Counter
from typing import AsyncIterator, Iterable, Iterator

from fastapi import HTTPException
from starlette.responses import StreamingResponse

from .. import tarstream
from ..cvmfs import catalog_walk
from ..cvmfs.catalog import Entry
from ..cvmfs.objects import CATALOG, FILE, PARTIAL
from ..repository import MARKER_NAME, Repository

#: Pieces handed from the tar thread to the event loop are about this large.
PIECE_BYTES = 256 * 1024


def file_content(repo: Repository, entry: Entry) -> Iterator[bytes]:
    """A file's bytes from the store: chunks in order, inflated when stored compressed."""
    parts = ([(c.digest.hex(), PARTIAL) for c in entry.chunks] if entry.chunks
             else [(entry.digest.hex(), FILE)] if entry.digest else [])
    for hex_digest, suffix in parts:
        data = repo.store.read(hex_digest, suffix)
        yield zlib.decompress(data) if entry.compressed else data


def etag(entry: Entry) -> str:
    """A strong ETag for a file's content: its content hash, or for a chunked file a hash of
    its chunk list (offsets, sizes, hashes), so it changes exactly when the bytes change."""
    if entry.chunks:
        h = hashlib.sha256()
        for c in entry.chunks:
            h.update(f"{c.offset}:{c.size}:".encode() + c.digest)
        return f'"c-{h.hexdigest()[:40]}"'
    return f'"{entry.digest.hex() if entry.digest else "empty"}"'


def _read(repo: Repository, entry: Entry, hex_digest: str, suffix: str) -> bytes:
    data = repo.store.read(hex_digest, suffix)
    return zlib.decompress(data) if entry.compressed else data


def file_range(repo: Repository, entry: Entry, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start``..``end`` (inclusive) of a file, reading only the chunks that overlap
    them (a whole-file object is read once and sliced: it has no finer unit)."""
    if not entry.chunks:
        if entry.digest:
            yield _read(repo, entry, entry.digest.hex(), FILE)[start:end + 1]
        return
    for c in entry.chunks:
        if c.offset + c.size <= start or c.offset > end:
            continue
        data = _read(repo, entry, c.digest.hex(), PARTIAL)
        yield data[max(0, start - c.offset):end + 1 - c.offset]


class Unsatisfiable(Exception):
    """A syntactically valid range that selects nothing in the file (416)."""


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range ``(first, last)`` a ``Range`` header asks for, or None to send
    the whole file: no header, another unit, several ranges (answered in full with 200, which
    RFC 9110 allows, instead of a multipart/byteranges body) or a header that does not parse
    (which RFC 9110 says to ignore). Raises :class:`Unsatisfiable` (416)."""
    if header is None:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None or len(header) > 200:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix range: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - n), size - 1
    a = int(first)
    b = int(last) if last else size - 1
    if last and b < a:
        return None  # invalid: ignored
    if a >= size:
        raise Unsatisfiable()
    return a, min(b, size - 1)


def etag_matches(header: str, tag: str, *, weak: bool) -> bool:
    """Whether ``tag`` is listed in an If-None-Match (weak comparison) / If-Range (strong)."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" and weak:
            return True
        if weak and candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == tag:
            return True
    return False


def _members(repo: Repository, entries: Iterable[tuple[str, Entry]]) -> Iterator[bytes]:
    for path, e in entries:
        name = path.lstrip("/")
        if e.is_dir:
            yield from tarstream.member(name, "dir", mode=e.mode, mtime=e.mtime)
        elif e.is_symlink:
            yield from tarstream.member(name, "symlink", mode=0o777, mtime=e.mtime,
                                        linkname=e.symlink)
        elif e.is_regular:
            yield from tarstream.member(name, "file", mode=e.mode, mtime=e.mtime, size=e.size,
                                        content=file_content(repo, e))
    yield tarstream.END_OF_ARCHIVE


def tar_pieces(repo: Repository, entries: Iterable[tuple[str, Entry]]) -> Iterator[bytes]:
    """The tar of ``entries`` (parents first), coalesced into pieces of ~:data:`PIECE_BYTES`."""
    pending: list[bytes] = []
    size = 0
    for piece in _members(repo, entries):
        if len(piece) >= PIECE_BYTES:
            if pending:
                yield b"".join(pending)
                pending, size = [], 0
            yield piece
            continue
        pending.append(piece)
        size += len(piece)
        if size >= PIECE_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def artifact_entries(repo: Repository, name: str,
                     catalog_hash: str) -> Iterator[tuple[str, Entry]]:
    """The entries of directory artifact ``name`` (parents first, paths from its leaf: a deep
    artifact's tar holds ``pr-123/...``) from its nested catalog ``catalog_hash``, in constant
    memory. The catalog is opened here (a missing object raises now, before any response); the
    returned iterator walks it and closes it at its end."""
    repo.spill_dir.mkdir(parents=True, exist_ok=True)
    conn = catalog_walk.open_inflated(repo.store.path(catalog_hash, CATALOG), repo.spill_dir)
    top = f"/{name}"
    # members are named from the artifact's own directory (``pr-123/...``), as for a
    # top-level artifact, whatever namespace holds it
    cut = name.rfind("/") + 1

    def entries() -> Iterator[tuple[str, Entry]]:
        try:
            for entry in catalog_walk.walk(conn, top, frozenset({f"{top}/{MARKER_NAME}"})):
                yield entry.path[cut:], entry
        finally:
            conn.close()
    return entries()


def sorted_entries(tree: dict[str, Entry]) -> Iterator[tuple[str, Entry]]:
    """A tree's entries in path order (parents before children), as the tar needs them."""
    for path in sorted(tree):
        yield path, tree[path]


class DownloadSlots:
    """Admission for directory downloads: per client address, in number and in entries."""

    def __init__(self, per_client: int, total: int, entry_budget: int | None = None):
        self.per_client = per_client
        self.total = total
        #: accepted for compatibility (``CVMFS_EPHEMERAL_MAX_DOWNLOAD_ENTRIES``): a download's
        #: memory no longer depends on its entries, so the budget limits nothing
        self.entry_budget = entry_budget
        self._lock = threading.Lock()
        self._clients: Counter[str] = Counter()
        self._running = 0
        self._entries = 0

    def acquire(self, client: str, entries: int) -> "Slot":
        """A slot for one download, or HTTPException 429 (this client) / 503 (the server)."""
        with self._lock:
            if self._clients[client] >= self.per_client:
                raise HTTPException(429, f"too many directory downloads from {client} at once "
                                         f"(limit {self.per_client}); retry later",
                                    headers={"Retry-After": "1"})
            if self._running >= self.total:
                raise HTTPException(503, "the server is busy with other directory downloads; "
                                         "retry later", headers={"Retry-After": "1"})
            self._clients[client] += 1
            self._running += 1
            self._entries += entries
        return Slot(self, client, entries)

    def _release(self, client: str, entries: int) -> None:
        with self._lock:
            self._clients[client] -= 1
            if self._clients[client] <= 0:
                del self._clients[client]
            self._running -= 1
            self._entries -= entries

    def running(self) -> int:
        with self._lock:
            return self._running


class Slot:
    """One admitted download; :meth:`release` is idempotent."""

    def __init__(self, slots: DownloadSlots, client: str, entries: int):
        self._slots, self._client, self._entries = slots, client, entries
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots._release(self._client, self._entries)


async def stream(pieces: Iterator[bytes], slot: Slot | None = None) -> AsyncIterator[bytes]:
    """Drive ``pieces`` on a worker thread, one hop per piece; release ``slot`` at the end
    (normal end, error, or the client going away, which cancels this generator)."""
    try:
        while True:
            piece = await asyncio.to_thread(next, pieces, None)
            if piece is None:
                return
            yield piece
    finally:
        if slot is not None:
            slot.release()
        close = getattr(pieces, "close", None)
        if close is not None:
            try:
                close()  # the catalog walk's connection, now rather than at collection
            except ValueError:
                pass  # still running on its thread (cancelled): it is closed when collected


class SlotResponse(StreamingResponse):
    """A streaming response that gives its download slot back however it ends (even when the
    client leaves before the first byte, when the body iterator never starts)."""

    def __init__(self, content: AsyncIterator[bytes], slot: Slot | None, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.slot is not None:
                self.slot.release()


__all__ = ["SlotResponse", "DownloadSlots", "PIECE_BYTES", "Slot", "Unsatisfiable",
           "artifact_entries", "etag",
           "etag_matches", "file_content", "file_range", "parse_range", "sorted_entries",
           "stream", "tar_pieces"]
