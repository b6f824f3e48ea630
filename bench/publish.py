"""Publish throughput and latency of the native writer, each next to a baseline of the same run.

Prints, for each of ``--repeat`` rounds (default 5) and then as median [min–max]:
1. 1 GiB random file, compression none: MiB/s, and the ratio to writing + fsyncing the same bytes
   (the ``dd conv=fsync`` baseline; target >= 0.8), with the O_DIRECT write for context.
2. The same file with zlib: MiB/s, and the ratio to one single-core stock zlib pass over the
   same bytes (target >= 2.5).
3. 10,000 small files (1-4 KiB, 100 directories, new content each round) as one artifact:
   files/s, and the ratio to ``tar -x`` of the same files + ``sync`` on the same filesystem
   (target >= 2), beside ``cp -r`` + ``sync`` of the tree and the object floor (one process
   per core creating the objects from memory, then ``syncfs``: what no publish can beat).
4. Publish latency of a 1-file artifact into a repository holding 100,000 files in 1,000
   artifacts: p50/p99 ms (target p99 < 50 ms).
5. Hierarchical names (``--only-namespaces`` runs just this): publish latency of a 1-file
   artifact at depth 3 into a repository holding 100,000 files in 1,000 artifacts spread over
   50 namespaces, beside top-level 1-file publishes into the same repository (p50/p99 ms,
   target p99 < 50 ms); then the time to list a prefix of 1,000 artifacts, beside the full
   listing of the same repository.

Usage: ``python bench/publish.py [--dir DIR] [--repeat 5] [--size-mib 1024] [--small-files N]
[--only big|small|latency] [--floor-processes 1,2,4]``. ``--dir`` (alias ``--workdir``) must
be on the disk under test; default: beside the data directory (``CVMFS_EPHEMERAL_DATA_DIR``,
default ``var/data``).
Nothing is deleted between the timed phases of a round (see :func:`settle`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines import (copy_tree_sync, default_dir, direct_write,  # noqa: E402
                             filesystem_swing, journal_note, load, make_small_files,
                             object_floor, spread, tar_extract_sync, zlib_single)
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


def bench_big(root: Path, size: int, repeat: int) -> None:
    src = root / "random.bin"
    make_random_file(src, size)
    drop_cache_hint(src)
    mib = size / 2**20
    none_r, zlib_r, none_v, zlib_v = [], [], [], []
    for r in range(repeat):
        settle()
        base = baseline_write_fsync(src, root / "copy.bin")
        settle()
        direct = direct_write(src, root / "copy.bin")
        repo = new_repo(root, f"none{r}", compression="none")
        settle()
        t_none = publish_file(repo, src)
        repo.close()
        zbase = zlib_single(src)
        repo = new_repo(root, f"zlib{r}", compression="zlib")
        settle()
        t_zlib = publish_file(repo, src)
        repo.close()
        none_r.append(base / t_none)
        zlib_r.append(zbase / t_zlib)
        none_v.append(mib / t_none)
        zlib_v.append(mib / t_zlib)
        ctx = f"; O_DIRECT {mib / direct:7.1f} MiB/s, ratio {direct / t_none:.2f}" if direct else ""
        print(f"   round {r + 1}: none {mib / t_none:7.1f} MiB/s vs write+fsync "
              f"{mib / base:7.1f} = {base / t_none:.2f}{ctx}; zlib {mib / t_zlib:6.1f} MiB/s vs "
              f"1-core zlib {mib / zbase:6.1f} = {zbase / t_zlib:.2f}  (load {load()})",
              flush=True)
        shutil.rmtree(root / f"none{r}")
        shutil.rmtree(root / f"zlib{r}")
    print(f"1. {mib:.0f} MiB, compression none: {spread(none_v, '{:.1f}')} MiB/s   ratio to "
          f"write+fsync {spread(none_r, '{:.2f}')} (target >= 0.8)")
    print(f"2. {mib:.0f} MiB, compression zlib: {spread(zlib_v, '{:.1f}')} MiB/s   ratio to "
          f"1-core stock zlib {spread(zlib_r, '{:.2f}')} (target >= 2.5)")
    src.unlink()


def settle() -> None:
    """Flush pending writes and deletes before a timed phase.

    On a filesystem mounted with ``discard`` (as here) the blocks freed by an earlier phase are
    discarded at the next journal commit, stalling whatever runs then; syncing first charges
    that to nobody rather than to the next measurement. Deleting many files costs more: for
    some seconds afterwards ext4's inode allocator skips the recently freed inodes, and creating
    10,000 files right after deleting 40,000 took 6.0 s instead of 0.3 s for ``tar -x`` as for
    us. So the small-file rounds delete nothing until the end.
    """
    os.sync()


def bench_small(root: Path, count: int, repeat: int, floor_processes: list[int]) -> None:
    """Each round: new files, their tar archive (untimed); then ``tar -x`` + ``sync`` of it,
    ``cp -r`` + ``sync`` of the tree, the object floor of the tree with each number of
    processes in ``floor_processes`` (:func:`object_floor`) and our publish of the same tree
    (which ends with its own ``syncfs``), in an order that rotates from round to round. The
    fastest floor's ratio to ``tar -x`` + ``sync`` is the most any publish can reach on this
    filesystem and these cores."""
    repo = new_repo(root, "small", compression="none")
    took_all: list[dict[str, float]] = []
    for r in range(repeat):
        src = root / f"small-src{r}"
        make_small_files(src, count, seed=1000 + r)
        archive = root / f"small{r}.tar"
        subprocess.run(["tar", "-cf", str(archive), "-C", str(src), "."], check=True)
        settle()

        def publish() -> float:
            t = time.perf_counter()
            tx = repo.begin()
            tx.add_tree(src, f"many{r}")
            tx.publish()
            return time.perf_counter() - t

        runs = {"ours": publish,
                "tar": lambda: tar_extract_sync(archive, root / f"small-x{r}"),
                "cp": lambda: copy_tree_sync(src, root / f"small-cp{r}")}
        for n in floor_processes:
            # one store per process count for all rounds, as the repository keeps its data/XX
            runs[f"floor{n}"] = (lambda n=n: object_floor(src, root / f"small-floor-{n}", n))
        order = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
        took = {}
        for name in order:
            took[name] = runs[name]()
            settle()
        took["floor"] = min(took[f"floor{n}"] for n in floor_processes)
        took_all.append(took)
        floors = ", ".join(f"{n} {count / took[f'floor{n}']:,.0f}" for n in floor_processes)
        print(f"   round {r + 1}: {count / took['ours']:8,.0f} files/s vs tar -x + sync "
              f"{count / took['tar']:8,.0f} files/s = {took['tar'] / took['ours']:.2f}, "
              f"cp -r + sync {count / took['cp']:8,.0f} files/s = "
              f"{took['cp'] / took['ours']:.2f}; floor (processes: files/s) {floors}  "
              f"(load {load()})", flush=True)

    def rates(name: str) -> str:
        return spread([count / t[name] for t in took_all])

    def ratio(num: str, den: str) -> str:
        return spread([t[num] / t[den] for t in took_all], "{:.2f}")

    print(f"3. {count} small files (1-4 KiB, 100 dirs): {rates('ours')} files/s   tar -x + sync "
          f"{rates('tar')} files/s   ratio {ratio('tar', 'ours')} (target >= 2); "
          f"cp -r + sync {rates('cp')} files/s   ratio {ratio('cp', 'ours')}")
    for n in floor_processes:
        print(f"   object floor, {n} process{'es' if n > 1 else ''} (the objects created from "
              f"memory, then syncfs): {rates(f'floor{n}')} files/s = "
              f"{ratio('tar', f'floor{n}')} x tar -x + sync")
    print(f"   fastest floor of each round = {ratio('tar', 'floor')} x tar -x + sync (no publish "
          f"can pass it); ours / fastest floor {ratio('floor', 'ours')}")
    swing = filesystem_swing([count / t["tar"] for t in took_all])
    if swing:
        print(swing)
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


def _counts(text: str) -> list[int]:
    """``--floor-processes``: a comma-separated list of positive counts."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be at least 1: {text!r}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small-files", type=int, default=10_000)
    ap.add_argument("--artifacts", type=int, default=1000)
    ap.add_argument("--files-per-artifact", type=int, default=100)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5,
                    help="rounds of 1-3, each with its own baseline (medians are printed)")
    ap.add_argument("--dir", "--workdir", dest="dir", type=Path, default=None,
                    help="where to work: the filesystem under test (default: beside the "
                         "data directory)")
    ap.add_argument("--only", choices=["big", "small", "latency"], default=None)
    ap.add_argument("--floor-processes", type=_counts, default=[os.cpu_count() or 1],
                    metavar="N[,N...]",
                    help="process counts of the small-file object floor (default: one per "
                         "core); 1,2,4 shows whether creating files scales with processes here")
    ap.add_argument("--keep", action="store_true",
                    help="leave the scratch directory instead of deleting it: on ext4 without "
                         "a journal, deleting its files slows the small-file rounds of a run "
                         "started within six minutes (README, \"Benchmarks\")")
    ap.add_argument("--only-namespaces", action="store_true",
                    help="run only 5. (hierarchical names: deep publishes, prefix listing)")
    args = ap.parse_args()
    base = args.dir or default_dir()
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-publish-", dir=base))
    repeat = max(1, args.repeat)
    print(f"publish benchmark ({os.cpu_count()} CPUs, in {root}, {repeat} rounds)")
    note = journal_note(root)  # reads /proc and /sys: once
    if note:
        print(note)
    try:
        # Small files first: freeing gigabytes on a filesystem mounted with discard stalls
        # metadata operations for a while afterwards.
        if args.only_namespaces:
            bench_namespaces(root, args.artifacts, args.files_per_artifact, args.samples)
            return
        if args.only in (None, "small"):
            bench_small(root, args.small_files, repeat, args.floor_processes)
        if args.only in (None, "latency"):
            bench_latency(root, args.artifacts, args.files_per_artifact, args.samples)
        if args.only in (None, "big"):
            bench_big(root, args.size_mib * 2**20, repeat)
        if args.only is None:
            bench_namespaces(root, args.artifacts, args.files_per_artifact, args.samples)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
