"""Run Debian's squid for real, on loopback, with the configuration the SiteCache component renders.

The text comes from ``components.squid_config.render_squid_conf``, the function the component
uses; only the arguments a test must change (ports, directories, log files) differ from a
deployment. As in the container, squid runs unprivileged and in the foreground (``-N``), after
``squid -z`` created its cache directories.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from components.squid_config import SquidSettings, render_squid_conf
from nginx_runner import NOBODY, as_nobody, free_port, wait_for_port


def squid_binary() -> str | None:
    return shutil.which("squid") or ("/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None)


@dataclasses.dataclass
class RunningSquid:
    url: str
    port: int
    access_log: Path
    conf_text: str

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def results(self, url_suffix: str) -> list[str]:
        """Squid's result codes (``TCP_MEM_HIT/200``…) for the requests whose URL ends so."""
        out = []
        for line in self.log_lines():
            fields = line.split()
            if len(fields) >= 7 and fields[6].endswith(url_suffix):
                out.append(fields[3])
        return out


@contextmanager
def running_squid(work: Path, settings: SquidSettings) -> Iterator[RunningSquid]:
    """Start squid with ``settings`` (its port, dirs and logs replaced by ones under ``work``)."""
    binary = squid_binary()
    assert binary, "squid is not installed (apt-get install squid)"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cache_dir, run_dir = work / "cache", work / "run"
    cache_dir.mkdir(exist_ok=True)
    run_dir.mkdir(exist_ok=True)
    access_log, cache_log = work / "access.log", work / "cache.log"
    settings = dataclasses.replace(
        settings,
        http_port=port,
        cache_dir=str(cache_dir),
        run_dir=str(run_dir),
        access_log=f"stdio:{access_log}",
        cache_log=str(cache_log),
    )
    text = render_squid_conf(settings)
    conf = work / "squid.conf"
    conf.write_text(text)
    if os.geteuid() == 0:
        for path in [work, *work.parents]:
            if path == Path("/"):
                break
            path.chmod(path.stat().st_mode | 0o011)
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(work)], check=True)
    # A service name of its own: squids running side by side never share a name or a segment.
    base = [binary, "-N", "-n", f"cvmfstest{port}", "-f", str(conf)]
    if settings.disk_cache_mb > 0:
        made = subprocess.run(as_nobody([*base, "-z"]), capture_output=True, text=True,
                              timeout=60)
        if made.returncode != 0:
            log = cache_log.read_text() if cache_log.exists() else ""
            raise RuntimeError(f"squid -z failed: {made.stderr}{made.stdout}{log[-2000:]}")
    proc = subprocess.Popen(as_nobody(base),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(proc, port, 30, lambda: "squid did not start: " + (
            cache_log.read_text()[-2000:] if cache_log.exists() else ""))
        yield RunningSquid(url=f"http://127.0.0.1:{port}", port=port, access_log=access_log,
                           conf_text=text)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_NGINX_REQUEST = re.compile(r'"(GET|HEAD) (\S+) HTTP/[0-9.]+" (\d{3})')


def origin_requests(nginx_access_log: Path) -> Counter[str]:
    """How many times nginx (the stratum 0) was asked for each path (GET and HEAD)."""
    counts: Counter[str] = Counter()
    for line in nginx_access_log.read_text().splitlines():
        match = _NGINX_REQUEST.search(line)
        if match:
            counts[match.group(2)] += 1
    return counts
