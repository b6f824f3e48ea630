"""Packaging: what ``pip install`` gives a stranger, and the lock the image is built from.

The lock checks are plain file reads. The install test builds the package from a copy of the
source into an empty virtualenv (pip's cache makes it take seconds, not minutes) and runs the
console script the way a CI job would: ``--version``, ``upload --help``, and a real upload to a
live server from the client-only install, which has neither pydantic-settings nor FastAPI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from runtime.version import __version__

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_REQS = ROOT / "runtime" / "requirements.txt"
CLIENT_REQS = ROOT / "runtime" / "requirements-client.txt"
LOCK = ROOT / "runtime" / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line (comments and ``-r`` lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            out[_canonical(match.group(1))] = match.group(2)
    return out


def lock_entries() -> dict[str, tuple[str, int]]:
    """``name -> (version, number of hashes)`` from the hashed lock."""
    entries: dict[str, tuple[str, int]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = _canonical(match.group(1))
            entries[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, count = entries[current]
            entries[current] = (version, count + 1)
    return entries


def test_every_declared_runtime_pin_is_in_the_lock_with_the_same_version() -> None:
    locked = lock_entries()
    declared = pins(RUNTIME_REQS)
    assert declared, "runtime/requirements.txt declares no pins"
    stale = {name: (version, locked.get(name, ("missing", 0))[0])
             for name, version in declared.items() if locked.get(name, ("",))[0] != version}
    assert not stale, f"lock out of date (declared, locked): {stale}; run scripts/lock.sh"


def test_every_locked_package_is_pinned_with_hashes() -> None:
    locked = lock_entries()
    assert len(locked) > len(pins(RUNTIME_REQS)), "the lock must hold the transitive closure"
    unhashed = [name for name, (_v, hashes) in locked.items() if hashes == 0]
    assert not unhashed, f"no hash for {unhashed}"


def test_the_client_extra_is_a_subset_of_the_runtime_pins() -> None:
    client, runtime = pins(CLIENT_REQS), pins(RUNTIME_REQS)
    assert set(client) == {"httpx", "rich", "typer"}
    assert {n: v for n, v in client.items() if runtime.get(n) != v} == {}


def test_pyproject_reads_the_requirements_files_and_the_version_module() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dynamic = meta["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"]["file"] == ["runtime/requirements-client.txt"]
    assert dynamic["optional-dependencies"]["client"]["file"] == ["runtime/requirements-client.txt"]
    assert dynamic["optional-dependencies"]["server"]["file"] == ["runtime/requirements.txt"]
    assert dynamic["version"]["attr"] == "runtime.version.__version__"
    assert meta["project"]["scripts"]["cvmfs-ephemeral"] == "runtime.__main__:main"


def test_the_image_installs_the_lock_with_hashes_required() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY runtime/requirements.lock" in dockerfile
    assert re.search(r"pip install[^\n]*--require-hashes[^\n]*\\\n\s*-r [^\n]*requirements\.lock",
                     dockerfile)


def _site_packages_kib(venv: Path) -> int:
    site = next((venv / "lib").glob("python3*/site-packages"))
    out = subprocess.run(["du", "-sk", str(site)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


@pytest.mark.slow
def test_client_only_install_into_an_empty_venv_uploads(tmp_path: Path) -> None:
    from tests.live_server import live_server
    from tests.uploadkit import FQRN, TOKEN, settings

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "runtime", src / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{src}[client]"],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_EPHEMERAL_")}
    env.pop("PYTHONPATH", None)
    script = str(venv / "bin" / "cvmfs-ephemeral")

    def run(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([script, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120, **kw)

    assert run("--version").stdout == f"cvmfs-ephemeral {__version__}\n"
    help_page = run("upload", "--help")
    assert help_page.returncode == 0 and "--url URL" in help_page.stdout
    module = subprocess.run([str(venv / "bin" / "python"), "-m", "runtime", "--version"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert module.stdout == f"cvmfs-ephemeral {__version__}\n"
    # the server stack is not there, and a server command says which extra brings it
    serve = run("serve")
    assert serve.returncode == 2
    assert "pip install 'cvmfs-ephemeral[server]'" in serve.stderr
    assert "Traceback" not in serve.stderr
    for absent in ("fastapi", "pydantic_settings", "uvicorn", "cryptography"):
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {absent}"],
                               capture_output=True, env=env, cwd=tmp_path)
        assert probe.returncode != 0, f"{absent} installed by the client extra"
    # and the client works: a real upload to a real server
    artifact = tmp_path / "build.log"
    artifact.write_bytes(b"built\n")
    with live_server(settings(tmp_path / "server")) as server:
        env["CVMFS_EPHEMERAL_TOKEN"] = TOKEN
        up = run("upload", str(artifact), "--url", server.url, "--repo", FQRN)
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith(f"/cvmfs/{FQRN}/build.log  revision ")
    kib = _site_packages_kib(venv)
    print(f"\nclient-only install: site-packages {kib / 1024:.1f} MiB")
    assert kib < 80 * 1024
