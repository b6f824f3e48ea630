"""Directory download benchmark: a directory artifact of many small entries, as a tar stream.

Prints, in one run:

1. the tar of the artifact driven as the server streams it (one worker-thread hop per piece):
   coalesced pieces (``downloads.tar_pieces``, what the server sends) vs one hop per tar piece
   (header, content, padding: how the download route streamed before), seconds, medians;
2. the real server (``python -m runtime serve`` in its own process) downloading it over
   loopback: seconds, and the server's peak RSS during two concurrent downloads vs its RSS when
   idle.

Usage: ``python bench/download.py [--entries N] [--repeat R] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.repository import Repository  # noqa: E402
from runtime.server import downloads  # noqa: E402
from runtime.settings import RepositoryConfig  # noqa: E402

FQRN = "bench.example.org"
TOKEN = "bench-token"


def make_tar(entries: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(entries):
            info = tarfile.TarInfo(f"d{i % 100}/f{i}.txt")
            data = str(i).encode()
            info.size = len(data)
            info.mtime = 1704067200
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def drive(pieces) -> int:  # type: ignore[no-untyped-def]
    total = 0
    async for piece in downloads.stream(pieces):
        total += len(piece)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-download-", dir=args.dir))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CVMFS_EPHEMERAL_DATA_DIR": str(work / "data"),
           "CVMFS_EPHEMERAL_KEYS_DIR": str(work / "keys"), "CVMFS_EPHEMERAL_REPOSITORIES": FQRN,
           "CVMFS_EPHEMERAL_TOKENS": TOKEN, "CVMFS_EPHEMERAL_SCHEDULER": "false",
           "CVMFS_EPHEMERAL_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        tar = make_tar(args.entries)
        r = httpx.put(f"{url}/repos/{FQRN}/many?unpack=true", content=tar,
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)
        r.raise_for_status()
        print(f"artifact: {args.entries} files in 100 directories ({len(tar) / 1e6:.1f} MB tar)")

        repo = Repository(work / "data", work / "keys", RepositoryConfig(fqrn=FQRN))
        tree = repo.artifact_tree("many")
        new, old = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            size_new = asyncio.run(drive(downloads.tar_pieces(repo, downloads.sorted_entries(tree))))
            new.append(time.perf_counter() - t)
            t = time.perf_counter()
            size_old = asyncio.run(drive(downloads._members(repo, downloads.sorted_entries(tree))))
            old.append(time.perf_counter() - t)
            assert size_new == size_old
        print(f"1. tar stream, {args.entries} entries: coalesced {statistics.median(new):.2f} s"
              f"  vs  baseline one hop per piece {statistics.median(old):.2f} s"
              f"  ({statistics.median(old) / statistics.median(new):.1f}x)")

        idle = rss_kib(proc.pid)
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(proc.pid))
                time.sleep(0.02)

        def fetch() -> float:
            t = time.perf_counter()
            with httpx.stream("GET", f"{url}/repos/{FQRN}/many", timeout=600) as resp:
                resp.raise_for_status()
                for _ in resp.iter_bytes():
                    pass
            return time.perf_counter() - t

        one = statistics.median(fetch() for _ in range(args.repeat))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=fetch) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        done.set()
        sampler.join()
        print(f"2. HTTP download over loopback: {one:.2f} s; server RSS during 2 concurrent "
              f"downloads {peak[0] / 1024:.0f} MiB  vs  idle {idle / 1024:.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
