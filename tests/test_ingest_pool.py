"""The unpack pool is shared fairly, and the event loop never waits on parsing.

Against the real server over loopback: stalled archive uploads (bodies that stop sending) to
one repository cannot keep an archive upload to another repository from completing; a token's
stalled uploads take only its share of its repository, leaving room for other tokens; and
``/healthz`` answers quickly while a large archive is parsed.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.ingestkit import empty_files_tar, published, put_archive
from tests.live_server import live_server
from tests.uploadkit import FQRN, OTHER, SCOPED, TOKEN, auth, make_tar, settings


@pytest.fixture
def srv(tmp_path):
    with live_server(settings(tmp_path)) as server:
        yield server


def stall(url: str, fqrn: str, name: str) -> socket.socket:
    """Start an archive upload that sends its headers and one tar block, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"PUT /repos/{fqrn}/{name}?unpack=true HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100000000\r\n\r\n")
    sock.sendall(head.encode() + make_tar([("first.txt", "file", b"x" * 100000)])[:4096])
    return sock


def wait_for(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_stalled_uploads_to_one_repository_do_not_starve_another(srv):
    pool = srv.app.state.uploads.unpack_pool
    assert pool.workers == 16 and pool.per_tenant == 4
    stalled = [stall(srv.url, FQRN, f"stalled{i}") for i in range(16)]
    try:
        # 4 of them hold a parser (A's share); the others wait without holding a thread
        assert wait_for(lambda: pool.snapshot() == {"running": 4, "waiting": 12}), pool.snapshot()
        other = srv.repositories[OTHER]
        with httpx.Client(base_url=srv.url, headers=auth(SCOPED), timeout=30) as c:
            started = time.perf_counter()
            r = put_archive(c, "normal", make_tar([(f"f{i}", "file", b"%d" % i)
                                                   for i in range(200)]), fqrn=OTHER)
            elapsed = time.perf_counter() - started
        assert r.status_code == 200, r.text
        assert elapsed < 10, f"the other repository's upload took {elapsed:.1f} s"
        assert [a.name for a in other.artifacts()] == ["normal"]
        # and the stalled ones published nothing
        assert srv.repositories[FQRN].artifacts() == []
    finally:
        for sock in stalled:
            sock.close()
    # the slots come back once the stalled clients are gone
    assert wait_for(lambda: pool.snapshot() == {"running": 0, "waiting": 0}), pool.snapshot()
    assert wait_for(lambda: published(srv.repositories[FQRN])[1:] == ([], []))


SECOND = "second-team-token-7890"


def stall_as(url: str, fqrn: str, name: str, token: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"PUT /repos/{fqrn}/{name}?unpack=true HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: 100000000\r\n\r\n")
    sock.sendall(head.encode() + make_tar([("first.txt", "file", b"x" * 100000)])[:4096])
    return sock


def test_a_stalling_token_waits_for_its_share_while_other_tokens_and_repositories_go_on(
        tmp_path):
    """A token is a tenant within its repository: its 4 stalled parsers are its share there, so
    its 5th upload queues (holding no thread), while another token's upload to the same
    repository, and the same token's upload to another repository, complete at once."""
    tokens = f"{TOKEN},{SECOND},{SCOPED}:{OTHER}"
    with live_server(settings(tmp_path, tokens=tokens)) as srv:
        pool = srv.app.state.uploads.unpack_pool
        stalled = [stall_as(srv.url, FQRN, f"stalled{i}", TOKEN) for i in range(5)]
        try:
            assert wait_for(lambda: pool.snapshot() == {"running": 4, "waiting": 1}), \
                pool.snapshot()
            tar = make_tar([(f"f{i}", "file", b"%d" % i) for i in range(50)])
            for token, fqrn, name in [(SECOND, FQRN, "other-team"), (TOKEN, OTHER, "same-token")]:
                with httpx.Client(base_url=srv.url, headers=auth(token), timeout=30) as c:
                    started = time.perf_counter()
                    r = put_archive(c, name, tar, fqrn=fqrn)
                    assert r.status_code == 200, r.text
                    assert time.perf_counter() - started < 10
            assert pool.snapshot() == {"running": 4, "waiting": 1}
        finally:
            for sock in stalled:
                sock.close()
        assert wait_for(lambda: pool.snapshot() == {"running": 0, "waiting": 0}), pool.snapshot()


def test_healthz_answers_within_a_second_during_a_large_unpack(srv):
    """100,000 empty files (50 MB of tar headers) keep the parser busy for many seconds;
    every /healthz meanwhile answers within 1 s (bench/abuse.py does 1M entries)."""
    latencies: list[float] = []
    done = threading.Event()
    result: list[httpx.Response] = []

    def upload() -> None:
        with httpx.Client(base_url=srv.url, headers=auth(), timeout=600) as c:
            result.append(c.put(f"/repos/{FQRN}/many", params={"unpack": "true"},
                                content=empty_files_tar(100_000)))
        done.set()

    worker = threading.Thread(target=upload)
    worker.start()
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        while not done.is_set():
            started = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
    worker.join()
    assert result[0].status_code == 200, result[0].text
    assert result[0].json()["files"] == 100_000
    assert len(latencies) > 10
    assert max(latencies) < 1.0, f"worst /healthz {max(latencies):.2f} s"


def test_slots_are_shared_per_repository_and_per_token():
    """The pool's admission itself: a tenant key (a token) shared by uploads to several
    repositories is capped too, and freed slots go round-robin to the tenants waiting."""
    import asyncio

    from runtime.ingest import UnpackPool

    async def scenario() -> list[str]:
        pool = UnpackPool(workers=4, per_tenant=2)
        order: list[str] = []
        release = asyncio.Event()

        async def job(label: str, keys: tuple) -> None:
            async with pool.slot(keys):
                order.append(label)
                await release.wait()

        tasks = [asyncio.create_task(job(f"t1-{repo}{i}", (("repository", repo), ("tenant", "t1"))))
                 for i in range(2) for repo in "AB"]
        await asyncio.sleep(0.05)
        assert pool.snapshot() == {"running": 2, "waiting": 2}  # t1 holds its 2, wherever
        tasks.append(asyncio.create_task(job("t2-A", (("repository", "A"), ("tenant", "t2")))))
        tasks.append(asyncio.create_task(job("t3-C", (("repository", "C"), ("tenant", "t3")))))
        await asyncio.sleep(0.05)
        # repository A is at 1 (t1's), so t2 may use it; t3 has its own repository
        assert pool.snapshot() == {"running": 4, "waiting": 2}
        release.set()
        await asyncio.gather(*tasks)
        assert pool.snapshot() == {"running": 0, "waiting": 0}
        pool.shutdown()
        return order

    order = asyncio.run(scenario())
    assert order[:2] == ["t1-A0", "t1-B0"] and set(order[2:4]) == {"t2-A", "t3-C"}
    assert sorted(order[4:]) == ["t1-A1", "t1-B1"]
