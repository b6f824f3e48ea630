"""The HTTP edge bounds what a connection costs before and while its request runs: request head
size and time, the number of connections, the body's idle time, directory downloads. Each test
talks to the real server over loopback (raw sockets where a client must misbehave) and checks
the status, the one-line JSON reason, that nothing was published, and the bound itself."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import live_server
from tests.uploadkit import FQRN, TOKEN, auth, leftovers, make_tar, settings, snapshot


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict, dict]:
    """Read one whole ``Connection: close`` response: (status, headers, JSON body)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
            headers = {k.lower(): v for k, v in headers.items()}
            if len(body) >= int(headers.get("content-length", "-1")):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return status, headers, json.loads(body) if body else {}


def put_head(name: str, length: int, query: str = "") -> bytes:
    return (f"PUT /repos/{FQRN}/{name}{query} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n").encode()


def healthz_ms(url: str) -> float:
    started = time.perf_counter()
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    return (time.perf_counter() - started) * 1000


# --------------------------------------------------------------------------------------------
# the request head


def test_an_oversized_request_head_gets_431_after_at_most_the_limit(tmp_path: Path) -> None:
    with live_server(settings(tmp_path, max_header_bytes=8192)) as srv:
        repo = srv.repositories[FQRN]
        before = snapshot(repo)
        sock = connect(srv.port)
        started = time.perf_counter()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: ")
        try:  # 64 MiB of header: the server must stop reading long before
            for _ in range(1024):
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = read_response(sock)
        assert status == 431
        assert body == {"detail": "request head larger than the limit of 8192 bytes"}
        assert headers["connection"] == "close"
        assert time.perf_counter() - started < 5
        assert healthz_ms(srv.url) < 1000
        assert snapshot(repo) == before


def test_a_half_sent_request_head_is_dropped_after_the_header_timeout(tmp_path: Path) -> None:
    with live_server(settings(tmp_path, header_timeout_s=1.0)) as srv:
        half = connect(srv.port)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        silent = connect(srv.port)  # never a byte
        started = time.perf_counter()
        status, _headers, body = read_response(half)
        assert status == 408
        assert body == {"detail": "request head not received within 1 s"}
        silent.settimeout(5)
        assert silent.recv(65536).startswith(b"HTTP/1.1 408")
        assert silent.recv(65536) == b""  # closed
        assert time.perf_counter() - started < 4


def test_a_kept_alive_connection_gets_the_header_timeout_for_each_request(tmp_path: Path) -> None:
    with live_server(settings(tmp_path, header_timeout_s=1.0)) as srv:
        sock = connect(srv.port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # second request, half sent
        time.sleep(0.5)
        started = time.perf_counter()
        rest = sock.recv(65536)
        assert rest.startswith(b"HTTP/1.1 408") or rest == b""
        assert time.perf_counter() - started < 3


def test_a_malformed_request_line_is_a_json_400(tmp_path: Path) -> None:
    with live_server(settings(tmp_path)) as srv:
        sock = connect(srv.port)
        sock.sendall(b"GET /healthz HTTP/9\x00\r\n\r\n")
        status, _h, body = read_response(sock)
        assert status == 400
        assert body["detail"].startswith("malformed HTTP request")


# --------------------------------------------------------------------------------------------
# the number of connections


def test_connections_beyond_the_limit_get_503_and_the_server_recovers(tmp_path: Path) -> None:
    with live_server(settings(tmp_path, max_connections=4, header_timeout_s=30.0)) as srv:
        held = [connect(srv.port) for _ in range(4)]
        time.sleep(0.2)
        extra = connect(srv.port)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(extra)
        assert status == 503
        assert body == {"detail": "too many connections to this server; retry later"}
        assert headers["retry-after"] == "1"
        # an over-limit connection that sends nothing is closed after ~2 s, not held
        idle = connect(srv.port)
        idle.settimeout(6)
        started = time.perf_counter()
        while idle.recv(65536):
            pass
        assert time.perf_counter() - started < 4
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200


# --------------------------------------------------------------------------------------------
# the body's idle time


@pytest.mark.parametrize("unpack", [False, True])
def test_a_stalled_body_is_abandoned_with_408_and_nothing_published(tmp_path: Path,
                                                                     unpack: bool) -> None:
    with live_server(settings(tmp_path, body_idle_timeout_s=1)) as srv:
        repo = srv.repositories[FQRN]
        before = snapshot(repo)
        body = make_tar([("a.txt", "file", b"x" * 100_000)]) if unpack else b"y" * 100_000
        sock = connect(srv.port)
        query = "?unpack=true" if unpack else ""
        sock.sendall(put_head("stalled", len(body), query) + body[:30_000])
        started = time.perf_counter()
        status, headers, answer = read_response(sock)
        assert status == 408
        assert answer == {"detail": "no request body received for 1 s; nothing was published"}
        assert headers["connection"] == "close"
        assert 0.9 < time.perf_counter() - started < 5
        time.sleep(0.3)
        assert snapshot(repo) == before
        assert leftovers(repo) == []
        assert all(a.name != "stalled" for a in repo.artifacts())


def test_an_upload_whose_client_left_while_waiting_for_the_unpack_pool_is_not_published(
        tmp_path: Path) -> None:
    """16 stalled archive uploads fill the unpack pool; a 17th is sent whole and its client
    leaves. When the stalled ones time out and the pool frees, the 17th must not be published
    (its client is gone: publishing it later would surprise whoever retries)."""
    with live_server(settings(tmp_path, body_idle_timeout_s=3)) as srv:
        repo = srv.repositories[FQRN]
        before = snapshot(repo)
        tar = make_tar([("f.txt", "file", b"z" * 200_000)])
        stalled = []
        for i in range(16):
            sock = connect(srv.port)
            sock.sendall(put_head(f"stalled-{i}", len(tar), "?unpack=true") + tar[:1024])
            stalled.append(sock)
        time.sleep(0.5)
        late = connect(srv.port)
        late.sendall(put_head("late", len(tar), "?unpack=true") + tar)
        time.sleep(0.5)
        late.close()  # the client gives up while its upload waits for a pool thread
        statuses = [read_response(sock)[0] for sock in stalled]
        assert statuses == [408] * 16
        time.sleep(2)
        assert all(not a.name.startswith(("stalled", "late")) for a in repo.artifacts())
        # published state unchanged; what the late upload stored is unreferenced (gc's)
        assert snapshot(repo)[:2] == before[:2]
        assert leftovers(repo) == []
        # the server still publishes a normal upload afterwards
        r = httpx.put(f"{srv.url}/repos/{FQRN}/after?unpack=true", content=tar, headers=auth(),
                      timeout=30)
        assert r.status_code == 200, r.text


def test_a_slow_but_steady_body_is_not_timed_out(tmp_path: Path) -> None:
    with live_server(settings(tmp_path, body_idle_timeout_s=1)) as srv:
        sock = connect(srv.port)
        sock.sendall(put_head("steady", 4000))
        for _ in range(8):  # 4 s in all, never 1 s without a byte
            time.sleep(0.5)
            sock.sendall(b"s" * 500)
        status, _h, body = read_response(sock)
        assert status == 200, body
        assert body["size"] == 4000


# --------------------------------------------------------------------------------------------
# directory downloads


def _publish_dir(url: str, name: str, files: dict[str, bytes]) -> None:
    tar = make_tar([(n, "file", data) for n, data in files.items()])
    r = httpx.put(f"{url}/repos/{FQRN}/{name}?unpack=true", content=tar, headers=auth(),
                  timeout=60)
    assert r.status_code == 200, r.text


def _start_download(port: int, name: str) -> socket.socket:
    """Start a directory download and read only its first bytes (the server then blocks on a
    full socket buffer: the download stays in flight)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET /repos/{FQRN}/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    return sock


def test_directory_downloads_are_limited_per_client_and_in_total(tmp_path: Path) -> None:
    big = {f"f{i}.bin": bytes([i]) * 4_000_000 for i in range(4)}  # 16 MB: fills any buffer
    with live_server(settings(tmp_path, max_downloads_per_client=1, max_downloads=1)) as srv:
        _publish_dir(srv.url, "big", big)
        _publish_dir(srv.url, "small", {"s.txt": b"small"})
        first = _start_download(srv.port, "big")
        r = httpx.get(f"{srv.url}/repos/{FQRN}/small", timeout=10)
        assert r.status_code == 429
        assert r.json() == {"detail": "too many directory downloads from 127.0.0.1 at once "
                                      "(limit 1); retry later"}
        assert r.headers["retry-after"] == "1"
        assert srv.app.state.uploads.downloads.running() == 1
        # a single file is not a directory download: still served
        _publish_file = httpx.put(f"{srv.url}/repos/{FQRN}/one.txt", content=b"1",
                                  headers=auth(), timeout=10)
        assert _publish_file.status_code == 200
        assert httpx.get(f"{srv.url}/repos/{FQRN}/one.txt", timeout=10).content == b"1"
        first.close()  # the client leaves mid-stream: its slot comes back
        deadline = time.monotonic() + 10
        while srv.app.state.uploads.downloads.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.get(f"{srv.url}/repos/{FQRN}/small", timeout=10)
        assert r.status_code == 200
        import io
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
            assert tar.extractfile("small/s.txt").read() == b"small"


def test_the_total_download_limit_answers_503(tmp_path: Path) -> None:
    big = {f"f{i}.bin": bytes([i]) * 4_000_000 for i in range(4)}
    with live_server(settings(tmp_path, max_downloads_per_client=5, max_downloads=1)) as srv:
        _publish_dir(srv.url, "big", big)
        _publish_dir(srv.url, "small", {"s.txt": b"small"})
        first = _start_download(srv.port, "big")
        r = httpx.get(f"{srv.url}/repos/{FQRN}/small", timeout=10)
        assert r.status_code == 503
        assert r.json()["detail"] == ("the server is busy with other directory downloads; "
                                      "retry later")
        first.close()


def test_a_large_directory_downloads_complete_and_in_order(tmp_path: Path) -> None:
    files = {f"d{i % 7}/f{i}.txt": str(i).encode() * (i % 50) for i in range(3000)}
    with live_server(settings(tmp_path)) as srv:
        _publish_dir(srv.url, "many", files)
        r = httpx.get(f"{srv.url}/repos/{FQRN}/many", timeout=60)
        assert r.status_code == 200
        import io
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
            members = tar.getmembers()
            got = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}
        assert got == {f"many/{k}": v for k, v in files.items()}
        names = [m.name for m in members]
        assert names == sorted(names)
        assert srv.app.state.uploads.downloads.running() == 0


def test_head_limits_cost_no_neighbour_its_answer(tmp_path: Path) -> None:
    """While clients keep sending oversized heads, a normal upload still publishes and the
    event loop stays responsive (the flood runs in this process too, sharing its GIL with
    the server thread: hence the generous bound; before, one 256 MiB head stalled it 14 s)."""
    with live_server(settings(tmp_path, max_header_bytes=4096)) as srv:
        stop = threading.Event()

        def flood() -> None:
            while not stop.is_set():
                try:
                    s = connect(srv.port)
                    s.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * 100_000)
                    s.close()
                except OSError:
                    pass

        threads = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            r = httpx.put(f"{srv.url}/repos/{FQRN}/neighbour", content=b"n" * 10_000,
                          headers=auth(), timeout=30)
            assert r.status_code == 200, r.text
            assert healthz_ms(srv.url) < 3000
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5)
