"""Same-run baselines and summaries shared by bench/publish.py and bench/upload.py.

Every figure a benchmark prints stands beside one of these, measured in the same run on the
same filesystem, so that a shared or noisy machine shifts both and the ratio stays readable:

- :func:`direct_write`: the device's own write speed (``O_DIRECT``, no page cache);
- :func:`zlib_single`: one single-core pass of stock zlib at the default level;
- :func:`tar_extract_sync`: ``tar -x`` of an archive plus ``sync -f`` of its filesystem, what
  creating the same files with the system's own C tools costs;
- :func:`copy_tree_sync`: ``cp -r`` of a tree plus ``sync -f``, what the system's own tool
  pays for what a local publish of that tree must do at the least: read every file and create
  a durable copy of each (``tar -x`` reads one archive instead of one file per file);
- :func:`object_floor`: the work no publish of a tree can skip, done as cheaply as the kernel
  allows: every file's bytes already in memory and hashed, then one new object file per file in
  the 256 ``data/XX`` directories, created by one process per core, and one ``syncfs``. A
  publish also reads the sources, hashes them and writes and signs a catalog, so no publish
  on this filesystem and these cores can beat this figure.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

BLOCK = 8 * 1024 * 1024


def default_dir() -> Path:
    """Beside the data directory the server would use (``CVMFS_EPHEMERAL_DATA_DIR``, default
    ``var/data``): the filesystem the figures are about, not a fresh loop mount."""
    data = Path(os.environ.get("CVMFS_EPHEMERAL_DATA_DIR", "var/data"))
    base = data.resolve().parent
    base.mkdir(parents=True, exist_ok=True)
    return base


def make_small_files(src: Path, count: int, seed: int, dirs: int = 100) -> None:
    """``count`` files of 1-4 KiB of random bytes in ``dirs`` directories, distinct per seed."""
    rnd = random.Random(seed)
    for d in range(dirs):
        (src / f"d{d:03d}").mkdir(parents=True)
    for i in range(count):
        (src / f"d{i % dirs:03d}" / f"f{i:05d}.bin").write_bytes(
            rnd.randbytes(rnd.randint(1024, 4096)))


def direct_write(src: Path, dst: Path) -> float | None:
    """Seconds to copy ``src`` to ``dst`` with ``O_DIRECT`` and fsync; None where unsupported."""
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT requires
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError:
        return None
    started = time.perf_counter()
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
    elapsed = time.perf_counter() - started
    dst.unlink()
    return elapsed


def zlib_single(src: Path) -> float:
    """Seconds for one single-core stock zlib pass (level 6) over ``src``, 8 MiB at a time."""
    started = time.perf_counter()
    with open(src, "rb") as fin:
        while block := fin.read(BLOCK):
            zlib.compress(block, 6)
    return time.perf_counter() - started


def tar_extract_sync(archive: Path, out: Path) -> float:
    """Seconds for ``tar -xf archive -C out`` followed by ``sync -f out`` (``out`` is created).

    ``sync -f`` (``syncfs``) flushes the filesystem under test only, as a publish does: a
    plain ``sync`` also waits for every other filesystem's dirty pages, which on a shared
    machine made the baseline several times slower whenever someone else was writing.
    """
    out.mkdir(parents=True)
    started = time.perf_counter()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    _syncfs(out)
    return time.perf_counter() - started


def _syncfs(path: Path) -> None:
    if subprocess.run(["sync", "-f", str(path)], capture_output=True).returncode:
        os.sync()  # a sync without -f (not coreutils): everything


def copy_tree_sync(src: Path, out: Path) -> float:
    """Seconds for ``cp -r src out`` followed by ``sync -f out`` (``out`` must not exist)."""
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(out)], check=True)
    _syncfs(out)
    return time.perf_counter() - started


def object_floor(src: Path, out: Path, workers: int | None = None) -> float:
    """Seconds for ``workers`` processes (default: one per core) to create one object file per
    file of ``src`` under ``out/data/XX/``, from bytes read and hashed beforehand, followed by
    ``syncfs``: the lower bound of a local publish of ``src`` (module docstring).

    Untimed: reading and hashing the files, creating the 256 directories (a repository has them
    from its first publish on; they are reused when ``out`` is, so that later rounds create
    their objects in directories as old as the repository's), the objects' paths and starting
    the processes, which wait on a pipe for the start. Each process then makes the three system
    calls a new object needs (open, write, close) and nothing else.
    """
    data = out / "data"
    for i in range(256):
        (data / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    by_path: dict[str, bytes] = {}  # equal contents are one object, as in a publish
    for file in sorted(src.rglob("*")):
        if file.is_file():
            blob = file.read_bytes()
            digest = hashlib.sha1(blob).hexdigest()
            by_path[f"{data}/{digest[:2]}/{digest[2:]}"] = blob
    paths, blobs = list(by_path), list(by_path.values())
    count = workers or os.cpu_count() or 1
    go_read, go_write = os.pipe()
    children = []
    for worker in range(count):
        pid = os.fork()
        if pid == 0:  # the child: wait for the start, create its share, exit without cleanup
            code = 1
            try:
                os.close(go_write)
                os.read(go_read, 1)
                for path, blob in zip(paths[worker::count], blobs[worker::count]):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    os.write(fd, blob)
                    os.close(fd)
                code = 0
            except OSError as exc:
                print(f"object_floor worker {worker}: {exc}", file=sys.stderr)
            finally:
                os._exit(code)
        children.append(pid)
    os.close(go_read)
    started = time.perf_counter()
    os.write(go_write, b"x" * count)
    os.close(go_write)
    failed = [pid for pid in children if os.waitpid(pid, 0)[1]]
    _syncfs(out)
    elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"object_floor: {len(failed)} of {count} workers failed")
    return elapsed


def have_tar() -> bool:
    return shutil.which("tar") is not None


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """``median [min–max]`` of ``values``."""
    return (f"{fmt.format(statistics.median(values))} "
            f"[{fmt.format(min(values))}–{fmt.format(max(values))}]")


#: ``tar -x`` + ``sync`` rounds this far apart mean the filesystem, not the code, set the pace.
SWING = 3.0


def filesystem_swing(tar_rates: list[float]) -> str | None:
    """A warning when the ``tar -x`` + ``sync`` baseline swung more than :data:`SWING`-fold
    across the rounds of one run: on ext4 without a journal, creating files in some block
    groups (or right after a mass deletion nearby) costs ten times the CPU it costs in others,
    for ``tar`` and for us alike (README, "Benchmarks"). Rounds measured there say more about
    where the files landed than about the code."""
    if len(tar_rates) < 2 or min(tar_rates) <= 0 or max(tar_rates) / min(tar_rates) <= SWING:
        return None
    return (f"   note: tar -x + sync swung {max(tar_rates) / min(tar_rates):.1f}-fold across "
            "the rounds (the block-group effect, README \"Benchmarks\"); compare rounds with "
            "their own baseline, and start runs six minutes after any mass deletion")


def journal_note(path: Path) -> str | None:
    """The server's own start-up warning (runtime/repository/filesystem.py) when ``path`` is on
    ext4 without a journal, where the rounds after a mass deletion (the previous run's cleanup)
    create files several times slower: the reader then knows to wait six minutes between runs
    or to read the rounds one by one."""
    from runtime.repository.filesystem import object_store_warnings

    warnings = object_store_warnings(path)
    return f"   note: {warnings[0]}" if warnings else None


def load() -> str:
    """The 1-minute load average, printed beside each round: on a shared machine it says
    which rounds were measured under someone else's load."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"
