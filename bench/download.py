"""Directory download benchmark: a directory artifact of many small entries, as a tar stream.

Prints, in one run:

1. the tar of the artifact driven as the server streams it (one worker-thread hop per piece),
   seconds (medians) and the traced Python peak of each: entries walked from the nested
   catalog (``downloads.artifact_entries``, what the server does) vs the tree read whole and
   held while streaming (before), and vs one hop per tar piece (before that);
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
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.repository import Repository  # noqa: E402
from runtime.server import downloads  # noqa: E402
from tests.serverproc import free_port, proc_status  # noqa: E402
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
        info = next(a for a in repo.artifacts() if a.name == "many")

        def walked():  # type: ignore[no-untyped-def]
            return downloads.artifact_entries(repo, "many", info.catalog_hash)

        def held():  # type: ignore[no-untyped-def]
            return downloads.sorted_entries(repo.artifact_tree("many"))

        variants = {"entries walked from the catalog": lambda: downloads.tar_pieces(repo, walked()),
                    "tree held whole (before)": lambda: downloads.tar_pieces(repo, held()),
                    "tree held, one hop per piece": lambda: downloads._members(repo, held())}
        if not hasattr(downloads, "artifact_entries"):  # an older checkout (--against style)
            del variants["entries walked from the catalog"]
        times: dict[str, list[float]] = {k: [] for k in variants}
        sizes = set()
        for _ in range(args.repeat):
            for label, make in variants.items():
                t = time.perf_counter()
                sizes.add(asyncio.run(drive(make())))
                times[label].append(time.perf_counter() - t)
        assert len(sizes) == 1, sizes
        peaks = {}
        for label, make in variants.items():
            tracemalloc.start()
            asyncio.run(drive(make()))
            peaks[label] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        base = statistics.median(times["tree held whole (before)"])
        print(f"1. tar stream of {args.entries} entries, median of {args.repeat} "
              f"(traced Python peak beside):")
        for label in variants:
            med = statistics.median(times[label])
            print(f"   {label:34} {med:6.2f} s ({med / base:4.2f}x the tree held whole)  "
                  f"peak {peaks[label] / 2**20:6.1f} MiB")

        idle = proc_status("VmRSS", proc.pid) // 1024
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc_status("VmRSS", proc.pid) // 1024)
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
