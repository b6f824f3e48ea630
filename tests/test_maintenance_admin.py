"""Admin routes over real loopback HTTP, the CLI's ``--url`` mode, and both schedulers.

Artifacts are uploaded through the upload API with real TTLs of a second, so these tests run
the whole path: upload -> expiry -> sweep (route, embedded scheduler or remote scheduler) ->
the artifact is gone for clients.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from runtime.maintenance.joblock import job_lock
from tests.cvmfs_reader import RepoReader
from tests.live_server import LiveServer, live_server
from tests.uploadkit import FQRN, OTHER, SCOPED, TOKEN, auth, settings

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def srv(tmp_path):
    with live_server(settings(tmp_path, gc_grace_s=0)) as server:
        yield server


def put(srv: LiveServer, name: str, data: bytes, ttl_s: int | None = None) -> None:
    params = {"ttl_s": ttl_s} if ttl_s else None
    r = httpx.put(f"{srv.url}/repos/{FQRN}/{name}", params=params, content=data, headers=auth())
    assert r.status_code in (200, 201), r.text


def names(srv: LiveServer, fqrn: str = FQRN) -> list[str]:
    repo = srv.repositories[fqrn]
    with RepoReader(f"{srv.url}/cvmfs/{fqrn}", fqrn, (repo.keys_dir / f"{fqrn}.pub").read_bytes()
                    ) as reader:
        reader.check()
        return reader.listdir("")


def post(srv: LiveServer, path: str, token: str | None = TOKEN, **params) -> httpx.Response:
    return httpx.post(f"{srv.url}{path}", params=params or None,
                      headers=auth(token) if token else {}, timeout=60)


@pytest.mark.parametrize("path", ["/clean", "/gc", "/resign", "/housekeeping",
                                  f"/repos/{FQRN}/clean", f"/repos/{FQRN}/gc",
                                  f"/repos/{FQRN}/resign"])
def test_admin_routes_refuse_missing_and_wrong_tokens(srv, path):
    before = srv.repositories[FQRN].whitelist_path.read_bytes()
    missing = post(srv, path, token=None)
    assert missing.status_code == 401 and missing.json() == {"detail": "missing bearer token"}
    assert post(srv, path, token="not-a-token").status_code == 403
    # SCOPED is valid for OTHER only: neither for FQRN nor for the global routes
    assert post(srv, path, token=SCOPED).status_code == 403
    assert srv.repositories[FQRN].whitelist_path.read_bytes() == before


def test_a_scoped_token_runs_jobs_on_its_own_repository(srv):
    r = post(srv, f"/repos/{OTHER}/resign", token=SCOPED, force="true")
    assert r.status_code == 200 and r.json()["resigned"] is True
    assert post(srv, "/repos/nope.example.org/gc").status_code == 404


def test_clean_and_gc_routes_sweep_an_expired_upload_and_report_numbers(srv):
    put(srv, "short", b"lives one second", ttl_s=1)
    put(srv, "long", b"lives two hours")
    assert names(srv) == ["long", "short"]
    time.sleep(1.1)

    r = post(srv, f"/repos/{FQRN}/clean")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["removed"] == ["short"] and body["removed_count"] == 1 and body["new_revision"]
    assert names(srv) == ["long"]

    r = post(srv, "/gc")
    assert r.status_code == 200
    report = r.json()
    gc = report["repositories"][FQRN]
    assert report["errors"] == 0 and report["objects_deleted"] >= gc["objects_deleted"] >= 1
    assert gc["bytes_freed"] > 0 and gc["retained_revisions"] == 1
    assert names(srv) == ["long"]


def test_a_job_already_running_is_409_or_skipped(srv):
    with job_lock(srv.repositories[FQRN], "gc"):
        busy = post(srv, f"/repos/{FQRN}/gc")
        assert busy.status_code == 409 and "already running" in busy.json()["detail"]
        report = post(srv, "/gc").json()
        assert "skipped" in report["repositories"][FQRN] and report["errors"] == 0
        assert "objects_deleted" in report["repositories"][OTHER]


def test_housekeeping_and_resign_routes(srv):
    report = post(srv, "/housekeeping").json()
    assert report["errors"] == 0
    assert set(report) == {"clean", "gc", "resign", "errors"}
    assert set(report["gc"]["repositories"]) == {FQRN, OTHER}
    r = post(srv, "/resign", force="true").json()
    assert r["resigned"] == 2
    names(srv)  # the reader verifies the new whitelist
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert f'cvmfs_ephemeral_whitelist_seconds_to_expiry{{repository="{FQRN}"}}' in metrics


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_EPHEMERAL_")}
    full.update(env, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=REPO_ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def test_cli_with_url_calls_the_admin_routes(srv, tmp_path):
    ok = run_cli("gc", "--url", srv.url, env={"CVMFS_EPHEMERAL_TOKEN": TOKEN})
    assert ok.returncode == 0, ok.stderr
    assert set(json.loads(ok.stdout)["repositories"]) == {FQRN, OTHER}

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    one = run_cli("resign", FQRN, "--force", "--url", srv.url,
                  env={"CVMFS_EPHEMERAL_TOKEN_FILE": str(token_file)})
    assert one.returncode == 0 and json.loads(one.stdout)["resigned"] is True

    wrong = run_cli("clean", "--url", srv.url, env={"CVMFS_EPHEMERAL_TOKEN": "wrong"})
    assert wrong.returncode == 1 and "403 invalid token" in wrong.stderr
    assert "wrong" not in wrong.stderr.replace("403", "")  # the token is never echoed
    missing = run_cli("clean", "--url", srv.url, env={})
    assert missing.returncode == 2 and "no token" in missing.stderr


def test_cli_runs_jobs_locally_on_the_data_directory(srv):
    put(srv, "short", b"expires", ttl_s=1)
    time.sleep(1.1)
    env = {"CVMFS_EPHEMERAL_DATA_DIR": str(srv.settings.data_dir),
           "CVMFS_EPHEMERAL_KEYS_DIR": str(srv.settings.keys_dir)}
    done = run_cli("clean", FQRN, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed_count"] == 1
    assert names(srv) == []
    everything = run_cli("housekeeping", env=env)
    assert everything.returncode == 0, everything.stderr
    assert set(json.loads(everything.stdout)["gc"]["repositories"]) == {FQRN, OTHER}
    bad = run_cli("gc", "Not A Name", env=env)
    assert bad.returncode == 2 and "invalid repository name" in bad.stderr


def _wait_until_gone(srv: LiveServer, name: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while name in names(srv):
        assert time.monotonic() < deadline, f"{name} was not swept in {timeout} s"
        time.sleep(0.1)


def test_the_embedded_scheduler_sweeps_expired_uploads(tmp_path):
    conf = settings(tmp_path, scheduler=True, clean_interval_s=1, gc_interval_s=0,
                    resign_interval_s=0)
    with live_server(conf) as srv:
        put(srv, "short", b"one second", ttl_s=1)
        put(srv, "long", b"two hours")
        _wait_until_gone(srv, "short")
        assert names(srv) == ["long"]
        clean_job = srv.app.state.scheduler.job("clean")
        assert clean_job.runs >= 1 and clean_job.failures == 0


def test_no_scheduler_when_disabled(srv):
    assert not hasattr(srv.app.state, "scheduler")


def test_the_remote_scheduler_drives_an_upload_service(srv):
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "schedule", "--url", srv.url], cwd=REPO_ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CVMFS_EPHEMERAL_")},
             "PYTHONPATH": str(REPO_ROOT), "CVMFS_EPHEMERAL_TOKEN": TOKEN,
             "CVMFS_EPHEMERAL_CLEAN_INTERVAL_S": "1", "CVMFS_EPHEMERAL_GC_INTERVAL_S": "1",
             "CVMFS_EPHEMERAL_RESIGN_INTERVAL_S": "3600"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        put(srv, "short", b"one second", ttl_s=1)
        _wait_until_gone(srv, "short")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "failed" not in err, err
