"""The fast tar header decoder (runtime/ingest/tar.py ``_decode``) is tarfile's ``frombuf``.

The unpacker decodes every header itself because tarfile's decoding was half of the parser's
time on archives of small files; these tests hold it to tarfile's own result, attribute by
attribute, or the same exception, for headers of every format tarfile writes, for the odd
encodings other tar programs write (space-padded and unterminated numbers, base-256, V7
directories, the signed checksum), and for many thousands of mutated headers.
"""

from __future__ import annotations

import random
import tarfile

import pytest

from runtime.ingest.tar import _decode

ENCODING, ERRORS = "utf-8", "surrogateescape"
FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname", "uname",
          "gname", "devmajor", "devminor")


def decoded(decode, buf: bytes):
    """What ``decode`` makes of ``buf``: the fields, or the exception's type and text."""
    try:
        info = decode(buf)
    except Exception as exc:  # noqa: BLE001 - the exception is what is compared
        return ("raised", type(exc), str(exc))
    fields = tuple(getattr(info, f) for f in FIELDS)
    return ("ok", type(info), fields, getattr(info, "_sparse_structs", None))


def assert_same(buf: bytes) -> None:
    theirs = decoded(lambda b: tarfile.TarInfo.frombuf(b, ENCODING, ERRORS), buf)
    ours = decoded(lambda b: _decode(tarfile.TarInfo, b, ENCODING, ERRORS), buf)
    assert ours == theirs, buf


def with_checksum(block: bytearray | bytes, signed: bool = False) -> bytes:
    """``block`` with a correct checksum field (unsigned, or tarfile's signed variant)."""
    block = bytearray(block)
    block[148:156] = b" " * 8
    total = sum((b - 256 if signed and b > 127 else b) for b in block)
    block[148:156] = b"%06o\0 " % (total & 0o777777)
    return bytes(block)


def header(name: str = "d/f.txt", fmt: int = tarfile.GNU_FORMAT, **attrs) -> bytes:
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info.tobuf(fmt, ENCODING, ERRORS)


def blocks(data: bytes) -> list[bytes]:
    return [data[i:i + 512] for i in range(0, len(data), 512)]


FORMATS = (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)

MEMBERS = [
    dict(),
    dict(size=300, mtime=1704067200, mode=0o755, uid=1000, gid=1000, uname="ci", gname="ci"),
    dict(type=tarfile.DIRTYPE, mode=0o700),
    dict(type=tarfile.SYMTYPE, linkname="../target"),
    dict(type=tarfile.LNKTYPE, linkname="d/other.txt"),
    dict(type=tarfile.CHRTYPE, devmajor=4, devminor=64),
    dict(type=tarfile.FIFOTYPE),
    dict(size=8 ** 11 - 1),
]


@pytest.mark.parametrize("fmt", FORMATS, ids=["ustar", "gnu", "pax"])
@pytest.mark.parametrize("attrs", MEMBERS, ids=lambda a: ",".join(a) or "plain")
def test_every_block_tarfile_writes_decodes_the_same(fmt: int, attrs: dict) -> None:
    for name in ("d/f.txt", "é/ünïcødé.txt", "x" * 99, "/".join(["dir"] * 30) + "/leaf",
                 "n" * 180):
        try:
            data = header(name, fmt, **attrs)
        except ValueError:
            continue  # too long for this format
        for block in blocks(data):  # extended headers, their payload, the member's header
            assert_same(block)


@pytest.mark.parametrize("fmt", (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT), ids=["gnu", "pax"])
def test_numbers_too_large_for_octal_decode_the_same(fmt: int) -> None:
    """GNU writes base-256 (a first byte of 0x80 or 0xff) where octal does not fit."""
    for attrs in (dict(uid=8 ** 8), dict(mtime=-1), dict(size=8 ** 12), dict(gid=2 ** 40)):
        for block in blocks(header("big", fmt, **attrs)):
            assert_same(block)


def _odd_number_fields() -> list[bytes]:
    base = bytearray(header("odd.txt", tarfile.USTAR_FORMAT, size=5, mtime=1704067200))
    variants = []
    for start, width in ((100, 8), (108, 8), (124, 12), (136, 12), (329, 8)):
        for field in (b" 644 \0", b"0000644", b"\0" * 8, b" " * 8, b"0o644\0", b"6_4_4\0",
                      b"8888\0", b"99\0", b"-1\0", b"+7\0", b"\xff" + b"\0" * 7,
                      b"\x80\0\0\0\0\0\0\x01", b"1\x1c\0", b"\t17\n\0", b"\xc3\xa9\0",
                      b"777777777777"):
            block = bytearray(base)
            block[start:start + width] = field[:width].ljust(width, b"\0")
            variants.append(with_checksum(block))
    return variants


@pytest.mark.parametrize("block", _odd_number_fields())
def test_odd_number_encodings_decode_the_same(block: bytes) -> None:
    assert_same(block)


def test_checksums_decode_the_same() -> None:
    good = bytearray(header("é-name", tarfile.USTAR_FORMAT, size=1))
    assert_same(bytes(good))
    assert_same(with_checksum(good, signed=True))  # only tarfile's signed sum matches
    bad = bytearray(good)
    bad[0] ^= 1
    assert_same(bytes(bad))  # bad checksum
    for field in (b"\0" * 8, b"garbage\0", b" " * 8):
        block = bytearray(good)
        block[148:156] = field
        assert_same(bytes(block))


def test_special_blocks_decode_the_same() -> None:
    v7_dir = bytearray(header("olddir/", tarfile.USTAR_FORMAT))
    v7_dir[156:157] = tarfile.AREGTYPE  # V7: a directory is a file whose name ends in "/"
    sparse = bytearray(header("holes", tarfile.GNU_FORMAT, size=10))
    sparse[156:157] = tarfile.GNUTYPE_SPARSE
    unknown = bytearray(header("what", tarfile.USTAR_FORMAT))
    unknown[156:157] = b"Z"
    for block in (with_checksum(v7_dir), with_checksum(sparse), with_checksum(unknown),
                  bytes(512), b"", bytes(511), b"\1" * 512, b"x" * 513):
        assert_same(block)


def test_mutated_headers_decode_the_same() -> None:
    """Random damage to real headers, with the checksum repaired half of the time (else
    nearly every mutation would stop at the checksum)."""
    rnd = random.Random(15)
    bases = [block for fmt in FORMATS for attrs in MEMBERS
             for block in blocks(header("some/dir/file.bin", fmt, **attrs))]
    for _ in range(20_000):
        block = bytearray(rnd.choice(bases))
        for _ in range(rnd.randint(1, 6)):
            pos = rnd.randrange(512)
            block[pos] = rnd.choice((0, 0x20, 0x30 + rnd.randrange(10), rnd.randrange(256)))
        if rnd.random() < 0.5:
            block = bytearray(with_checksum(block, signed=rnd.random() < 0.1))
        assert_same(bytes(block))


def test_plain_headers_never_reach_tarfiles_decoder(monkeypatch) -> None:
    """The fast path is the one taken for the headers of an ordinary archive (the speed
    itself is measured by bench/upload.py, not here)."""
    blocks_seen = [block for fmt in FORMATS for attrs in MEMBERS
                   for block in blocks(header("some/dir/file.bin", fmt, **attrs))]
    expected = [decoded(lambda b: _decode(tarfile.TarInfo, b, ENCODING, ERRORS), b)
                for b in blocks_seen]

    def refuse(*_args, **_kwargs):
        raise AssertionError("tarfile's frombuf was called")

    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(refuse))
    again = [decoded(lambda b: _decode(tarfile.TarInfo, b, ENCODING, ERRORS), b)
             for b in blocks_seen]
    assert again == expected
    assert all(d[0] == "ok" for d in again)
