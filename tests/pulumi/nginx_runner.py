"""Run the image's nginx configuration (deploy/nginx/stratum0.conf) for real, on loopback.

The configuration is baked into the image with its production paths; tests render it against a
temporary data directory and port. Only those paths change; every location and header rule is
the one that ships. As in the container, nginx runs as an unprivileged user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from harness import REPO_ROOT
from tests.serverproc import free_port  # noqa: F401 - the runners' one free-port helper

CONF = REPO_ROOT / "deploy" / "nginx" / "stratum0.conf"
NOBODY = 65534


def as_nobody(command: list[str]) -> list[str]:
    """``command`` run as nobody when this process is root (as the images run the servers:
    never as root), else unchanged."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


def wait_for_port(proc: subprocess.Popen, port: int, timeout_s: float,
                  failure: Callable[[], str]) -> None:
    """Return once something accepts connections on ``127.0.0.1:port``; ``RuntimeError`` with
    ``failure()`` (the server's own output) when ``proc`` exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(failure()) from None
            time.sleep(0.05)


def render(conf: str, data_dir: Path, tmp_dir: Path, port: int, log: Path) -> str:
    replacements = {
        "/var/lib/cvmfs-ephemeral": str(data_dir),
        "/tmp/nginx": f"{tmp_dir}/nginx",
        "listen 8000 default_server;": f"listen 127.0.0.1:{port} default_server;",
        "access_log /dev/stdout;": f"access_log {log};",
    }
    for old, new in replacements.items():
        assert old in conf, f"{old!r} no longer in stratum0.conf: update the test renderer"
        conf = conf.replace(old, new)
    return conf


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )


@contextmanager
def running_nginx(data_dir: Path, work: Path) -> Iterator[str]:
    """Start nginx serving ``data_dir``; yield its base URL (``http://127.0.0.1:PORT``)."""
    binary = nginx_binary()
    assert binary, "nginx is not installed (apt-get install nginx-light)"
    port = free_port()
    tmp_dir = work / "nginx-tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log = work / "access.log"
    conf = work / "stratum0.conf"
    conf.write_text(render(CONF.read_text(), data_dir, tmp_dir, port, log))
    command = [binary, "-c", str(conf)]
    if os.geteuid() == 0:
        # Like the container: never root. The work tree must be readable by that user.
        for path in [work, *work.parents]:
            if path == Path("/"):
                break
            path.chmod(path.stat().st_mode | 0o011)
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        tmp_dir.chmod(0o777)
        log.touch()
        log.chmod(0o666)
        command = as_nobody(command)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(proc, port, 10, lambda: "nginx did not start: " + (
            proc.stdout.read().decode() if proc.stdout else ""))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
