"""Compressed archive streams: the compression named by the first bytes, read to its very end.

Every supported compression (gzip, bzip2, xz, zstd) is detected from its magic bytes, never from
a file name, and decompressed here in streaming mode with bounded output per read (a 1 KB bomb
never inflates into memory at once). A stream is accepted only if it ends the way its format
says it ends:

- gzip: every member's CRC-32 and ISIZE trailer is checked (zlib does it when it reaches the
  end of a member); a stream cut anywhere, even at a flush point, never reaches that end and is
  refused. Concatenated members (``cat a.gz b.gz``, pigz) are read one after the other; after
  the last member only zero bytes may follow (what some tape and block writers pad with).
- bzip2 and xz: the same, with their own stream CRCs and multi-stream concatenation.
- zstd: ``zstandard``'s stream reader checks content checksums and frame data, but it takes a
  stream cut between blocks for a clean end, so the compressed bytes also pass through
  :class:`ZstdFraming`, which walks frame and block headers (no decompression) and refuses a
  stream that does not end on a frame boundary. Skippable frames are allowed.
"""

from __future__ import annotations

import bz2
import io
import lzma
import zlib
from typing import BinaryIO, Callable

import zstandard

from .errors import ArchiveError, one_line

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Compressed bytes read from the source at a time.
READ_SIZE = 256 * 1024


class ReadStream(io.RawIOBase):
    """A readable raw stream defined by its ``read`` alone: every reader of the ingest chain
    (peek, decompress, zstd framing, the body pipe) hands tarfile and ``io.BufferedReader``
    ``readinto`` through this one adapter."""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class PeekReader(ReadStream):
    """A read-only stream that can look at its first bytes without consuming them."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._head = b""

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


def detect(head: bytes) -> str:
    """``gzip``, ``bzip2``, ``xz``, ``zstd`` or ``none`` from a stream's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(BZIP2_MAGIC) and head[3:4] in b"123456789" and len(head) > 3:
        return "bzip2"
    return "none"


_MAGIC = {"gzip": GZIP_MAGIC, "bzip2": BZIP2_MAGIC, "xz": XZ_MAGIC}
_NEW: dict[str, Callable[[], object]] = {
    "gzip": lambda: zlib.decompressobj(wbits=31),
    "bzip2": bz2.BZ2Decompressor,
    "xz": lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ),
}
_CODEC_ERRORS = (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError)


class Decompressed(ReadStream):
    """gzip/bzip2/xz bytes of ``source`` decompressed; refuses a corrupt or unfinished stream.

    ``read(n)`` returns at most ``n`` bytes (the decompressors' ``max_length``), so memory stays
    at one read whatever the ratio.
    """

    def __init__(self, source: BinaryIO, kind: str):
        self.kind = kind
        self._src = source
        self._magic = _MAGIC[kind]
        self._dec: object | None = None
        self._in = b""
        self._members = 0
        self._done = False
        self._zlib = kind == "gzip"

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = READ_SIZE
        while not self._done:
            out = self._step(n) if self._dec is not None else self._next_member()
            if out:
                return out
        return b""

    def _more(self) -> bytes:
        try:
            return self._src.read(READ_SIZE)
        except _CODEC_ERRORS as exc:  # an inner decompressor's failure (nested streams)
            if isinstance(exc, ArchiveError):
                raise
            raise ArchiveError(f"corrupt {self.kind} stream: {one_line(exc)}") from exc

    def _next_member(self) -> bytes:
        """Between members: another member, zero padding up to the end, or the end."""
        while len(self._in) < len(self._magic):
            more = self._more()
            if not more:
                break
            self._in += more
        if self._in.startswith(self._magic):
            self._dec = _NEW[self.kind]()
            return b""
        if not self._in and self._members:
            self._done = True
            return b""
        if self._members and not self._in.strip(b"\0"):
            while True:  # only zeros may follow the last member, up to the end
                more = self._more()
                if not more:
                    self._done = True
                    return b""
                if more.strip(b"\0"):
                    break
        raise ArchiveError(f"{self.kind} stream is followed by data that is not {self.kind}"
                           if self._members else f"not a {self.kind} stream")

    def _step(self, n: int) -> bytes:
        dec = self._dec
        data, self._in = self._in, b""
        at_end = False
        needs = not data if self._zlib else dec.needs_input  # type: ignore[attr-defined]
        if needs and not data:
            data = self._more()
            at_end = not data
        try:
            out = dec.decompress(data, n)  # type: ignore[attr-defined]
        except _CODEC_ERRORS as exc:
            raise ArchiveError(f"corrupt {self.kind} stream: {one_line(exc)}") from exc
        if self._zlib:
            self._in = dec.unconsumed_tail  # type: ignore[attr-defined]
        if dec.eof:  # type: ignore[attr-defined]
            # everything after the member's end (zlib may leave a stale unconsumed_tail)
            self._in = dec.unused_data  # type: ignore[attr-defined]
            self._dec = None
            self._members += 1
        elif at_end and not out:
            raise ArchiveError(f"{self.kind} stream is truncated (it ends before its trailer)")
        return out


class ZstdFraming(ReadStream):
    """Passes compressed zstd bytes through while walking their frame and block headers, so
    that a stream which stops between two blocks (which the decompressor takes for a clean end)
    is refused. Only headers are parsed; block contents are skipped."""

    def __init__(self, source: BinaryIO):
        self._src = source
        self._need = 4          # header bytes wanted for the current state
        self._buf = bytearray()
        self._skip = 0          # content bytes to pass over
        self._state = "magic"
        self._after_skip = "magic"
        self._checksum = False
        self.frames = 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(READ_SIZE if n is None or n < 0 else n)
        if data:
            self._walk(memoryview(data))
        else:
            self.finish()
        return data

    def finish(self) -> None:
        if self._state != "magic" or self._buf or self._skip or not self.frames:
            raise ArchiveError("zstd stream is truncated (it ends inside a frame)")

    def _walk(self, data: memoryview) -> None:
        i, end = 0, len(data)
        while i < end:
            if self._skip:
                take = min(self._skip, end - i)
                i += take
                self._skip -= take
                if not self._skip:
                    self._enter(self._after_skip)
                continue
            take = min(self._need - len(self._buf), end - i)
            self._buf += data[i:i + take]
            i += take
            if len(self._buf) == self._need:
                head = bytes(self._buf)
                self._buf.clear()
                self._header(head)

    def _enter(self, state: str) -> None:
        self._state = state
        self._need = {"magic": 4, "skiplen": 4, "fhd": 1, "block": 3}.get(state, self._need)

    def _header(self, head: bytes) -> None:
        state = self._state
        if state == "magic":
            if head == ZSTD_MAGIC:
                self._enter("fhd")
            elif head[1:] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
                self._enter("skiplen")
            else:
                raise ArchiveError("zstd stream is followed by data that is not zstd")
        elif state == "skiplen":
            self._skip_to(int.from_bytes(head, "little"), "magic")
        elif state == "fhd":
            fhd = head[0]
            if fhd & 0x08:
                raise ArchiveError("corrupt zstd stream: reserved frame header bit set")
            single = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            fcs = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fhd >> 6]
            self._skip_to((0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs, "block")
        else:  # a block header: last flag, type, size
            value = int.from_bytes(head, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise ArchiveError("corrupt zstd stream: reserved block type")
            content = 1 if kind == 1 else size
            if last:
                self.frames += 1
                self._skip_to(content + (4 if self._checksum else 0), "magic")
            else:
                self._skip_to(content, "block")

    def _skip_to(self, size: int, state: str) -> None:
        """Pass over ``size`` content bytes, then expect the header of ``state``."""
        self._skip, self._after_skip = size, state
        if size:
            self._state = "skip"
        else:
            self._enter(state)


class ZstdStream(ReadStream):
    """zstd bytes of ``source`` decompressed (all frames), refused unless complete."""

    def __init__(self, source: BinaryIO):
        self._framing = ZstdFraming(source)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._framing, read_size=READ_SIZE, read_across_frames=True)
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        try:
            out = self._reader.read(READ_SIZE if n is None or n < 0 else n)
        except zstandard.ZstdError as exc:
            raise ArchiveError(f"corrupt zstd stream: {one_line(exc)}") from exc
        if not out:
            while self._framing.read(READ_SIZE):  # the decompressor may stop reading early
                pass
            self._done = True
        return out


def decompressed(source: BinaryIO) -> tuple[BinaryIO, str]:
    """``source`` decompressed according to its magic bytes, and the compression's name."""
    reader = PeekReader(source)
    kind = detect(reader.peek(6))
    if kind == "none":
        return reader, kind  # type: ignore[return-value]
    if kind == "zstd":
        return ZstdStream(reader), kind  # type: ignore[return-value]
    return Decompressed(reader, kind), kind  # type: ignore[return-value]
