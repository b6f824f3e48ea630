"""Corrupt or truncated archives are refused whole; every valid compression is accepted.

Through the real upload route over loopback: each refusal answers 400 with one line and leaves
the published repository as it was; each valid archive (made by GNU tar) publishes exactly the
tree that was archived.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
import zlib

import httpx
import pytest
import zstandard

from tests.ingestkit import assert_refused, published, put_archive, real_tar, source_tree
from tests.live_server import live_server
from tests.uploadkit import FQRN, auth, make_tar, settings


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with live_server(settings(tmp_path_factory.mktemp("integrity"))) as server:
        yield server


@pytest.fixture
def client(srv):
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return source_tree(tmp_path_factory.mktemp("src"))


def listing(client: httpx.Client, name: str) -> dict[str, bytes | str]:
    """The published artifact, downloaded as tar: path -> content ('dir' / '-> target')."""
    r = client.get(f"/repos/{FQRN}/{name}")
    assert r.status_code == 200, r.text
    out: dict[str, bytes | str] = {}
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        for m in tar:
            rel = m.name.partition("/")[2]
            out[rel] = ("dir" if m.isdir() else f"-> {m.linkname}" if m.issym()
                        else tar.extractfile(m).read())  # type: ignore[union-attr]
    return out


def expected(tree) -> dict[str, bytes | str]:  # type: ignore[no-untyped-def]
    out: dict[str, bytes | str] = {"": "dir"}
    for p in sorted(tree.rglob("*")):
        rel = str(p.relative_to(tree))
        out[rel] = (f"-> {p.readlink()}" if p.is_symlink() else "dir" if p.is_dir()
                    else p.read_bytes())
    return out


@pytest.mark.parametrize("flags", [[], ["-z"], ["-j"], ["-J"], ["--zstd"]],
                         ids=["tar", "gzip", "bzip2", "xz", "zstd"])
def test_archives_made_by_gnu_tar_are_accepted(client, tree, tmp_path, flags):
    data = real_tar(tree, tmp_path / "a", *flags)
    name = "art-" + (flags[0].strip("-") if flags else "plain")
    r = put_archive(client, name, data)
    assert r.status_code == 200, r.text
    assert listing(client, name) == expected(tree)


def test_concatenated_gzip_members_are_one_stream(client, tree, tmp_path):
    """``cat a.gz b.gz`` (or pigz's output) is a valid gzip file: all members are read."""
    raw = real_tar(tree, tmp_path / "a")
    cut = len(raw) // 3
    data = gzip.compress(raw[:cut]) + gzip.compress(raw[cut:])
    subprocess.run(["gzip", "-t"], input=data, check=True)  # gzip itself agrees it is valid
    r = put_archive(client, "multi-gz", data)
    assert r.status_code == 200, r.text
    assert listing(client, "multi-gz") == expected(tree)


def test_multi_stream_bzip2_and_xz_are_accepted(client, tree, tmp_path):
    raw = real_tar(tree, tmp_path / "a")
    for kind, tool in (("bz", "bzip2"), ("xz", "xz")):
        half = len(raw) // 2
        parts = [subprocess.run([tool, "-c"], input=p, check=True, capture_output=True).stdout
                 for p in (raw[:half], raw[half:])]
        r = put_archive(client, f"multi-{kind}", b"".join(parts))
        assert r.status_code == 200, r.text
        assert listing(client, f"multi-{kind}") == expected(tree)


def test_zero_padding_after_the_archive_is_tolerated(client, tree, tmp_path):
    raw = real_tar(tree, tmp_path / "a")
    r = put_archive(client, "padded", raw + bytes(10240))
    assert r.status_code == 200, r.text
    r = put_archive(client, "padded-gz", gzip.compress(raw) + bytes(512))
    assert r.status_code == 200, r.text


def _flush_cut_gzip(raw: bytes) -> bytes:
    """A gzip stream cut right after a full flush: everything so far decodes cleanly."""
    co = zlib.compressobj(wbits=31)
    return co.compress(raw[:len(raw) // 2]) + co.flush(zlib.Z_FULL_FLUSH)


def _zstd_cut_between_blocks(raw: bytes) -> bytes:
    """A zstd frame cut after a complete block: the decompressor sees a clean stop."""
    buf = io.BytesIO()
    writer = zstandard.ZstdCompressor().stream_writer(buf, closefd=False)
    writer.write(raw[:len(raw) // 2])
    writer.flush(zstandard.FLUSH_BLOCK)
    return buf.getvalue()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]


def _corruptions(raw: bytes, tmp_path) -> list[tuple[str, bytes, str]]:  # type: ignore[no-untyped-def]
    gz = gzip.compress(raw)
    zst = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    bad_header = bytearray(raw)
    second = 512 * (1 + (tarfile.open(fileobj=io.BytesIO(raw)).next().size + 511) // 512)  # type: ignore[union-attr]
    bad_header[second + 148:second + 156] = b"9999999\0"  # checksum field of member 2
    return [
        ("gzip crc", gz[:-8] + bytes(4) + gz[-4:], "incorrect data check"),
        ("gzip isize", gz[:-4] + (len(raw) + 1).to_bytes(4, "little"), "incorrect length check"),
        ("gzip body byte", _flip(gz, len(gz) // 2), "corrupt gzip stream"),
        ("gzip without trailer", gz[:-8], "gzip stream is truncated"),
        ("gzip cut at a flush point", _flush_cut_gzip(raw), "gzip stream is truncated"),
        ("gzip then garbage", gz + b"garbage!", "followed by data that is not gzip"),
        ("bzip2 truncated", subprocess.run(["bzip2", "-c"], input=raw, capture_output=True,
                                           check=True).stdout[:-20], "bzip2 stream is"),
        ("xz truncated", subprocess.run(["xz", "-c"], input=raw, capture_output=True,
                                        check=True).stdout[:-20], "xz stream is"),
        ("zstd cut mid-frame", zst[:len(zst) // 2], "zstd stream is truncated"),
        ("zstd cut between blocks", _zstd_cut_between_blocks(raw), "zstd stream is truncated"),
        ("zstd checksum", zst[:-1] + bytes([zst[-1] ^ 1]), "checksum"),
        ("tar without end blocks", raw[:second], "no end-of-archive blocks"),
        ("tar cut in a header", raw[:second + 100], "truncated inside a header"),
        ("tar cut in member data", raw[:second + 600], "truncated"),
        ("bad header after a member", bytes(bad_header), f"bad tar header at offset {second}"),
        ("trailing data after the end", raw + b"junk" + bytes(508), "data after its end"),
    ]


def test_every_corruption_refuses_the_whole_upload(srv, client, tmp_path):
    raw = make_tar([("first.txt", "file", b"1" * 3000), ("second.txt", "file", b"2" * 70000),
                    ("third.txt", "file", b"3" * 100)])
    repo = srv.repositories[FQRN]
    for what, data, message in _corruptions(raw, tmp_path):
        before = published(repo)
        r = put_archive(client, "corrupt", data)
        assert_refused(r, 400, message)
        assert published(repo) == before, what
    # and the intact one is accepted, so the refusals were about the corruption
    assert put_archive(client, "intact", gzip.compress(raw)).status_code == 200


def test_one_byte_corruptions_of_a_tar_gz_are_never_published_wrong(srv, client):
    """Every byte flip of a .tar.gz is refused, except those gzip itself cannot see (header
    fields such as MTIME/OS): those publish exactly the original content."""
    raw = make_tar([(f"f{i}.txt", "file", bytes([65 + i]) * (200 * i + 1)) for i in range(8)])
    gz = gzip.compress(raw, mtime=0)
    original = {f"f{i}.txt": bytes([65 + i]) * (200 * i + 1) for i in range(8)}
    step = max(1, len(gz) // 40)
    refused = 0
    for n, at in enumerate(range(0, len(gz), step)):
        r = put_archive(client, f"flip{n}", _flip(gz, at))
        if r.status_code == 200:
            got = listing(client, f"flip{n}")
            assert {k: v for k, v in got.items() if k} == original, f"byte {at}"
        else:
            assert_refused(r, 400, "")
            refused += 1
    assert refused >= 30
