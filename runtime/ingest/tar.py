"""Reading tar members one by one from a stream, with every header bounded and checked.

:mod:`tarfile` does the header decoding; three things are added around it:

- *Bounded headers.* A PAX extended header or GNU long name/link declares its size in the
  preceding ustar header and tarfile reads that many bytes into memory at once: a 500 KB
  ``.tar.gz`` can declare (and deliver, compressed 1000:1) a 500 MB header. :class:`_TarInfo`
  checks the declared size against ``max_header_bytes`` before tarfile reads it.
- *A proper end.* tarfile in stream mode takes a bad header after the first member, or a
  stream cut inside a header, for the end of the archive and silently drops the rest. Here a
  header must be valid, the archive must end with its two zero blocks, and only zero bytes may
  follow them (record padding); anything else refuses the whole archive.
- *No per-member state.* tarfile appends every ``TarInfo`` to ``TarFile.members`` (2 GB for
  an archive of 1M empty files); :func:`iter_members` drops each once the next is read.
"""

from __future__ import annotations

import struct
import tarfile
from typing import BinaryIO, Iterator

from .errors import ArchiveError, ArtifactTooLarge, one_line
from .limits import IngestLimits
from .streams import decompressed

BLOCK = tarfile.BLOCKSIZE
#: tarfile's stream buffer: its own default (one 10 KiB record). Larger is slower: the stream
#: keeps what it has not returned yet by slicing (copying) the rest of its buffer on every read.
TAR_BUFSIZE = tarfile.RECORDSIZE
_ZERO_BLOCK = bytes(BLOCK)
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError)


#: The fields of a ustar/GNU header block, in order (POSIX.1-1988 ``ustar`` layout).
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8x32s32s8s8s155s12x")
#: Member types whose header :func:`_decode` reads itself; anything else (GNU sparse, whose
#: header holds a sparse map) goes to tarfile's own ``frombuf``.
_SIMPLE_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                           tarfile.LNKTYPE, tarfile.XHDTYPE, tarfile.XGLTYPE,
                           tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                           tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE,
                           tarfile.CONTTYPE})


def _number(field: bytes) -> int:
    """tarfile's ``nti`` for the common case (octal digits, NUL-terminated), itself otherwise:
    ``int`` of plain ASCII digits is what ``nti`` computes for them, anything else (spaces,
    base-256, garbage) is left to ``nti``, so the result and the errors are tarfile's."""
    end = field.find(b"\0")
    digits = field if end < 0 else field[:end]
    if not digits:
        return 0  # an empty field (devmajor/devminor of most members): nti's "or '0'"
    if digits.isdigit():
        try:
            return int(digits, 8)
        except ValueError:
            pass  # an 8 or a 9: let nti raise its own error
    return tarfile.nti(field)


def _decode(cls: type[tarfile.TarInfo], buf: bytes, encoding: str, errors: str
            ) -> tarfile.TarInfo:
    """``TarInfo.frombuf`` for one header block, about three times faster.

    Decoding the header was half of the parser's time on an archive of small files, most of
    it tarfile's checksum (a 504-item ``struct.unpack``) and one call per field. The result is
    the same object tarfile builds, field for field, with the same exceptions; what this does
    not decode itself (a GNU sparse header, a checksum that only matches tarfile's signed
    variant) is handed to tarfile. tests/test_tar_header.py pins the equivalence on every
    header format and on mutated headers.
    """
    if len(buf) != BLOCK or buf.count(0) == BLOCK or buf[156:157] not in _SIMPLE_TYPES:
        return tarfile.TarInfo.frombuf.__func__(cls, buf, encoding, errors)  # type: ignore[attr-defined]
    (name, mode, uid, gid, size, mtime, chksum_field, type_, linkname, uname, gname, devmajor,
     devminor, prefix) = _HEADER.unpack(buf)
    chksum = _number(chksum_field)
    if chksum != 256 + sum(buf) - sum(chksum_field):  # unsigned, the field taken as spaces
        # maybe the signed variant (Sun, NeXT): tarfile decides, and raises if neither
        return tarfile.TarInfo.frombuf.__func__(cls, buf, encoding, errors)  # type: ignore[attr-defined]
    obj = cls()
    obj.name = tarfile.nts(name, encoding, errors)
    obj.mode = _number(mode)
    obj.uid = _number(uid)
    obj.gid = _number(gid)
    obj.size = _number(size)
    obj.mtime = _number(mtime)
    obj.chksum = chksum
    obj.type = type_
    obj.linkname = tarfile.nts(linkname, encoding, errors)
    obj.uname = tarfile.nts(uname, encoding, errors)
    obj.gname = tarfile.nts(gname, encoding, errors)
    obj.devmajor = _number(devmajor)
    obj.devminor = _number(devminor)
    prefix_text = tarfile.nts(prefix, encoding, errors)
    if type_ == tarfile.AREGTYPE and obj.name.endswith("/"):
        obj.type = tarfile.DIRTYPE  # old V7 tar: a directory is a file named with a slash
    if obj.type == tarfile.DIRTYPE:
        obj.name = obj.name.rstrip("/")
    if prefix_text and obj.type not in tarfile.GNU_TYPES:
        obj.name = prefix_text + "/" + obj.name
    return obj


class _TarInfo(tarfile.TarInfo):
    """A TarInfo whose reading refuses oversized extended headers and bad or missing headers
    (see the module docstring) and decodes plain headers faster (:func:`_decode`).
    ``max_header`` is set per archive on a subclass."""

    max_header = 1024 * 1024

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:  # type: ignore[override]
        return _decode(cls, buf, encoding, errors)

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        buf = tar.fileobj.read(BLOCK)  # type: ignore[union-attr]
        offset = tar.fileobj.tell() - len(buf)  # type: ignore[union-attr]
        if len(buf) < BLOCK:
            if offset == 0:
                raise ArchiveError("not a readable tar archive: empty or shorter than one "
                                   "tar header")
            raise ArchiveError("tar archive is truncated (no end-of-archive blocks)"
                               if not buf else "tar archive is truncated inside a header")
        if buf == _ZERO_BLOCK:
            _check_end(tar.fileobj)  # type: ignore[arg-type]
            raise tarfile.EOFHeaderError("end of file header")
        try:
            obj = cls.frombuf(buf, tar.encoding, tar.errors)
        except tarfile.HeaderError as exc:
            if offset == 0:
                raise ArchiveError(f"not a readable tar archive: {one_line(exc)}") from None
            raise ArchiveError(f"bad tar header at offset {offset}: {one_line(exc)}") from None
        obj.offset = offset
        if obj.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                        tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and obj.size > cls.max_header:
            raise ArtifactTooLarge(f"tar extended header of {obj.size} bytes at offset {offset}"
                                   f" exceeds the limit of {cls.max_header} bytes")
        return obj._proc_member(tar)

    # Sparse maps are headers too: tarfile reads them block by block without a bound (old GNU
    # format) or as many numbers as a PAX record declares (GNU sparse 1.0); both are bounded
    # by ``max_header`` here, and a map cut short is a truncated archive, not an IndexError.

    def _proc_sparse(self, tar: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        structs, extended, original_size = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        read = 0
        while extended:
            read += BLOCK
            if read > self.max_header:
                raise ArtifactTooLarge(f"tar sparse map exceeds the limit of {self.max_header} "
                                       "bytes")
            buf = tar.fileobj.read(BLOCK)  # type: ignore[union-attr]
            if len(buf) < BLOCK:
                raise ArchiveError("tar archive is truncated inside a sparse header")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset = tarfile.nti(buf[pos:pos + 12])
                    size = tarfile.nti(buf[pos + 12:pos + 24])
                except (ValueError, tarfile.HeaderError):
                    break
                if offset and size:
                    structs.append((offset, size))
            extended = bool(buf[504])
        self.sparse = structs
        self.offset_data = tar.fileobj.tell()  # type: ignore[union-attr]
        tar.offset = self.offset_data + self._block(self.size)
        self.size = original_size
        return self

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: dict,  # type: ignore[override]
                           tar: tarfile.TarFile) -> None:
        buf = tar.fileobj.read(BLOCK)  # type: ignore[union-attr]
        read = len(buf)
        head, sep, buf = buf.partition(b"\n")
        if not sep or not head.strip().isdigit():
            raise ArchiveError("tar sparse map is malformed")
        wanted = int(head) * 2
        numbers: list[int] = []
        while len(numbers) < wanted:
            if b"\n" not in buf:
                more = tar.fileobj.read(BLOCK)  # type: ignore[union-attr]
                read += len(more)
                if not more:
                    raise ArchiveError("tar archive is truncated inside a sparse map")
                if read > self.max_header:
                    raise ArtifactTooLarge(f"tar sparse map exceeds the limit of "
                                           f"{self.max_header} bytes")
                buf += more
                continue
            number, _, buf = buf.partition(b"\n")
            if not number.strip().isdigit():
                raise ArchiveError("tar sparse map is malformed")
            numbers.append(int(number))
        next.offset_data = tar.fileobj.tell()  # type: ignore[union-attr]
        next.sparse = list(zip(numbers[::2], numbers[1::2]))


def _check_end(stream: BinaryIO) -> None:
    """After the first zero block: a second one, then only zeros up to the end of the stream
    (which reads compressed streams to their trailer, so that it is verified too)."""
    second = stream.read(BLOCK)
    if second != _ZERO_BLOCK:
        raise ArchiveError("tar archive ends with one zero block instead of two"
                           if not second.strip(b"\0") else
                           "tar archive has a zero block followed by data")
    while True:
        piece = stream.read(TAR_BUFSIZE)
        if not piece:
            return
        if piece.strip(b"\0"):
            raise ArchiveError("tar archive has data after its end-of-archive blocks")


def open_tar(source: BinaryIO, limits: IngestLimits) -> tarfile.TarFile:
    """``source`` (any supported compression) opened as a tar stream."""
    stream, _kind = decompressed(source)
    info_cls = type("TarInfo", (_TarInfo,), {"max_header": limits.max_header_bytes})
    try:
        return tarfile.open(fileobj=stream, mode="r|", bufsize=TAR_BUFSIZE, tarinfo=info_cls)
    except _READ_ERRORS as exc:
        if isinstance(exc, (ArchiveError, ArtifactTooLarge)):
            raise
        raise ArchiveError(f"not a readable tar archive: {one_line(exc)}") from exc


def iter_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """``tar``'s members in order, read errors turned into :class:`ArchiveError`; tarfile's
    list of members is emptied as we go (stream mode never needs it back)."""
    while True:
        try:
            info = tar.next()
        except (ArchiveError, ArtifactTooLarge):
            raise
        except _READ_ERRORS as exc:
            raise ArchiveError(f"malformed archive: {one_line(exc)}") from exc
        tar.members.clear()
        if info is None:
            return
        if tar.pax_headers and _pax_size(tar.pax_headers) > tar.tarinfo.max_header:  # type: ignore[attr-defined]
            raise ArtifactTooLarge("tar global extended headers exceed the limit of "
                                   f"{tar.tarinfo.max_header} bytes")  # type: ignore[attr-defined]
        yield info


def _pax_size(headers: dict[str, str]) -> int:
    """Global PAX headers accumulate over the archive: their total is bounded too."""
    return sum(len(k) + len(v) for k, v in headers.items())


def member_parts(name: str) -> list[str]:
    """Path components of a member name; refuses names that leave the archive root."""
    if name.startswith("/"):
        raise ArchiveError(f"archive member {name[:200]!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive member {name[:200]!r} escapes the archive root ('..')")
    return parts


def read_exact(fileobj: BinaryIO, size: int, what: str) -> bytes:
    """Exactly ``size`` bytes of a member, or :class:`ArchiveError` (truncated, corrupt)."""
    pieces, got = [], 0
    try:
        while got < size:
            piece = fileobj.read(size - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
    except (ArchiveError, ArtifactTooLarge):
        raise
    except _READ_ERRORS as exc:
        raise ArchiveError(f"malformed archive at {what[:200]!r}: {one_line(exc)}") from exc
    if got != size:
        raise ArchiveError(f"archive truncated in {what[:200]!r}")
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def read_blob(fileobj: BinaryIO, size: int, what: str) -> bytearray:
    """Like :func:`read_exact`, filled in 1 MiB reads: peak memory is the blob plus one read,
    not twice the blob (a join of the pieces)."""
    out = bytearray()
    while len(out) < size:
        piece = read_exact(fileobj, min(size - len(out), 1024 * 1024), what)
        out += piece
    return out


def member_data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> BinaryIO:
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


def read_small_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    """A small regular member's bytes, read together with the padding up to the next header
    when they come straight from the stream: tarfile's ``next()`` then finds the stream at the
    next header instead of seeking forward to it (two fewer stream reads per member). A
    stream that ends inside the padding is a truncated archive, as it would be at the next
    header."""
    src = member_data(tar, info)
    size = info.size
    if src is not tar.fileobj:
        return read_exact(src, size, info.name)
    padded = (size + BLOCK - 1) // BLOCK * BLOCK
    data = read_exact(src, padded, info.name)
    return data if padded == size else data[:size]


def drain(fileobj: BinaryIO) -> None:
    """Read ``fileobj`` to its end (bounded memory), errors as :class:`ArchiveError`."""
    try:
        while fileobj.read(TAR_BUFSIZE):
            pass
    except (ArchiveError, ArtifactTooLarge):
        raise
    except _READ_ERRORS as exc:
        raise ArchiveError(f"malformed archive: {one_line(exc)}") from exc
