"""The object-writing helper processes die with the server, however it dies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.ingestkit import put_archive, server_process
from tests.uploadkit import auth, make_tar


def descendants(pid: int) -> set[int]:
    """Every process whose parent chain leads to ``pid`` (helpers are the fork server's
    children, the fork server and the resource tracker the server's)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes().rpartition(b")")[2].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"X"):
            out.add(pid)
    return out


def test_no_helper_outlives_a_killed_server(tmp_path):
    with server_process(tmp_path) as srv:
        with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as c:
            r = put_archive(c, "warm", make_tar([(f"f{i}", "file", b"%d" % i)
                                                 for i in range(600)]))
            assert r.status_code == 200, r.text
        helpers = descendants(srv.pid)
        assert len(helpers) >= 2, "the fork server and at least one helper run"
        os.kill(srv.pid, signal.SIGKILL)
        srv.proc.wait()
        deadline = time.monotonic() + 5
        while alive(helpers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = alive(helpers)
        for pid in left:  # leave nothing behind even when the test fails
            os.kill(pid, signal.SIGKILL)
        assert not left, f"orphaned helper processes: {sorted(left)}"
