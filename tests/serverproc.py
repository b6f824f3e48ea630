"""``python -m runtime serve`` as a process of its own, for what an in-process server cannot
show: the server's own RSS (``/proc/<pid>/status``), a SIGKILL, its helper processes.

Shared by the tests (tests/ingestkit.py) and the benchmarks (bench/abuse.py, bench/upload.py);
each passes the ``CVMFS_EPHEMERAL_*`` settings it needs, this module owns starting, waiting for
``/healthz``, reading memory figures and stopping.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[1]


def proc_status(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"no {field} in /proc/{pid}/status")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """``serve`` on a free loopback port with ``env`` over this process's environment
    (scheduler off, log level warning unless ``env`` says otherwise); ready when constructed.

    ``log``: a file that takes the server's stdout and stderr (its tail is in the error of a
    failed start); without it stdout goes to ``stdout`` (default: nowhere) and stderr is
    inherited, so a server's warnings still show.
    """

    def __init__(self, env: dict[str, str], *, log: Path | None = None,
                 stdout: int | IO | None = subprocess.DEVNULL, start_timeout_s: float = 60):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "CVMFS_EPHEMERAL_SCHEDULER": "false",
                    "CVMFS_EPHEMERAL_LOG_LEVEL": "warning", **env,
                    "CVMFS_EPHEMERAL_PORT": str(self.port)}
        self.log_path = log
        self.log = open(log, "wb") if log is not None else None
        out, err = (self.log, subprocess.STDOUT) if self.log is not None else (stdout, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve"], cwd=ROOT,
                                     env=self.env, stdout=out, stderr=err)
        self._wait_ready(start_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text()[-2000:] if self.log_path else ""
                raise RuntimeError("server process did not start" + (f": {tail}" if tail else ""))
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self, field: str) -> int:
        """The server's ``/proc/<pid>/status`` figure in bytes (VmRSS, VmHWM)."""
        return proc_status(field, self.pid)

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (``clear_refs`` 5); False where the kernel refuses."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 60 s; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
