"""The CI client (``python -m runtime upload``) against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runtime.__main__ import app
from runtime.client.upload import UploadFailed, upload
from tests.cvmfs_reader import RepoReader, compare_with_directory
from tests.live_server import LiveServer, free_socket, live_server
from tests.uploadkit import FQRN, TOKEN, settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def srv(tmp_path):
    with live_server(settings(tmp_path / "srv")) as server:
        yield server


def run_cli(*args: str, token: str | None = TOKEN):  # type: ignore[no-untyped-def]
    env = {"CVMFS_EPHEMERAL_TOKEN": token} if token is not None else {}
    return CliRunner().invoke(app, ["upload", *args], env=env)


def test_file_upload_prints_path_and_expiry(srv, tmp_path):
    f = tmp_path / "build.log"
    f.write_bytes(b"log line\n" * 1000)
    res = run_cli(str(f), "--url", srv.url, "--repo", FQRN, "--ttl-s", "300")
    assert res.exit_code == 0, res.output
    art = srv.repositories[FQRN].artifact("build.log")
    assert f"/cvmfs/{FQRN}/build.log" in res.stdout and "expires 20" in res.stdout
    assert art.size == 9000 and 0 < art.expires_at - time.time() <= 300


def test_directory_is_sent_as_tar_and_json_output(srv, tmp_path):
    d = tmp_path / "dist"
    (d / "lib").mkdir(parents=True)
    (d / "lib" / "a.so").write_bytes(os.urandom(150_000))
    (d / "README").write_text("read me\n")
    (d / "run.sh").write_text("#!/bin/sh\n")
    (d / "run.sh").chmod(0o755)
    os.symlink("lib/a.so", d / "liba.so")
    res = run_cli(str(d), "--url", srv.url, "--repo", FQRN, "--name", "dist-42", "--json",
                  "--wait-visible")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["name"] == "dist-42" and out["files"] == 3
    pub = (srv.settings.keys_dir / f"{FQRN}.pub").read_bytes()
    with RepoReader(f"{srv.url}/cvmfs/{FQRN}", FQRN, pub) as reader:
        assert reader.revision >= out["revision"]
        assert compare_with_directory(reader, d, "/dist-42") == []


def test_refusal_is_final_and_exits_nonzero(srv, tmp_path):
    f = tmp_path / "once"
    f.write_bytes(b"1")
    assert run_cli(str(f), "--url", srv.url, "--repo", FQRN).exit_code == 0
    res = run_cli(str(f), "--url", srv.url, "--repo", FQRN)
    assert res.exit_code == 1 and "409" in res.stderr and "already exists" in res.stderr
    assert "retrying" not in res.stderr
    res = run_cli(str(f), "--url", srv.url, "--repo", FQRN, "--overwrite", token=None)
    assert res.exit_code == 1 and "401" in res.stderr


def test_missing_source_is_a_usage_error(srv, tmp_path):
    res = run_cli(str(tmp_path / "absent"), "--url", srv.url, "--repo", FQRN)
    assert res.exit_code == 2 and "no such file" in res.stderr


def test_connection_errors_are_retried_until_the_server_is_up(tmp_path):
    f = tmp_path / "late"
    f.write_bytes(b"late upload")
    reserved = free_socket()
    port = reserved.getsockname()[1]
    reserved.close()
    server = LiveServer(settings(tmp_path / "srv"), port=port)
    starter = threading.Timer(0.8, server.start)
    starter.start()
    notes: list[str] = []
    try:
        out = upload(f, url=f"http://127.0.0.1:{port}", repo=FQRN, token=TOKEN, retries=6,
                     backoff_s=0.3, log=notes.append)
        assert out["name"] == "late" and notes and "connection failed" in notes[0]
    finally:
        starter.join()
        server.stop()


def test_gives_up_after_the_retries(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"x")
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(UploadFailed, match="giving up after 2 attempts"):
        upload(f, url=f"http://127.0.0.1:{port}", repo=FQRN, token=TOKEN, retries=1,
               backoff_s=0.05)


def test_console_entry_point_runs(srv, tmp_path):
    """``python -m runtime upload`` as a CI job runs it (new process, token from env)."""
    f = tmp_path / "artifact.bin"
    f.write_bytes(b"\0" * 70000)
    env = {**os.environ, "CVMFS_EPHEMERAL_TOKEN": TOKEN}
    proc = subprocess.run([sys.executable, "-m", "runtime", "upload", str(f), "--url", srv.url,
                           "--repo", FQRN], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"/cvmfs/{FQRN}/artifact.bin")
    assert TOKEN not in proc.stdout + proc.stderr


def test_client_sends_the_content_digest_by_default(srv, tmp_path):
    import hashlib

    f = tmp_path / "digest.bin"
    f.write_bytes(os.urandom(300_000))
    out = upload(f, url=srv.url, repo=FQRN, token=TOKEN, retries=0)
    assert out["digest_verified"] is True
    assert out["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    res = run_cli(str(f), "--url", srv.url, "--repo", FQRN, "--name", "nodigest.bin",
                  "--no-digest", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["digest_verified"] is False


def test_client_expire_in(srv, tmp_path):
    f = tmp_path / "e.txt"
    f.write_text("e")
    res = run_cli(str(f), "--url", srv.url, "--repo", FQRN, "--expire-in", "3 days", "--json")
    assert res.exit_code == 0, res.output
    art = srv.repositories[FQRN].artifact("e.txt")
    assert abs(art.expires_at - time.time() - 3 * 86400) < 60
    bad = run_cli(str(f), "--url", srv.url, "--repo", FQRN, "--name", "b.txt",
                  "--expire-in", "soon")
    assert bad.exit_code != 0 and "not a duration" in bad.output
