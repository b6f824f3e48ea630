"""What an operator sees: ``serve`` run as a process with ``CVMFS_EPHEMERAL_LOG_FORMAT=json``,
its stderr parsed line by line. Every line is JSON with time, level, logger, message and a
request id; an upload, a delete, a TTL change, a maintenance run and a refused request are one
line each, with the token's label and never the token, and paths without their query."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.uploadkit import FQRN, TOKEN, auth, shared_keys
from tests.serverproc import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET_QUERY = "s3cr3t-in-query"


class Serve:
    """``python -m runtime serve`` in a subprocess; its stderr collected in a file."""

    def __init__(self, tmp: Path, preexec=None, role: str = "all",  # type: ignore[no-untyped-def]
                 **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "serve.log"
        full = {**os.environ, "CVMFS_EPHEMERAL_DATA_DIR": str(tmp / "data"),
                "CVMFS_EPHEMERAL_KEYS_DIR": str(shared_keys(tmp / "keys")),
                "CVMFS_EPHEMERAL_REPOSITORIES": FQRN,
                "CVMFS_EPHEMERAL_TOKENS": TOKEN, "CVMFS_EPHEMERAL_SCHEDULER": "false",
                "CVMFS_EPHEMERAL_LOG_FORMAT": "json", **env}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--port", str(self.port),
             "--role", role],
            cwd=REPO_ROOT, env=full, stdout=subprocess.DEVNULL, stderr=self.log,
            preexec_fn=preexec)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log_path.read_text())
            time.sleep(0.1)

    def lines(self) -> list[dict]:
        time.sleep(0.2)
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    srv = Serve(tmp_path, CVMFS_EPHEMERAL_LOG_LEVEL="info")
    try:
        yield srv
    finally:
        srv.stop()


def events(lines: list[dict], logger: str) -> list[dict]:
    return [line for line in lines if line["logger"] == logger]


def test_every_line_is_json_with_time_level_logger_and_request_id(serve: Serve) -> None:
    httpx.get(f"{serve.url}/repos/{FQRN}", timeout=10)
    lines = serve.lines()
    assert lines, "the server logged nothing"
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= line.keys()
        assert line["time"].endswith("Z")
    # uvicorn's own lines go through the same setup
    assert any(line["logger"].startswith("uvicorn") for line in lines)


def test_one_upload_is_one_event_line_and_one_access_line(serve: Serve) -> None:
    r = httpx.put(f"{serve.url}/repos/{FQRN}/build.log?ttl_s=3600&note={SECRET_QUERY}",
                  content=b"x" * 1234, headers={**auth(), "X-Request-ID": "ci-job-4711"},
                  timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "ci-job-4711"
    lines = serve.lines()
    mine = [line for line in lines if line["request_id"] == "ci-job-4711"]
    upload = [line for line in mine if line["logger"] == "runtime.server.uploads"]
    assert len(upload) == 1
    ev = upload[0]
    assert ev["level"] == "info"
    assert ev["repository"] == FQRN and ev["name"] == "build.log"
    assert ev["size"] == 1234 and ev["revision"] == r.json()["revision"]
    assert ev["outcome"] == "published" and ev["status"] == 200
    assert ev["token"] == "env-1" and ev["duration_s"] >= 0
    access = [line for line in mine if line["logger"] == "runtime.access"]
    assert len(access) == 1
    assert access[0]["path"] == f"/repos/{FQRN}/build.log"
    assert access[0]["status"] == 200 and access[0]["method"] == "PUT"
    text = serve.log_path.read_text()
    assert TOKEN not in text
    assert SECRET_QUERY not in text


def test_an_insane_request_id_is_replaced(serve: Serve) -> None:
    r = httpx.get(f"{serve.url}/repos/{FQRN}", headers={"X-Request-ID": "a b<script>" * 3},
                  timeout=10)
    rid = r.headers["x-request-id"]
    assert rid != "a b<script>" * 3 and len(rid) == 32
    assert any(line["request_id"] == rid for line in serve.lines())


def test_refused_requests_are_one_warning_with_status_and_reason(serve: Serve) -> None:
    r = httpx.put(f"{serve.url}/repos/{FQRN}/x", content=b"1",
                  headers={"Authorization": "Bearer not-the-token", "X-Request-ID": "r-403"},
                  timeout=10)
    assert r.status_code == 403
    r2 = httpx.put(f"{serve.url}/repos/{FQRN}/.cvmfs-reserved", content=b"1",
                   headers={**auth(), "X-Request-ID": "r-400"}, timeout=10)
    assert r2.status_code == 400
    r3 = httpx.delete(f"{serve.url}/repos/{FQRN}/never-uploaded",
                      headers={**auth(), "X-Request-ID": "r-404"}, timeout=10)
    assert r3.status_code == 404
    r4 = httpx.get(f"{serve.url}/repos/{FQRN}/never-uploaded",
                   headers={"X-Request-ID": "r-get-404"}, timeout=10)
    assert r4.status_code == 404
    lines = serve.lines()
    by_request = {rid: [line for line in lines if line["request_id"] == rid]
                  for rid in ("r-403", "r-400", "r-404", "r-get-404")}
    warnings = {rid: [(line["logger"], line["status"], line["reason"])
                      for line in mine if line["level"] == "warning"]
                for rid, mine in by_request.items()}
    uploads, access = "runtime.server.uploads", "runtime.access"
    assert warnings == {
        # a refusal that a route reports in its own event line (with the token's label)
        "r-403": [(uploads, 403, "invalid token")],
        "r-400": [(uploads, 400, r2.json()["detail"])],
        "r-404": [(uploads, 404, r3.json()["detail"])],
        # a download has no event line of its own: the access line is the warning
        "r-get-404": [(access, 404, r4.json()["detail"])],
    }
    ups = events(lines, "runtime.server.uploads")
    assert [(u["outcome"], u["status"], u["token"]) for u in ups] == [
        ("refused", 403, None), ("refused", 400, "env-1"), ("refused", 404, "env-1")]
    # the access log still has its one line per request, with status and reason, at info
    for rid in ("r-403", "r-400", "r-404"):
        lines_of = [line for line in by_request[rid] if line["logger"] == access]
        assert [(line["level"], line["method"]) for line in lines_of] in (
            [("info", "PUT")], [("info", "DELETE")]), rid
        assert lines_of[0]["reason"] and lines_of[0]["message"].startswith("refused ")
    assert "not-the-token" not in serve.log_path.read_text()


def test_delete_ttl_and_maintenance_runs_are_one_line_each(serve: Serve) -> None:
    assert httpx.put(f"{serve.url}/repos/{FQRN}/a", content=b"a", headers=auth(),
                     timeout=10).status_code == 200
    r = httpx.post(f"{serve.url}/repos/{FQRN}/a/ttl?ttl_s=600", headers=auth(), timeout=10)
    assert r.status_code == 200
    r = httpx.delete(f"{serve.url}/repos/{FQRN}/a", headers=auth(), timeout=10)
    assert r.status_code == 200
    revision = r.json()["revision"]
    r = httpx.post(f"{serve.url}/repos/{FQRN}/gc", headers=auth(), timeout=60)
    assert r.status_code == 200
    lines = serve.lines()
    changes = events(lines, "runtime.server.uploads")
    ttl = [c for c in changes if c["message"].startswith("ttl ")]
    delete = [c for c in changes if c["message"].startswith("delete ")]
    assert len(ttl) == 1 and ttl[0]["ttl_s"] == 600 and ttl[0]["outcome"] == "done"
    assert ttl[0]["token"] == "env-1" and ttl[0]["name"] == "a"
    assert len(delete) == 1 and delete[0]["revision"] == revision
    runs = events(lines, "runtime.maintenance.housekeeping")
    assert len(runs) == 1
    assert runs[0]["job"] == "gc" and runs[0]["repository"] == FQRN
    assert runs[0]["outcome"] == "done" and "duration_s" in runs[0]
    assert runs[0]["objects_deleted"] == r.json()["objects_deleted"]
    # the job ran on a worker thread and its line still carries the admin request's id
    assert runs[0]["request_id"] == r.headers["x-request-id"]


def test_the_gateway_role_logs_through_the_same_setup(tmp_path: Path) -> None:
    srv = Serve(tmp_path, role="gateway", CVMFS_EPHEMERAL_LOG_LEVEL="debug")
    try:
        r = httpx.post(f"{srv.url}/api/v1/notifications/publish", content=b"{not json",
                       timeout=10)
        assert 400 <= r.status_code < 500
        lines = srv.lines()  # every line parses as JSON: nothing bypasses the setup
    finally:
        srv.stop()
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    refused = [line for line in lines if line["logger"] == "runtime.access"
               and line.get("path") == "/api/v1/notifications/publish"]
    assert len(refused) == 1 and refused[0]["status"] == r.status_code
    assert refused[0]["request_id"] == r.headers["x-request-id"]


def test_debug_level_shows_what_info_hides(tmp_path: Path) -> None:
    for level, expect in (("info", False), ("debug", True)):
        srv = Serve(tmp_path / level, CVMFS_EPHEMERAL_LOG_LEVEL=level)
        try:
            httpx.get(f"{srv.url}/healthz", timeout=5)
            lines = srv.lines()
        finally:
            srv.stop()
        health = [line for line in lines if line.get("path") == "/healthz"]
        assert bool(health) is expect, (level, health)
        if expect:
            assert all(line["level"] == "debug" for line in health)


def test_human_format_is_the_default(tmp_path: Path) -> None:
    srv = Serve(tmp_path, CVMFS_EPHEMERAL_LOG_FORMAT="human")
    try:
        httpx.put(f"{srv.url}/repos/{FQRN}/h.txt", content=b"h", headers=auth(), timeout=10)
        text = srv.log_path.read_text()
    finally:
        srv.stop()
    line = next(t for t in text.splitlines() if "upload ci.example.org/h.txt" in t)
    assert " INFO " in line and "runtime.server.uploads" in line
    assert "outcome=published" in line and "token=env-1" in line
    assert line[:4].isdigit()  # starts with the time


def test_an_unknown_log_level_is_refused_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "CVMFS_EPHEMERAL_LOG_LEVEL": "chatty",
           "CVMFS_EPHEMERAL_DATA_DIR": str(tmp_path / "d"),
           "CVMFS_EPHEMERAL_KEYS_DIR": str(tmp_path / "k")}
    proc = subprocess.run([sys.executable, "-m", "runtime", "serve", "--port", "1"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "CVMFS_EPHEMERAL_LOG_LEVEL" in proc.stderr and "chatty" in proc.stderr


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, 400))


def test_the_fd_limit_is_raised_and_uploads_at_it_never_get_500(tmp_path: Path) -> None:
    srv = Serve(tmp_path, preexec=_low_nofile, CVMFS_EPHEMERAL_HEADER_TIMEOUT_S="5")
    try:
        limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == ["400", "400"]  # soft raised to the hard limit
        # exhaust the descriptors with idle connections, then upload meanwhile
        held = []
        for _ in range(450):
            try:
                held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=2))
            except OSError:
                break
        statuses = []
        for i in range(10):
            try:
                r = httpx.put(f"{srv.url}/repos/{FQRN}/fd-{i}", content=b"f" * 10_000,
                              headers=auth(), timeout=15)
                statuses.append(r.status_code)
            except httpx.HTTPError:
                statuses.append(0)  # not accepted at all: the client retries
        for s in held:
            s.close()
        assert 500 not in statuses, statuses
        assert set(statuses) <= {0, 200, 503}, statuses
        time.sleep(1)
        r = httpx.put(f"{srv.url}/repos/{FQRN}/after", content=b"a", headers=auth(), timeout=15)
        assert r.status_code == 200
        listing = httpx.get(f"{srv.url}/repos/{FQRN}", timeout=10).json()
        published = {f["name"] for f in listing["files"]}
        for i, status in enumerate(statuses):
            assert (f"fd-{i}" in published) == (status == 200)
        warned = [line for line in srv.lines() if "CVMFS_EPHEMERAL_MAX_CONNECTIONS lowered"
                  in line["message"]]
        assert warned
    finally:
        srv.stop()
