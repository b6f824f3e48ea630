"""The command line explains itself: help pages, flags, configuration and messages a user reads.

Help is checked through click's own rendering of every command (no placeholder, every option
described with its default); messages by running the commands, in process with typer's
CliRunner or, for ``serve``, as a real subprocess against real sockets.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from runtime.__main__ import app
from runtime.version import __version__
from tests.live_server import live_server
from tests.uploadkit import FQRN, TOKEN, settings

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
PLACEHOLDER = re.compile(r"\{|<(str|bool|int|path|float)>")


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    clean = {k: None for k in os.environ if k.startswith("CVMFS_EPHEMERAL_")}
    return CliRunner().invoke(app, list(args), env={**clean, **(env or {})})


def test_every_command_is_listed() -> None:
    assert set(COMMANDS) >= {"init", "publish", "info", "verify", "serve", "config", "upload",
                             "clean", "gc", "resign", "housekeeping", "schedule"}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_placeholders(command: str) -> None:
    res = invoke(command, "--help")
    assert res.exit_code == 0, res.output
    assert not PLACEHOLDER.search(res.stdout), res.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_described_with_its_default(command: str) -> None:
    group = typer.main.get_command(app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    ctx = cmd.make_context(command, ["--help"], resilient_parsing=True)
    for param in cmd.params:
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        record = param.get_help_record(ctx)
        assert record is not None and record[1].strip(), f"{command} {param.name}: no help"
        help_text = record[1]
        flag = getattr(param, "is_flag", False)
        if not flag:
            assert "default:" in help_text or "required" in help_text, \
                f"{command} {param.name}: no default shown: {help_text!r}"


def test_version() -> None:
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout == f"cvmfs-ephemeral {__version__}\n"


def test_names_are_consistent_and_old_names_are_hidden_aliases() -> None:
    publish = invoke("publish", "--help").stdout
    assert "--name NAME" in publish and "--as" not in publish
    init = invoke("init", "--help").stdout
    assert "--catalog-ttl-s SECONDS" in init and "--ttl " not in init
    assert "artifact" in init  # the help says it is not the artifact lifetime
    assert "Artifact lifetime" in publish and "Artifact lifetime" in invoke("upload", "--help").stdout


def test_old_flag_names_still_work(tmp_path: Path) -> None:
    env = {"CVMFS_EPHEMERAL_DATA_DIR": str(tmp_path / "d"),
           "CVMFS_EPHEMERAL_KEYS_DIR": str(tmp_path / "k")}
    res = invoke("init", "old.example.org", "--ttl", "45", env=env)
    assert res.exit_code == 0, res.output
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    res = invoke("publish", "old.example.org", str(src), "--as", "legacy", env=env)
    assert res.exit_code == 0 and "published legacy" in res.stdout, res.output
    res = invoke("publish", "old.example.org", str(src), env=env)
    assert res.exit_code == 2 and "missing option --name" in res.stderr
    info = json.loads(invoke("info", "old.example.org", "--json", env=env).stdout)
    assert info["artifacts"] == 1


@pytest.mark.parametrize("command", [["upload", "x"], ["gc"], ["clean"],
                                     ["verify", "--fqrn", FQRN, "--public-key", "k.pub"]])
def test_url_without_scheme_fails_at_once_with_a_hint(command: list[str]) -> None:
    start = time.monotonic()
    extra = ["--repo", FQRN] if command[0] == "upload" else []
    res = invoke(*command, "--url", "localhost:8080", *extra, env={"CVMFS_EPHEMERAL_TOKEN": "t"})
    assert time.monotonic() - start < 5
    assert res.exit_code == 2
    assert "is not an http(s) URL; did you mean http://localhost:8080?" in res.stderr


def test_url_into_the_served_tree_gets_a_hint() -> None:
    res = invoke("upload", "x", "--url", "http://host:8000/cvmfs/ci.example.org", "--repo", FQRN)
    assert res.exit_code == 2
    assert "points at the served repository tree" in res.stderr
    assert "http://host:8000" in res.stderr


class _NginxLike405(http.server.BaseHTTPRequestHandler):
    """What a stratum-0 nginx answers to an upload: a bare HTML 405."""

    def do_POST(self) -> None:  # noqa: N802
        self.do_PUT()

    def do_PUT(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        body = b"<html><head><title>405 Not Allowed</title></head></html>"
        self.send_response(405)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_405_is_explained(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NginxLike405)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        f = tmp_path / "a.txt"
        f.write_text("a")
        res = invoke("upload", str(f), "--url", f"http://127.0.0.1:{server.server_port}",
                     "--repo", FQRN, "--retries", "0", env={"CVMFS_EPHEMERAL_TOKEN": TOKEN})
    finally:
        server.shutdown()
    assert res.exit_code == 1
    assert "405" in res.stderr and "is --url the upload service's base URL" in res.stderr


def test_a_405_from_a_maintenance_call_is_explained() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NginxLike405)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        res = invoke("gc", "--url", f"http://127.0.0.1:{server.server_port}",
                     env={"CVMFS_EPHEMERAL_TOKEN": TOKEN})
    finally:
        server.shutdown()
    assert res.exit_code == 1
    assert "405" in res.stderr and "is --url the upload service's base URL" in res.stderr


def test_a_409_says_to_pass_overwrite(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("a")
    with live_server(settings(tmp_path / "srv")) as srv:
        args = ["upload", str(f), "--url", srv.url, "--repo", FQRN]
        assert invoke(*args, env={"CVMFS_EPHEMERAL_TOKEN": TOKEN}).exit_code == 0
        res = invoke(*args, env={"CVMFS_EPHEMERAL_TOKEN": TOKEN})
        assert res.exit_code == 1 and "409" in res.stderr
        refused = httpx.put(f"{srv.url}/repos/{FQRN}/a.txt", content=b"a",
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 409 and refused.content.endswith(b"}\n")
        assert "--overwrite" in res.stderr and "overwrite=true" not in res.stderr
        res = invoke(*args, "--json", "--overwrite", env={"CVMFS_EPHEMERAL_TOKEN": TOKEN})
        assert res.exit_code == 0 and res.stdout.endswith("}\n")
        assert json.loads(res.stdout)["refreshed"] is True


def test_health_and_metrics_report_the_version(tmp_path: Path) -> None:
    with live_server(settings(tmp_path / "srv")) as srv:
        health = httpx.get(f"{srv.url}/healthz")
        metrics = httpx.get(f"{srv.url}/metrics").text
    assert health.json()["version"] == __version__
    assert health.content.endswith(b"}\n")  # curl users get their prompt on a line of its own
    assert f'cvmfs_ephemeral_build_info{{version="{__version__}"}} 1.0' in metrics


# --- configuration -------------------------------------------------------------------------

def test_config_prints_the_effective_configuration_with_secrets_masked() -> None:
    res = invoke("config", env={"CVMFS_EPHEMERAL_REPOSITORIES": "ci.example.org",
                                "CVMFS_EPHEMERAL_TOKENS": "s3cret-token-1,s3cret-token-2:ci.example.org",
                                "CVMFS_EPHEMERAL_TOKEN": "client-s3cret", "CVMFS_EPHEMERAL_PORT": "9090"})
    assert res.exit_code == 0, res.output
    assert "s3cret" not in res.stdout
    lines = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert lines["CVMFS_EPHEMERAL_TOKENS"] == "***,***:ci.example.org"
    assert lines["CVMFS_EPHEMERAL_TOKEN"] == "***"
    assert lines["CVMFS_EPHEMERAL_PORT"] == "9090"
    assert lines["CVMFS_EPHEMERAL_DATA_DIR"] == "var/data"
    assert json.loads(lines["CVMFS_EPHEMERAL_REPOSITORIES"])[0]["fqrn"] == "ci.example.org"
    as_json = json.loads(invoke("config", "--json").stdout)
    assert as_json["CVMFS_EPHEMERAL_ROLE"] == "all"


@pytest.mark.parametrize("env, message", [
    ({"CVMFS_EPHEMERAL_PORT": "http"}, "CVMFS_EPHEMERAL_PORT: Input should be a valid integer"),
    ({"CVMFS_EPHEMERAL_ROLE": "writer"}, "CVMFS_EPHEMERAL_ROLE: Input should be 'all'"),
    ({"CVMFS_EPHEMERAL_REPOSITORIES": '[{"fqrn": "ci.example.org", "ttl_s": 0}]'},
     "CVMFS_EPHEMERAL_REPOSITORIES: [0] ttl_s: Input should be greater than or equal to 1"),
    ({"CVMFS_EPHEMERAL_REPOSITORIES": "ci.example.org,nodot"},
     "CVMFS_EPHEMERAL_REPOSITORIES: [1] fqrn: invalid repository name 'nodot'"),
])
def test_settings_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    res = invoke("config", env=env)
    assert res.exit_code == 2
    assert res.stderr.startswith(f"error: {message}"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def _serve(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_EPHEMERAL_")}
    base.update({"CVMFS_EPHEMERAL_DATA_DIR": str(tmp_path / "data"),
                 "CVMFS_EPHEMERAL_KEYS_DIR": str(tmp_path / "keys"),
                 "CVMFS_EPHEMERAL_SCHEDULER": "false", **env})
    return subprocess.Popen([sys.executable, "-m", "runtime", "serve", *args], cwd=ROOT,
                            env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_refuses_to_start_without_a_repository(tmp_path: Path) -> None:
    proc = _serve(tmp_path, env={})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err == ("error: no repository configured: set CVMFS_EPHEMERAL_REPOSITORIES, e.g. "
                   "CVMFS_EPHEMERAL_REPOSITORIES=ci.example.org\n")
    assert out == "" and not (tmp_path / "data").exists()


def test_serve_on_a_port_in_use_fails_before_the_banner(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _serve(tmp_path, "--port", str(port),
                      env={"CVMFS_EPHEMERAL_REPOSITORIES": FQRN, "CVMFS_EPHEMERAL_TOKENS": TOKEN})
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert len(err.strip().splitlines()) == 1
    assert out == "" and "startup complete" not in err
    assert not (tmp_path / "data").exists()  # nothing was created for a server that never ran


def test_serve_warns_when_writes_have_no_token(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _serve(tmp_path, "--port", str(port), env={"CVMFS_EPHEMERAL_REPOSITORIES": FQRN})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert "no upload token configured (CVMFS_EPHEMERAL_TOKENS or CVMFS_EPHEMERAL_TOKENS_FILE)" \
        in err
    assert f"/cvmfs/{FQRN}" in out or FQRN in out  # the mount recipe came after the bind


# --- start-up: each command imports only what it needs (figures: bench/cli_startup.py) --------

def _imported(*args: str, tmp_path: Path) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_EPHEMERAL_")}
    env.update({"CVMFS_EPHEMERAL_DATA_DIR": str(tmp_path / "d"),
                "CVMFS_EPHEMERAL_KEYS_DIR": str(tmp_path / "k")})
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "runtime", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:")}


@pytest.mark.parametrize("args, absent", [
    (["upload", "--help"], {"httpx", "pydantic_settings", "fastapi", "uvicorn", "cryptography",
                            "runtime.settings", "runtime.repository"}),
    (["--version"], {"httpx", "pydantic_settings", "fastapi", "runtime.settings"}),
    (["info", "lazy.example.org"], {"httpx", "fastapi", "uvicorn", "starlette",
                                    "prometheus_client"}),
])
def test_commands_import_only_what_they_need(args: list[str], absent: set[str],
                                             tmp_path: Path) -> None:
    imported = _imported(*args, tmp_path=tmp_path)
    assert "typer" in imported  # the measurement works
    assert not absent & imported, sorted(absent & imported)
