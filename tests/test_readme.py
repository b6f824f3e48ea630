"""The README's command blocks work as written: each block tagged ``<!-- test: KIND -->`` runs in
bash, against a live server on loopback (its URL substituted for ``http://localhost:8080``).

Only tagged blocks run, so other sections can add examples that need Docker, Pulumi or a real
cluster; a tag whose kind has no runner here fails, so a tag is never silently ignored.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from runtime.settings import Settings
from tests.live_server import live_server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_URL = "http://localhost:8080"
FQRN = "ci.example.org"
TOKEN = "dev-token"
TAGGED = re.compile(r"^<!-- test: (\w+) -->\n+```(?:sh|bash)\n(.*?)^```", re.M | re.S)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def blocks(kind: str) -> list[str]:
    found = [body for k, body in TAGGED.findall(README.read_text()) if k == kind]
    assert found, f"README has no block tagged <!-- test: {kind} -->"
    return found


def test_every_tag_has_a_runner() -> None:
    kinds = {k for k, _ in TAGGED.findall(README.read_text())}
    assert kinds and kinds <= {"curl", "cli"}, kinds


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_save_archive() -> bytes:
    """What ``docker save`` writes, legacy layout: one layer and ``manifest.json``."""
    layer = _tar({"etc/os-release": b"ID=demo\n", "app/run.sh": b"#!/bin/sh\necho hi\n"})
    manifest = [{"Config": "config.json", "RepoTags": ["myimage:latest"],
                 "Layers": ["0001/layer.tar"]}]
    return _tar({"0001/layer.tar": layer, "config.json": b"{}",
                 "manifest.json": json.dumps(manifest).encode()})


def dist_tar_zst() -> bytes:
    return zstandard.ZstdCompressor().compress(_tar({"dist/lib.so": b"\x7fELF" + b"\0" * 100,
                                                    "dist/README": b"read me\n"}))


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path / "data", keys_dir=tmp_path / "keys",
                        repositories=FQRN, tokens=TOKEN, scheduler=False, log_level="warning")
    with live_server(settings) as srv:
        yield srv


def run_block(block: str, url: str, cwd: Path, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    script = "set -euo pipefail\n" + block.replace(README_URL, url)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_EPHEMERAL_")}
    return subprocess.run(["bash", "-c", script], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=300)


def artifacts(srv) -> set[str]:  # type: ignore[no-untyped-def]
    return {a.name for a in srv.repositories[FQRN].artifacts()}


def test_the_curl_examples(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "work"
    work.mkdir()
    (work / "build.log").write_text("build ok\n")
    (work / "report.html").write_text("<h1>report</h1>\n")
    (work / "dist.tar.zst").write_bytes(dist_tar_zst())
    (work / "image.tar").write_bytes(docker_save_archive())
    for block in blocks("curl"):
        proc = run_block(block, server.url, work)
        assert proc.returncode == 0, proc.stderr
    # the block uploads four artifacts, downloads and then deletes dist
    assert artifacts(server) == {"build.log", "report.html", "myimage"}
    with tarfile.open(work / "dist.tar") as tar:  # downloaded before the delete
        assert tar.extractfile("dist/dist/README").read() == b"read me\n"
    listing = [line for line in proc.stdout.splitlines() if line.startswith('{"repository"')]
    assert listing and json.loads(listing[0])["repository"] == FQRN


def test_fail_with_body_shows_the_servers_reason(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Why the README uses --fail-with-body: a refusal still exits non-zero, with its reason."""
    (tmp_path / "f").write_text("x")
    proc = subprocess.run(["curl", "--fail-with-body", "-sS", "-T", "f",
                           f"{server.url}/repos/{FQRN}/f"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 22
    assert json.loads(proc.stdout)["detail"]


def _cli_on_path(tmp_path: Path) -> str:
    """A PATH on which ``cvmfs-ephemeral`` is this checkout's CLI: the console script installed
    next to the interpreter (``pip install -e .``), else a wrapper around ``python -m runtime``."""
    bindir = Path(sys.executable).parent
    if not (bindir / "cvmfs-ephemeral").exists():
        bindir = tmp_path / "bin"
        bindir.mkdir()
        wrapper = bindir / "cvmfs-ephemeral"
        wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m runtime "$@"\n')
        wrapper.chmod(0o755)
    return f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"


def test_the_ci_client_example(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "work"
    (work / "build").mkdir(parents=True)
    (work / "build" / "out.tar.zst").write_bytes(dist_tar_zst())
    env = {"PATH": _cli_on_path(tmp_path), "CI_PIPELINE_ID": "4711"}
    for block in blocks("cli"):
        proc = run_block(block, server.url, work, env)
        assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert re.match(rf"^/cvmfs/{FQRN}/build-4711  revision \d+  expires 20\d\d-", first), first
    assert '"refreshed": true' in proc.stdout  # the second upload sent the same bytes again
    assert "build-4711" in artifacts(server)
