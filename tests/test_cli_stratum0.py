"""``python -m runtime`` init/publish/info/verify/serve, run as a user would, and the stratum-0
HTTP behaviour of ``serve`` (docs/cvmfs-format.md: HTTP rules)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cvmfs_reader import RepoReader, compare_with_directory
from tests.serverproc import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
FQRN = "cli.example.org"


def run(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "runtime", *args], cwd=REPO_ROOT, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    return {"CVMFS_EPHEMERAL_DATA_DIR": str(tmp_path / "data"),
            "CVMFS_EPHEMERAL_KEYS_DIR": str(tmp_path / "keys")}


@pytest.fixture
def server(dirs: dict[str, str]):
    port = free_port()
    # serve refuses to start without a configured repository; the one configured here is not
    # the one the tests create with the CLI (the stratum 0 serves every repository on disk)
    env = {**os.environ, **dirs, "CVMFS_EPHEMERAL_REPOSITORIES": "served.example.org"}
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--port", str(port)],
                            cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"server did not start: {proc.stderr.read().decode()}")
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_init_publish_info_verify(tmp_path: Path, dirs: dict[str, str], server: str) -> None:
    first = run("init", FQRN, env=dirs)
    assert f"created repository {FQRN}" in first.stdout
    second = run("init", FQRN, env=dirs)
    assert "already exists" in second.stdout and "nothing changed" in second.stdout
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    (src / "bin" / "tool").chmod(0o755)
    (src / "README").write_bytes(b"read me\n")
    out = run("publish", FQRN, str(src), "--as", "build-1", env=dirs)
    assert "published build-1" in out.stdout
    info = json.loads(run("info", FQRN, "--json", env=dirs).stdout)
    assert info["artifacts"] == 1 and info["objects"] >= 4 and info["bytes"] > 0
    assert 29 * 86400 < info["whitelist_seconds_left"] <= 30 * 86400
    url = f"{server}/cvmfs/{FQRN}"
    pub = Path(dirs["CVMFS_EPHEMERAL_KEYS_DIR"]) / f"{FQRN}.pub"
    verified = run("verify", "--url", url, "--fqrn", FQRN, "--public-key", str(pub))
    assert f"revision {info['revision']} verified" in verified.stdout
    reader = RepoReader(url, FQRN, pub.read_bytes())
    reader.check()
    assert compare_with_directory(reader, src, "build-1", modes=True) == []
    # republishing under the same name replaces the artifact
    (src / "README").write_bytes(b"changed\n")
    run("publish", FQRN, str(src), "--as", "build-1", env=dirs)
    assert RepoReader(url, FQRN, pub.read_bytes()).read_file("build-1/README") == b"changed\n"


def test_verify_fails_with_a_one_line_error_against_the_wrong_key(tmp_path: Path,
                                                                  dirs: dict[str, str],
                                                                  server: str) -> None:
    run("init", FQRN, env=dirs)
    other = {"CVMFS_EPHEMERAL_DATA_DIR": str(tmp_path / "d2"),
             "CVMFS_EPHEMERAL_KEYS_DIR": str(tmp_path / "k2")}
    run("init", FQRN, env=other)
    proc = run("verify", "--url", f"{server}/cvmfs/{FQRN}", "--fqrn", FQRN,
               "--public-key", str(tmp_path / "k2" / f"{FQRN}.pub"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: whitelist: the signature does not match this public key")
    assert "PKCS" not in proc.stderr and "padding" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["init", "Not_A_Repo"], "invalid repository name 'Not_A_Repo'"),
    (["publish", "cli.example.org", "/nonexistent", "--as", "x"], "does not exist"),
    (["init", FQRN, "--compression", "lz4"], "compression: Input should be 'none' or 'zlib'"),
])
def test_cli_bad_input_exits_nonzero_with_one_line(dirs: dict[str, str], args: list[str],
                                                   message: str) -> None:
    proc = run(*args, env=dirs, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_publish_refuses_bad_artifact_names_and_writes_nothing(tmp_path: Path,
                                                               dirs: dict[str, str]) -> None:
    run("init", FQRN, env=dirs)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    manifest = Path(dirs["CVMFS_EPHEMERAL_DATA_DIR"], "public", FQRN, ".cvmfspublished")
    before = manifest.read_bytes()
    # a/b is a valid hierarchical name now; a/../b, a//b and too many segments are not
    for name in ("a/../b", "a//b", "a/b/c/d/e", "..", ".cvmfscatalog"):
        proc = run("publish", FQRN, str(src), "--as", name, env=dirs, check=False)
        assert proc.returncode == 2 and "invalid artifact name" in proc.stderr, proc.stderr
    assert manifest.read_bytes() == before


def test_stratum0_http_behaviour(dirs: dict[str, str], server: str) -> None:
    run("init", FQRN, env=dirs)
    base = f"{server}/cvmfs/{FQRN}"
    with httpx.Client() as http:
        m = http.get(f"{base}/.cvmfspublished")
        assert m.status_code == 200
        assert m.headers["cache-control"].startswith("no-cache")
        assert m.headers["content-type"] == "application/x-cvmfs"
        for header in ("etag", "last-modified", "content-encoding"):
            assert header not in m.headers
        root = m.content.split(b"\n", 1)[0][1:].decode()
        obj = http.get(f"{base}/data/{root[:2]}/{root[2:]}C")
        assert obj.status_code == 200 and "immutable" in obj.headers["cache-control"]
        head = http.head(f"{base}/.cvmfs_master_replica")
        assert head.status_code == 200 and head.content == b""
        assert http.head(f"{base}/data/00/{'0' * 38}").status_code == 404
        for escape in ("../../private/cli.example.org/state.db", "%2e%2e/%2e%2e/private",
                       "data/../../../keys/cli.example.org.key", ".cvmfsreflog", "data/txn/x"):
            assert http.get(f"{base}/{escape}").status_code == 404, escape
        assert http.get(f"{server}/cvmfs-meta/{FQRN}.pub").content.startswith(
            b"-----BEGIN PUBLIC KEY-----")
        # a decoy outside public/: a repository name of '..' must not reach it
        decoy = Path(dirs["CVMFS_EPHEMERAL_DATA_DIR"]) / ".cvmfspublished"
        decoy.write_bytes(b"private")
        assert http.get(f"{server}/cvmfs/%2e%2e/.cvmfspublished").status_code == 404
        assert http.get(f"{server}/cvmfs/..%2fpublic%2f{FQRN}/.cvmfspublished").status_code == 404
        assert http.get(f"{server}/cvmfs-meta/{FQRN}.key").status_code == 404
        assert http.get(f"{server}/cvmfs-meta/{FQRN}.masterkey").status_code == 404


def test_serve_creates_configured_repositories_and_prints_how_to_mount(
        dirs: dict[str, str]) -> None:
    port = free_port()
    env = {**os.environ, **dirs, "CVMFS_EPHEMERAL_REPOSITORIES": FQRN}
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--port", str(port)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "mount -t cvmfs" in line:
                break
        text = "\n".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert f"CVMFS_SERVER_URL={base}/cvmfs/@fqrn@" in text
        assert f"CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/{FQRN}.pub" in text
        assert "CVMFS_HTTP_PROXY=DIRECT" in text
        assert f"CVMFS_NOTIFICATION_SERVER={base}/api/v1" in text
        assert f"curl -o /etc/cvmfs/keys/{FQRN}.pub {base}/cvmfs-meta/{FQRN}.pub" in text
        manifest = Path(dirs["CVMFS_EPHEMERAL_DATA_DIR"], "public", FQRN, ".cvmfspublished")
        assert manifest.is_file(), "serve creates a configured repository that did not exist"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_publish_a_tar_archive_and_refuse_a_malformed_one(tmp_path: Path, dirs: dict[str, str],
                                                          server: str) -> None:
    import tarfile

    run("init", FQRN, env=dirs)
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "x.so").write_bytes(b"\x7fELF" + bytes(range(256)))
    archive = tmp_path / "build.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")
    run("publish", FQRN, str(archive), "--as", "from-tar", env=dirs)
    pub = (Path(dirs["CVMFS_EPHEMERAL_KEYS_DIR"]) / f"{FQRN}.pub").read_bytes()
    reader = RepoReader(f"{server}/cvmfs/{FQRN}", FQRN, pub)
    assert compare_with_directory(reader, src, "from-tar") == []
    manifest = Path(dirs["CVMFS_EPHEMERAL_DATA_DIR"], "public", FQRN, ".cvmfspublished")
    before = manifest.read_bytes()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive\n" * 40)
    proc = run("publish", FQRN, str(bad), "--as", "bad", env=dirs, check=False)
    assert proc.returncode == 2 and "not a readable tar archive" in proc.stderr
    assert manifest.read_bytes() == before
