"""Every bound of an archive upload, through the real upload route: status, one line, nothing
published, and (for the header bombs) the server's memory.

The header bombs run against the server as its own process (``python -m runtime serve``) so
that its peak RSS (``VmHWM``) is the server's alone; the other limits are set small on an
in-process server so that crossing them is quick.
"""

from __future__ import annotations

import io
import json
import tarfile

import httpx
import pytest

from tests.ingestkit import (assert_refused, header_bomb, published, put_archive,
                             server_process)
from tests.live_server import live_server
from tests.test_unpack import docker_save
from tests.uploadkit import FQRN, auth, make_tar, settings

MiB = 1024 * 1024


@pytest.mark.parametrize("kind", ["pax", "gnu"])
def test_header_bomb_is_refused_before_it_is_read(tmp_path, kind):
    """A ~250 KB .tar.gz whose single header inflates to 256 MiB: 413 at once, and the
    server's peak RSS grows by far less than the header (it is never read into memory)."""
    bomb = header_bomb(kind, 256 * MiB)
    assert len(bomb) < 512 * 1024
    with server_process(tmp_path) as srv, httpx.Client(base_url=srv.url, headers=auth(),
                                                       timeout=60) as c:
        put_archive(c, "warmup", make_tar([("a.txt", "file", b"a")]))  # steady-state RSS
        manifest = c.get(f"/cvmfs/{FQRN}/.cvmfspublished").content
        before = srv.status("VmHWM")
        r = put_archive(c, "bomb", bomb)
        assert_refused(r, 413, "extended header of 268435456 bytes")
        grown = srv.status("VmHWM") - before
        assert grown < 32 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
        assert c.get(f"/cvmfs/{FQRN}/.cvmfspublished").content == manifest
        assert [f["name"] for f in c.get(f"/repos/{FQRN}").json()["files"]] == ["warmup"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A server with small limits, so that each is crossed by a small archive."""
    cfg = settings(tmp_path_factory.mktemp("limits"), max_archive_entries=40,
                   max_path_depth=6, max_path_bytes=300, max_tar_header_bytes=4096,
                   max_image_metadata_bytes=4096)
    with live_server(cfg) as server:
        yield server


@pytest.fixture
def client(small):
    with httpx.Client(base_url=small.url, headers=auth(), timeout=60) as c:
        yield c


def refused(small, client, data: bytes, status: int, message: str) -> None:  # type: ignore[no-untyped-def]
    repo = small.repositories[FQRN]
    before = published(repo)
    assert_refused(put_archive(client, "limited", data), status, message)
    assert published(repo) == before


def pax_tar(name: str, pax: dict[str, str], kind: str = "file", linkname: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.pax_headers = pax
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, linkname
        tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


def test_entries_per_archive(small, client):
    ok = make_tar([(f"f{i}", "file", b"") for i in range(40)])
    assert put_archive(client, "forty", ok).status_code == 200
    refused(small, client, make_tar([(f"f{i}", "file", b"") for i in range(41)]), 413,
            "more than 40 entries")


def test_entries_of_image_layers_count_too(small, client):
    layer = make_tar([(f"f{i}", "file", b"") for i in range(45)])
    refused(small, client, docker_save([layer]), 413, "more than 40 entries")


def test_path_depth_and_length(small, client):
    assert put_archive(client, "deep-ok", make_tar([("a/b/c/d/e/f", "file", b"")])).status_code == 200
    refused(small, client, make_tar([("a/b/c/d/e/f/g", "file", b"")]), 400,
            "deeper than 6 directories")
    refused(small, client, make_tar([("d/" + "/".join(["x" * 100] * 3), "file", b"")]), 400,
            "longer than 300 bytes")


def test_single_header_limit(small, client):
    refused(small, client, pax_tar("x" * 200, {"comment": "c" * 5000}), 413,
            "exceeds the limit of 4096 bytes")


def test_image_metadata_total(small, client):
    layer = make_tar([("etc", "dir", None)])
    assert put_archive(client, "img-ok", _image_with_config(layer, 1000)).status_code == 200
    refused(small, client, _image_with_config(layer, 5000), 413, "image metadata")


def _image_with_config(layer: bytes, config_size: int) -> bytes:
    import hashlib

    config = json.dumps({"architecture": "amd64", "pad": "p" * config_size}).encode()
    cid = hashlib.sha256(config).hexdigest()
    lid = hashlib.sha256(layer).hexdigest()
    manifest = json.dumps([{"Config": f"{cid}.json", "Layers": [f"{lid}/layer.tar"]}]).encode()
    return make_tar([(f"{lid}/layer.tar", "file", layer), (f"{cid}.json", "file", config),
                     ("manifest.json", "file", manifest)])


def test_symlink_target_not_utf8(small, client):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = b"tar\xffget".decode("utf-8", "surrogateescape")
        tar.addfile(info)
    refused(small, client, buf.getvalue(), 400, "target that is not UTF-8")


def test_member_name_not_utf8(small, client):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        tar.addfile(tarfile.TarInfo(b"bad\xfe".decode("utf-8", "surrogateescape")))
    refused(small, client, buf.getvalue(), 400, "not UTF-8")


@pytest.mark.parametrize("mtime", ["1e30", "-1e30", "9223372036854775808", "inf"])
def test_mtimes_a_catalog_cannot_hold(small, client, mtime):
    refused(small, client, pax_tar("f", {"mtime": mtime}), 400, "mtime")


def test_ordinary_odd_mtimes_are_kept(small, client):
    r = put_archive(client, "old", pax_tar("f", {"mtime": "-86400.5"}))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_members_of_gnu_tar_are_read_and_their_maps_bounded(small, client, tmp_path, fmt):
    """Sparse maps are headers too: an intact one is read (both GNU encodings), one cut short
    is a truncated archive (400, not a crash)."""
    import subprocess

    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse.bin", "wb") as fh:
        for i in range(30):  # 30 data regions: the old GNU format needs extension blocks
            fh.seek(i * 65536)
            fh.write(b"region %d" % i)
    archive = tmp_path / "s.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", str(archive), "-C", str(src),
                    "sparse.bin"], check=True)
    data = archive.read_bytes()
    with tarfile.open(archive) as tar:
        member = tar.getmember("sparse.bin") if fmt == "gnu" else tar.getmembers()[0]
        assert member.sparse, "the fixture must really be sparse"
    r = put_archive(client, f"sparse-{fmt}", data)
    assert r.status_code == 200, r.text
    got = client.get(f"/repos/{FQRN}/sparse-{fmt}").content
    with tarfile.open(fileobj=io.BytesIO(got)) as tar:
        body = tar.extractfile(f"sparse-{fmt}/sparse.bin").read()  # type: ignore[union-attr]
    assert body == (src / "sparse.bin").read_bytes()
    refused(small, client, data[:1024 + 256], 400, "truncated")
