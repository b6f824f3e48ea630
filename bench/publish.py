"""Publish throughput and latency of the native writer, each next to a baseline of the same run.

Prints:
1. 1 GiB random file, compression none: MiB/s, and the ratio to writing + fsyncing the same bytes
   (the ``dd conv=fsync`` baseline; target >= 0.8).
2. The same file with zlib: MiB/s, and the ratio to one single-core zlib pass over the same
   bytes (target >= 1.6: chunks compress on every core).
3. 10,000 small files as one artifact: files/s (target >= 10,000; cvmfs_server did 4,000-7,400).
4. Publish latency of a 1-file artifact into a repository holding 100,000 files in 1,000
   artifacts: p50/p99 ms (target p99 < 50 ms).
5. Hierarchical names (``--only-namespaces`` runs just this): publish latency of a 1-file
   artifact at depth 3 into a repository holding 100,000 files in 1,000 artifacts spread over
   50 namespaces, beside top-level 1-file publishes into the same repository (p50/p99 ms,
   target p99 < 50 ms); then the time to list a prefix of 1,000 artifacts, beside the full
   listing of the same repository.

Usage: ``python bench/publish.py [--size-mib 1024] [--workdir DIR] [--quick]``. The work
directory must be on the disk under test (default: a temp dir beside the repository).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.repository import Repository  # noqa: E402
from runtime.settings import RepositoryConfig  # noqa: E402

BLOCK = 8 * 1024 * 1024


def make_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(BLOCK, left)
            fh.write(os.urandom(n))
            left -= n


def drop_cache_hint(path: Path) -> None:
    """Keep the source hot in the page cache for both runs: read it once."""
    with open(path, "rb") as fh:
        while fh.read(BLOCK):
            pass


def baseline_write_fsync(src: Path, dst: Path) -> float:
    """Seconds to copy src to dst in 8 MiB blocks and fsync (what ``dd conv=fsync`` does)."""
    t = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            block = fin.read(BLOCK)
            if not block:
                break
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    elapsed = time.perf_counter() - t
    dst.unlink()
    return elapsed


def baseline_direct(src: Path, dst: Path) -> float | None:
    """Seconds to copy src to dst with O_DIRECT (no page cache): the device's own write speed.

    Printed for context: on a VM whose buffered writeback is slow, the ``dd conv=fsync``
    baseline understates the disk; this one does not. None where O_DIRECT is unsupported.
    """
    import mmap

    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT requires
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError:
        return None
    t = time.perf_counter()
    try:
        with open(src, "rb", buffering=0) as fin:
            while True:
                n = fin.readinto(buf)
                if not n:
                    break
                if n % 4096:
                    os.close(fd)
                    fd = os.open(dst, os.O_WRONLY)  # unaligned tail: finish buffered
                    os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, memoryview(buf)[:n])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t
    dst.unlink()
    return elapsed


def baseline_zlib_single(src: Path) -> float:
    """Seconds for one single-core zlib pass (level 6) over the file, 8 MiB at a time."""
    t = time.perf_counter()
    with open(src, "rb") as fin:
        while True:
            block = fin.read(BLOCK)
            if not block:
                break
            zlib.compress(block, 6)
    return time.perf_counter() - t


def new_repo(root: Path, name: str, **cfg) -> Repository:
    repo = Repository(root / name / "data", root / "keys", RepositoryConfig(fqrn=f"{name}.bench.org", **cfg))
    repo.init()
    return repo


def publish_file(repo: Repository, src: Path) -> float:
    t = time.perf_counter()
    tx = repo.begin()
    with open(src, "rb") as fh:
        tx.add_file("big/file.bin", fh)
    tx.publish()
    return time.perf_counter() - t


def bench_big(root: Path, size: int) -> None:
    src = root / "random.bin"
    make_random_file(src, size)
    drop_cache_hint(src)
    mib = size / 2**20
    settle()
    base = baseline_write_fsync(src, root / "copy.bin")
    repo = new_repo(root, "none", compression="none")
    settle()
    t_none = publish_file(repo, src)
    repo.close()
    shutil.rmtree(root / "none")
    print(f"1. {mib:.0f} MiB, compression none: {mib / t_none:8.1f} MiB/s   "
          f"baseline write+fsync {mib / base:8.1f} MiB/s   ratio {base / t_none:.2f} (target >= 0.8)")
    settle()
    direct = baseline_direct(src, root / "copy.bin")
    if direct is not None:
        print(f"   for context: O_DIRECT write {mib / direct:8.1f} MiB/s   "
              f"ratio to it {direct / t_none:.2f}")
    zbase = baseline_zlib_single(src)
    repo = new_repo(root, "zlib", compression="zlib")
    settle()
    t_zlib = publish_file(repo, src)
    repo.close()
    shutil.rmtree(root / "zlib")
    print(f"2. {mib:.0f} MiB, compression zlib: {mib / t_zlib:8.1f} MiB/s   "
          f"baseline 1-core zlib     {mib / zbase:8.1f} MiB/s   ratio {zbase / t_zlib:.2f} (target >= 1.6)")
    src.unlink()


def make_small_files(root: Path, count: int, size: int = 512) -> Path:
    src = root / "small-src"
    for i in range(count):
        d = src / f"d{i // 1000:02d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}.txt").write_bytes(os.urandom(size // 2).hex().encode())
    return src


def settle() -> None:
    """Flush pending writes and deletes before a timed phase.

    On a filesystem mounted with ``discard`` (as here) the blocks freed by an earlier phase are
    discarded at the next journal commit, stalling whatever runs then; syncing first charges
    that to nobody rather than to the next measurement.
    """
    os.sync()


def bench_small(root: Path, count: int) -> None:
    src = make_small_files(root, count)
    repo = new_repo(root, "small")
    settle()
    t = time.perf_counter()
    tx = repo.begin()
    tx.add_tree(src, "many")
    tx.publish()
    elapsed = time.perf_counter() - t
    print(f"3. {count} small files: {count / elapsed:8.0f} files/s (target >= 10,000; "
          f"cvmfs_server 4,000-7,400)")
    repo.close()


def bench_latency(root: Path, artifacts: int, files_per: int, samples: int) -> None:
    repo = new_repo(root, "latency")
    batch = 50
    for start in range(0, artifacts, batch):
        tx = repo.begin()
        for a in range(start, min(artifacts, start + batch)):
            for f in range(files_per):
                tx.add_file(f"art{a:04d}/sub{f % 10}/f{f:03d}", f"{a}-{f}".encode())
        tx.publish()
    settle()
    times = []
    for i in range(samples):
        t = time.perf_counter()
        tx = repo.begin()
        tx.add_file(f"new{i:03d}/file.txt", f"sample {i}".encode())
        tx.publish()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    print(f"4. 1-file publish into {artifacts * files_per} files / {artifacts} artifacts: "
          f"p50 {p50:6.1f} ms   p99 {p99:6.1f} ms (target p99 < 50 ms; {samples} samples)")
    repo.close()


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(round(q * (len(sorted_ms) - 1))))]


def bench_namespaces(root: Path, artifacts: int, files_per: int, samples: int,
                     namespaces: int = 50) -> None:
    """5.: deep publishes and prefix listing (module docstring), each beside its baseline."""
    repo = new_repo(root, "names")
    batch = 50
    for start in range(0, artifacts, batch):
        tx = repo.begin()
        for a in range(start, min(artifacts, start + batch)):
            name = tx.artifact(f"ns{a % namespaces:02d}/app/art{a:04d}")
            for f in range(files_per):
                tx.add_file(f"{name}/sub{f % 10}/f{f:03d}", f"{a}-{f}".encode())
        tx.publish()
    settle()
    deep, top = [], []
    for i in range(samples):  # interleaved: both see the same repository and disk state
        for label, name, out in (("deep", f"ns{i % namespaces:02d}/app/new{i:03d}", deep),
                                 ("top", f"top{i:03d}", top)):
            t = time.perf_counter()
            tx = repo.begin()
            tx.artifact(name)
            tx.add_file(name, f"{label} sample {i}".encode())
            tx.publish()
            out.append((time.perf_counter() - t) * 1000)
    deep.sort()
    top.sort()
    print(f"5. 1-file publish at depth 3 into {artifacts * files_per} files / {artifacts} "
          f"artifacts / {namespaces} namespaces: p50 {statistics.median(deep):6.1f} ms   "
          f"p99 {percentile(deep, 0.99):6.1f} ms (target p99 < 50 ms; {samples} samples)")
    print(f"   baseline, top-level 1-file publish in the same run: p50 "
          f"{statistics.median(top):6.1f} ms   p99 {percentile(top, 0.99):6.1f} ms")
    # a prefix of 1,000 artifacts among everything above
    for start in range(0, 1000, 250):
        tx = repo.begin()
        for i in range(start, start + 250):
            name = tx.artifact(f"team-x/app/pr-{i:04d}")
            tx.add_file(name, b"x")
        tx.publish()
    total = len(repo.artifacts())
    repo.artifacts()  # warm: the full listing is served from decoded rows once read
    prefixed, full, cold = [], [], []
    for _ in range(20):
        t = time.perf_counter()
        listed = repo.artifacts("team-x/")
        prefixed.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        repo.artifacts()
        full.append((time.perf_counter() - t) * 1000)
        repo.state.invalidate()  # as after any publish: every row is read and decoded again
        t = time.perf_counter()
        repo.artifacts()
        cold.append((time.perf_counter() - t) * 1000)
    assert len(listed) == 1000
    print(f"   listing prefix team-x/ (1,000 of {total} artifacts, range query): median "
          f"{statistics.median(prefixed):6.2f} ms")
    print(f"   baseline full listing: {statistics.median(full):6.2f} ms from decoded rows, "
          f"{statistics.median(cold):6.2f} ms after a publish (20 repeats)")
    repo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small-files", type=int, default=10_000)
    ap.add_argument("--artifacts", type=int, default=1000)
    ap.add_argument("--files-per-artifact", type=int, default=100)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--only", choices=["big", "small", "latency"], default=None)
    ap.add_argument("--only-namespaces", action="store_true",
                    help="run only 5. (hierarchical names: deep publishes, prefix listing)")
    args = ap.parse_args()
    base = args.workdir or Path(__file__).resolve().parents[1] / "var"
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-publish-", dir=base))
    try:
        # Small files first: freeing gigabytes on a filesystem mounted with discard stalls
        # metadata operations for a while afterwards.
        if args.only_namespaces:
            bench_namespaces(root, args.artifacts, args.files_per_artifact, args.samples)
            return
        if args.only in (None, "small"):
            bench_small(root, args.small_files)
        if args.only in (None, "latency"):
            bench_latency(root, args.artifacts, args.files_per_artifact, args.samples)
        if args.only in (None, "big"):
            bench_big(root, args.size_mib * 2**20)
        if args.only is None:
            bench_namespaces(root, args.artifacts, args.files_per_artifact, args.samples)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
