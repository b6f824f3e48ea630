"""Benchmark: a herd of readers on a fresh revision, through the site cache vs straight to stratum 0.

What a publish with notifications does to a site: every client fetches the new manifest, root
catalog, nested catalog and the files it reads, at the same moment. This starts the real stratum 0
(nginx with deploy/nginx/stratum0.conf) and a real squid with the configuration SiteCache renders,
then, per repeat, publishes a new artifact and lets N concurrent readers (the independent test
reader) read it: once through squid, once directly (the baseline, same run, same machine). The
figure is what stratum 0 sees, counted in nginx's access log: requests per new object and in all,
plus the wall time for the herd.

    python bench/site_cache.py [--readers 200] [--files 5] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "pulumi"))

import httpx  # noqa: E402

from components.squid_config import SquidSettings  # noqa: E402
from nginx_runner import running_nginx  # noqa: E402
from squid_runner import origin_requests, running_squid  # noqa: E402
from tests.cvmfs_reader import RepoReader  # noqa: E402

FQRN = "bench.example.org"
HOST = "stratum0.bench.example"


def cli(*args: str, data: Path, keys: Path) -> None:
    subprocess.run([sys.executable, "-m", "runtime", *args, "--data-dir", str(data),
                    "--keys-dir", str(keys)], cwd=ROOT, check=True, capture_output=True)


def herd(base: str, key: bytes, readers: int, proxy: str | None, prefix: str) -> float:
    """N readers start together and read every file under ``prefix``; seconds until the last."""
    barrier = threading.Barrier(readers + 1)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with httpx.Client(proxy=proxy, trust_env=False, timeout=120) as client:
                barrier.wait()
                reader = RepoReader(base, FQRN, key, client=client)
                for path, entry in reader.walk().items():
                    if entry.type == "file" and path.startswith(prefix):
                        reader.read_file(path)
        except BaseException as exc:  # reported after the herd
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} readers failed: {errors[0]!r}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-site-cache-") as tmp:
        work = Path(tmp)
        data, keys = work / "data", work / "keys"
        cli("init", FQRN, data=data, keys=keys)
        key = (keys / f"{FQRN}.pub").read_bytes()
        results: dict[str, list[tuple[float, float, float]]] = {"cache": [], "direct": []}
        with running_nginx(data, work) as nginx:
            port = int(nginx.rsplit(":", 1)[1])
            settings = SquidSettings(origin_host="127.0.0.1", origin_port=port,
                                     allowed_hosts=[HOST], allowed_ports=[port],
                                     memory_cache_mb=128, disk_cache_mb=200)
            with running_squid(work / "squid", settings) as squid:
                for i in range(args.repeats):
                    for mode in ("cache", "direct"):
                        name = f"{mode}{i}"
                        src = work / f"src-{name}"
                        src.mkdir()
                        for j in range(args.files):
                            (src / f"f{j}.bin").write_bytes(os.urandom(64 * 1024 + j))
                        cli("publish", FQRN, str(src), "--as", name, data=data, keys=keys)
                        before = origin_requests(work / "access.log")
                        if mode == "cache":
                            seconds = herd(f"http://{HOST}:{port}/cvmfs/{FQRN}", key,
                                           args.readers, squid.url, f"/{name}/")
                        else:
                            seconds = herd(f"{nginx}/cvmfs/{FQRN}", key, args.readers, None,
                                           f"/{name}/")
                        after = origin_requests(work / "access.log")
                        new = [p for p in after if "/data/" in p and p not in before]
                        per_object = statistics.mean(after[p] for p in new)
                        total = sum(after.values()) - sum(before.values())
                        results[mode].append((per_object, total, seconds))
    print(f"{args.readers} concurrent readers of a fresh revision ({args.files} files, "
          f"{args.repeats} repeats, medians; stratum 0 = nginx, counted in its access log)")
    for mode, label in (("cache", "through the site cache"), ("direct", "direct (baseline)")):
        rows = results[mode]
        print(f"  {label:24} stratum-0 requests per new object "
              f"{statistics.median(r[0] for r in rows):7.2f}   in all "
              f"{statistics.median(r[1] for r in rows):6.0f}   herd wall time "
              f"{statistics.median(r[2] for r in rows):6.2f} s")
    ratio = (statistics.median(r[1] for r in results["direct"])
             / statistics.median(r[1] for r in results["cache"]))
    print(f"  stratum-0 requests, direct / cached: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
