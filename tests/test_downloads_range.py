"""Downloads over loopback: single byte ranges (206/416), ETag from the content hash,
If-Range and If-None-Match, HEAD on files and directories."""

from __future__ import annotations

import random

import httpx
import pytest

from runtime.cvmfs.objects import PARTIAL
from tests.live_server import live_server
from tests.uploadkit import FQRN, auth, make_tar, settings

DATA = random.Random(7).randbytes(600_000)  # chunked (64 KiB average), zlib
URL = f"/repos/{FQRN}/blob.bin"


@pytest.fixture
def client(srv):
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as c:
        assert c.put(URL, content=DATA).status_code == 200
        yield c


def test_whole_file_advertises_ranges_and_a_strong_etag(client):
    r = client.get(URL)
    assert r.status_code == 200 and r.content == DATA
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"].startswith('"') and not r.headers["etag"].startswith("W/")
    assert int(r.headers["content-length"]) == len(DATA)


@pytest.mark.parametrize("header, first, last", [
    ("bytes=0-99", 0, 99), ("bytes=100000-300000", 100000, 300000),
    ("bytes=599990-", 599990, 599999), ("bytes=-10", 599990, 599999),
    ("bytes=-1000000", 0, 599999), ("bytes=500000-9999999", 500000, 599999),
    ("bytes=65535-65536", 65535, 65536),
])
def test_single_range_is_206_with_content_range(client, header, first, last):
    r = client.get(URL, headers={"Range": header})
    assert r.status_code == 206, r.text
    assert r.content == DATA[first:last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert int(r.headers["content-length"]) == last - first + 1


@pytest.mark.parametrize("header", ["bytes=600000-", "bytes=700000-800000", "bytes=-0"])
def test_unsatisfiable_range_is_416(client, header):
    r = client.get(URL, headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3", "garbage"])
def test_several_or_unparsable_ranges_get_the_whole_file(client, header):
    r = client.get(URL, headers={"Range": header})
    assert r.status_code == 200 and r.content == DATA


def test_a_range_reads_only_the_chunks_it_needs(srv, client):
    repo = srv.repositories[FQRN]
    entry = repo.artifact_tree("blob.bin")["/blob.bin"]
    assert len(entry.chunks) >= 3
    wanted = entry.chunks[1]
    for c in entry.chunks:  # remove every other chunk's object from the store
        if c is not wanted:
            repo.store.path(c.digest.hex(), PARTIAL).unlink()
    first, last = wanted.offset + 10, wanted.offset + wanted.size - 10
    r = client.get(URL, headers={"Range": f"bytes={first}-{last}"})
    assert r.status_code == 206 and r.content == DATA[first:last + 1]


def test_if_range_with_the_current_etag_honours_the_range(client):
    tag = client.head(URL).headers["etag"]
    r = client.get(URL, headers={"Range": "bytes=0-9", "If-Range": tag})
    assert r.status_code == 206 and r.content == DATA[:10]


def test_if_range_with_a_stale_etag_gets_the_new_whole_file(client):
    stale = client.head(URL).headers["etag"]
    new = DATA[::-1]
    assert client.put(URL, content=new, params={"overwrite": "true"}).status_code == 200
    fresh = client.head(URL).headers["etag"]
    assert fresh != stale  # the ETag follows the content
    r = client.get(URL, headers={"Range": "bytes=0-9", "If-Range": stale})
    assert r.status_code == 200 and r.content == new and r.headers["etag"] == fresh
    dated = client.get(URL, headers={"Range": "bytes=0-9",
                                     "If-Range": "Tue, 01 Dec 2026 10:00:00 GMT"})
    assert dated.status_code == 200  # a date is never a strong validator here


def test_if_none_match_is_304(client):
    tag = client.get(URL).headers["etag"]
    for header in (tag, f'"other", W/{tag}', "*"):
        r = client.get(URL, headers={"If-None-Match": header})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == tag
    assert client.get(URL, headers={"If-None-Match": '"other"'}).status_code == 200


def test_small_unchunked_file_ranges_and_etag(client):
    assert client.put(f"/repos/{FQRN}/small.txt", content=b"hello world").status_code == 200
    r = client.get(f"/repos/{FQRN}/small.txt", headers={"Range": "bytes=6-"})
    assert r.status_code == 206 and r.content == b"world"
    other = client.head(f"/repos/{FQRN}/small.txt").headers["etag"]
    assert other != client.head(URL).headers["etag"]


def test_head_on_a_file_answers_headers_only(client):
    r = client.head(URL)
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == len(DATA)
    assert r.headers["accept-ranges"] == "bytes" and r.headers["etag"]
    ranged = client.head(URL, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 10-19/{len(DATA)}"


def test_head_on_a_directory_generates_no_tar(srv, client):
    tar = make_tar([("d", "dir", None), ("d/a.txt", "file", b"a" * 100)])
    assert client.put(f"/repos/{FQRN}/tree", content=tar,
                      params={"unpack": "true"}).status_code == 200
    r = client.head(f"/repos/{FQRN}/tree")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"] == "application/x-tar"
    assert "tree.tar" in r.headers["content-disposition"]
    assert srv.app.state.uploads.downloads.running() == 0
    assert client.get(f"/repos/{FQRN}/tree").status_code == 200


def test_head_on_a_directory_needs_no_download_slot(tmp_path):
    """With this client's only slot held by a running tar download, a GET is 429 and a HEAD
    is still answered: HEAD neither admits nor generates a tar."""
    with live_server(settings(tmp_path, max_downloads_per_client=1)) as srv, \
            httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as client:
        big = random.Random(3).randbytes(48 * 1024 * 1024)  # more than the socket buffers
        tar = make_tar([("d", "dir", None), ("d/big.bin", "file", big)])
        assert client.put(f"/repos/{FQRN}/tree", content=tar,
                          params={"unpack": "true"}).status_code == 200
        with client.stream("GET", f"/repos/{FQRN}/tree") as running:
            assert running.status_code == 200
            assert client.get(f"/repos/{FQRN}/tree").status_code == 429
            head = client.head(f"/repos/{FQRN}/tree")
            assert head.status_code == 200 and head.content == b""


def test_head_on_a_missing_artifact_is_404(client):
    assert client.head(f"/repos/{FQRN}/nope").status_code == 404
