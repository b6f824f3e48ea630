"""The upload API over real loopback HTTP: every route, every refusal, state on disk."""

from __future__ import annotations

import gzip
import io
import socket
import tarfile
import time

import httpx
import pytest

from tests.cvmfs_reader import RepoReader
from tests.live_server import live_server
from tests.uploadkit import (FQRN, OTHER, SCOPED, TOKEN, auth, leftovers, make_tar, settings,
                             snapshot)


def repo_of(srv, fqrn=FQRN):  # type: ignore[no-untyped-def]
    return srv.repositories[fqrn]


# --- uploads that succeed ---------------------------------------------------------------------

def test_put_raw_body_publishes_and_answers_after_publish(srv, client):
    data = bytes(range(256)) * 1000  # 256000 bytes: chunked at 64 KiB, zlib
    r = client.put(f"/repos/{FQRN}/blob.bin", params={"ttl_s": 600}, content=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "blob.bin" and body["path"] == f"/cvmfs/{FQRN}/blob.bin"
    assert body["size"] == len(data)
    assert body["revision"] == repo_of(srv).revision()  # already published when answered
    assert set(body) >= {"expires_at", "upload_time_s", "publish_time_s"}
    assert client.get(f"/repos/{FQRN}/blob.bin").content == data


def test_post_multipart_seed_compatible(srv, client):
    r = client.post(f"/repos/{FQRN}", files={"file": ("report.txt", b"hello\n")})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "report.txt"
    listing = client.get(f"/repos/{FQRN}").json()["files"]
    assert [(f["name"], f["size"]) for f in listing] == [("report.txt", 6)]
    expires = listing[0]["expires_at"]
    assert expires == r.json()["expires_at"]
    # default TTL 7200 s
    created = time.time()
    from datetime import datetime
    ts = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
    assert 7100 < ts - created <= 7200


def test_post_multipart_name_query_overrides_filename(client):
    r = client.post(f"/repos/{FQRN}", params={"name": "renamed"},
                    files={"file": ("orig.txt", b"x")})
    assert r.status_code == 200 and r.json()["name"] == "renamed"


def test_unpack_tarball_and_download_as_tar(client):
    tgz = gzip.compress(make_tar([("dir", "dir", None), ("dir/f.txt", "file", b"in dir\n"),
                                  ("top.txt", "file", b"top\n"), ("ln", "symlink", "top.txt")]))
    r = client.put(f"/repos/{FQRN}/tree", params={"unpack": "true"}, content=tgz)
    assert r.status_code == 200, r.text
    assert r.json()["files"] == 2
    down = client.get(f"/repos/{FQRN}/tree")
    assert down.status_code == 200 and down.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(down.content)) as tar:
        got = {m.name: (tar.extractfile(m).read() if m.isfile() else m.linkname or "d")
               for m in tar.getmembers()}
    assert got == {"tree": "d", "tree/dir": "d", "tree/dir/f.txt": b"in dir\n",
                   "tree/top.txt": b"top\n", "tree/ln": "top.txt"}


def test_multipart_unpack(client):
    data = make_tar([("a", "file", b"A")])
    r = client.post(f"/repos/{FQRN}", params={"unpack": "true", "name": "mp"},
                    files={"file": ("x.tar", data)})
    assert r.status_code == 200, r.text
    assert client.get(f"/repos/{FQRN}").json()["files"][0]["kind"] == "dir"


def test_overwrite_replaces_and_identical_content_only_refreshes_ttl(srv, client):
    repo = repo_of(srv)
    first = client.put(f"/repos/{FQRN}/a", params={"ttl_s": 100}, content=b"v1").json()
    objects = sorted(h + s for h, s, _ in repo.store.iter_objects())
    again = client.put(f"/repos/{FQRN}/a", params={"ttl_s": 5000, "overwrite": "true"},
                       content=b"v1").json()
    assert again["refreshed"] is True and again["revision"] == first["revision"]
    assert again["expires_at"] > first["expires_at"]
    assert sorted(h + s for h, s, _ in repo.store.iter_objects()) == objects  # nothing stored
    third = client.put(f"/repos/{FQRN}/a", params={"overwrite": "true"}, content=b"v2").json()
    assert third["revision"] > first["revision"]
    assert client.get(f"/repos/{FQRN}/a").content == b"v2"


def test_overwrite_of_a_directory_drops_old_files(client):
    client.put(f"/repos/{FQRN}/t", params={"unpack": "true"},
               content=make_tar([("old", "file", b"1"), ("keep", "file", b"2")]))
    client.put(f"/repos/{FQRN}/t", params={"unpack": "true", "overwrite": "true"},
               content=make_tar([("keep", "file", b"3")]))
    with tarfile.open(fileobj=io.BytesIO(client.get(f"/repos/{FQRN}/t").content)) as tar:
        assert sorted(tar.getnames()) == ["t", "t/keep"]


def test_ttl_route_and_delete(srv, client):
    client.put(f"/repos/{FQRN}/x", content=b"x")
    r = client.post(f"/repos/{FQRN}/x/ttl", params={"ttl_s": 30})
    assert r.status_code == 200, r.text
    exp = repo_of(srv).artifact("x").expires_at
    assert exp is not None and 0 < exp - time.time() <= 30
    assert client.post(f"/repos/{FQRN}/nothing/ttl", params={"ttl_s": 30}).status_code == 404
    assert client.post(f"/repos/{FQRN}/x/ttl", params={"ttl_s": 0}).status_code == 422
    assert client.post(f"/repos/{FQRN}/x/ttl").status_code == 422
    rev = repo_of(srv).revision()
    d = client.delete(f"/repos/{FQRN}/x")
    assert d.status_code == 200 and d.json()["revision"] > rev
    assert client.get(f"/repos/{FQRN}").json()["files"] == []
    gone = client.delete(f"/repos/{FQRN}/x")
    assert gone.status_code == 404 and "not found" in gone.json()["detail"]
    assert client.get(f"/repos/{FQRN}/x").status_code == 404


def test_expiry_survives_a_restart(tmp_path):
    s = settings(tmp_path)
    with live_server(s) as a:
        httpx.put(f"{a.url}/repos/{FQRN}/kept", params={"ttl_s": 1234}, content=b"k",
                  headers=auth())
        exp = a.repositories[FQRN].artifact("kept").expires_at
    with live_server(s) as b:
        listing = httpx.get(f"{b.url}/repos/{FQRN}").json()["files"]
        assert listing[0]["name"] == "kept"
        assert b.repositories[FQRN].artifact("kept").expires_at == exp


def test_client_side_read_through_the_reader(srv, client):
    big = bytes((i * 7) % 251 for i in range(300000))
    client.put(f"/repos/{FQRN}/big.bin", content=big)
    client.put(f"/repos/{FQRN}/tree", params={"unpack": "true"},
               content=make_tar([("sub", "dir", None), ("sub/f", "file", b"f\n"),
                                 ("l", "symlink", "sub/f")]))
    pub = (srv.settings.keys_dir / f"{FQRN}.pub").read_bytes()
    with RepoReader(f"{srv.url}/cvmfs/{FQRN}", FQRN, pub) as reader:
        assert reader.revision == repo_of(srv).revision()
        assert reader.read_file("/big.bin") == big
        assert reader.read_file("/tree/sub/f") == b"f\n"
        assert reader.entry("/tree/l").symlink == "sub/f"
        reader.check()


def test_healthz_and_metrics(srv, client):
    assert {k: v for k, v in client.get("/healthz").json().items() if k != "version"} == {"status": "ok", "role": "all"}
    client.put(f"/repos/{FQRN}/m", content=b"12345")
    text = client.get("/metrics").text
    assert f'cvmfs_ephemeral_uploads_total{{outcome="published",repository="{FQRN}"}} 1.0' in text
    assert f'cvmfs_ephemeral_upload_bytes_total{{repository="{FQRN}"}} 5.0' in text
    assert f'cvmfs_ephemeral_revision{{repository="{FQRN}"}} {float(repo_of(srv).revision())}' \
        in text.replace("e+09", "e+09")  or "cvmfs_ephemeral_revision{" in text
    assert "cvmfs_ephemeral_publish_seconds_bucket" in text
    assert "cvmfs_ephemeral_whitelist_seconds_to_expiry" in text
    assert "cvmfs_ephemeral_subscribers" in text


def test_notify_route_resends_current_revision(srv, client):
    r = client.post(f"/repos/{FQRN}/notify")
    assert r.status_code == 200 and r.json()["revision"] == repo_of(srv).revision()
    assert httpx.post(f"{srv.url}/repos/{FQRN}/notify").status_code == 401


# --- refusals: status, message, nothing changed -----------------------------------------------

REFUSALS = [
    # (method, path, params, headers, body, status, message fragment)
    ("PUT", f"/repos/{FQRN}/x", {}, {}, b"x", 401, "missing bearer token"),
    ("PUT", f"/repos/{FQRN}/x", {}, auth("wrong"), b"x", 403, "invalid token"),
    ("PUT", f"/repos/{FQRN}/x", {}, auth(SCOPED), b"x", 403, "not valid for this repository"),
    ("PUT", "/repos/nope.example.org/x", {}, auth(), b"x", 404, "not found"),
    # hierarchical names (tests/test_names.py): too deep, or an empty segment
    ("PUT", f"/repos/{FQRN}/a/b/c/d/e", {}, auth(), b"x", 400, "at most 4 allowed"),
    ("PUT", f"/repos/{FQRN}/a%2F%2Fb", {}, auth(), b"x", 400, "empty segment"),
    ("PUT", f"/repos/{FQRN}/%2E%2E", {}, auth(), b"x", 400, "invalid artifact name"),
    ("PUT", f"/repos/{FQRN}/bad%01name", {}, auth(), b"x", 400, "control characters"),
    ("PUT", f"/repos/{FQRN}/" + "n" * 256, {}, auth(), b"x", 400, "longer than 255"),
    ("PUT", f"/repos/{FQRN}/.cvmfscatalog", {}, auth(), b"x", 400, "reserved"),
    ("PUT", f"/repos/{FQRN}/x", {"ttl_s": "0"}, auth(), b"x", 422, "ttl_s must be between"),
    ("PUT", f"/repos/{FQRN}/x", {"ttl_s": "-5"}, auth(), b"x", 422, "ttl_s must be between"),
    ("PUT", f"/repos/{FQRN}/x", {"ttl_s": "999999999"}, auth(), b"x", 422, "ttl_s must be"),
    ("PUT", f"/repos/{FQRN}/x", {"ttl_s": "soon"}, auth(), b"x", 422, "invalid ttl_s"),
    ("PUT", f"/repos/{FQRN}/x", {"unpack": "true"}, auth(), b"garbage" * 100, 400,
     "not a readable tar archive"),
    ("PUT", f"/repos/{FQRN}/x", {"unpack": "true"}, auth(),
     make_tar([("../escape", "file", b"x")]), 400, "escapes the archive root"),
    ("PUT", f"/repos/{FQRN}/x", {"unpack": "true"}, auth(),
     make_tar([("/abs", "file", b"x")]), 400, "absolute path"),
    ("POST", f"/repos/{FQRN}", {}, auth(), b"not multipart", 400, "multipart/form-data"),
]


@pytest.mark.parametrize("method, path, params, headers, body, status, message", REFUSALS,
                         ids=[f"{r[5]}-{r[6][:24]}" for r in REFUSALS])
def test_refusals_change_nothing(srv, method, path, params, headers, body, status, message):
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        c.put(f"/repos/{FQRN}/existing", content=b"e", headers=auth())
        before = snapshot(repo_of(srv))
        r = c.request(method, path, params=params, headers=headers, content=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and message in detail
    assert snapshot(repo_of(srv)) == before


def test_existing_name_without_overwrite_is_409(srv, client):
    client.put(f"/repos/{FQRN}/dup", content=b"one")
    before = snapshot(repo_of(srv))
    for r in (client.put(f"/repos/{FQRN}/dup", content=b"two"),
              client.post(f"/repos/{FQRN}", files={"file": ("dup", b"two")})):
        assert r.status_code == 409 and "already exists" in r.json()["detail"]
    assert snapshot(repo_of(srv)) == before
    assert client.get(f"/repos/{FQRN}/dup").content == b"one"


def test_too_large_is_413_and_leaves_nothing(tmp_path):
    with live_server(settings(tmp_path, max_artifact_bytes=1000)) as srv:
        repo = repo_of(srv)
        before = snapshot(repo)
        with httpx.Client(base_url=srv.url, headers=auth()) as c:
            declared = c.put(f"/repos/{FQRN}/big", content=b"x" * 1001)
            streamed = c.put(f"/repos/{FQRN}/big", content=iter([b"x" * 600, b"x" * 600]))
            multipart = c.post(f"/repos/{FQRN}", files={"file": ("big", b"x" * 5000)})
            unpacked = c.put(f"/repos/{FQRN}/big", params={"unpack": "true"},
                             content=gzip.compress(make_tar([("z", "file", b"\0" * 5000)])))
            exact = c.put(f"/repos/{FQRN}/fits", content=b"x" * 1000)
        for r in (declared, streamed, multipart, unpacked):
            assert r.status_code == 413, r.text
            assert "limit of 1000 bytes" in r.json()["detail"]
        assert exact.status_code == 200
        after = snapshot(repo)
        assert [a[0] for a in after[1]] == ["fits"] and after[3] == []
        assert before[3] == []


def test_full_disk_is_507_publishes_nothing_and_heals_once_space_returns(srv, client,
                                                                          monkeypatch):
    """ENOSPC while objects are written (the kernel's answer, raised where it would be): a
    one-line 507, nothing published, no temp file. The short objects it leaves (like a killed
    writer's) are never reused: the same uploads succeed once there is space, and read back."""
    import errno
    import os

    repo = repo_of(srv)
    before = snapshot(repo)
    tar = make_tar([("a.txt", "file", b"alpha" * 100), ("d/b.txt", "file", b"beta" * 100)])

    def no_space(fd, buffers):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "writev", no_space)
    plain = client.put(f"/repos/{FQRN}/full", content=b"payload" * 1000)
    unpacked = client.put(f"/repos/{FQRN}/fulltar", params={"unpack": "true"}, content=tar)
    monkeypatch.undo()
    for r in (plain, unpacked):
        assert r.status_code == 507, r.text
        assert r.json()["detail"].startswith("the server's storage is full")
        assert "/" not in r.json()["detail"], "no server paths in the message"
    after = snapshot(repo)
    assert after[:2] == before[:2] and after[3] == [], "nothing published, no temp files"

    assert client.put(f"/repos/{FQRN}/full", content=b"payload" * 1000).status_code == 200
    assert client.put(f"/repos/{FQRN}/fulltar", params={"unpack": "true"},
                      content=tar).status_code == 200
    pub = (srv.settings.keys_dir / f"{FQRN}.pub").read_bytes()
    with RepoReader(f"{srv.url}/cvmfs/{FQRN}", FQRN, pub) as reader:
        assert reader.read_file("/full") == b"payload" * 1000
        assert reader.read_file("/fulltar/d/b.txt") == b"beta" * 100
        reader.check()


def test_client_disconnect_mid_upload_leaves_nothing(srv):
    repo = repo_of(srv)
    before = snapshot(repo)
    for params in ("", "?unpack=true"):
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.sendall((f"PUT /repos/{FQRN}/partial{params} HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1000000\r\n\r\n"
                      ).encode() + make_tar([("f", "file", b"y" * 100000)])[:4000])
        time.sleep(0.3)
        sock.close()
    deadline = time.monotonic() + 10
    while leftovers(repo) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert snapshot(repo) == before
    assert "partial" not in [a.name for a in repo.artifacts()]


def test_other_repository_with_scoped_token(srv):
    r = httpx.put(f"{srv.url}/repos/{OTHER}/s", content=b"s", headers=auth(SCOPED))
    assert r.status_code == 200, r.text
    assert r.json()["path"] == f"/cvmfs/{OTHER}/s"


def test_reads_are_public(srv, client):
    client.put(f"/repos/{FQRN}/pub", content=b"p")
    assert httpx.get(f"{srv.url}/repos/{FQRN}").status_code == 200
    assert httpx.get(f"{srv.url}/repos/{FQRN}/pub").content == b"p"
    assert httpx.get(f"{srv.url}/repos/nope.example.org").status_code == 404
