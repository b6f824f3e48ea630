"""Upload service benchmark: every figure printed beside a baseline measured in the same run.

Runs the real server (``python -m runtime serve``, a separate process so that its memory can
be measured alone) on loopback, against a data directory under ``--dir`` (default: beside the
data directory, ``CVMFS_EPHEMERAL_DATA_DIR`` or ``var/data``: the filesystem the server
writes to, not a fresh loop mount), and measures:

1. a 1 GiB upload (MiB/s) vs writing + fsyncing as many bytes to a file right before it
   (and, for context, an O_DIRECT write of them);
2. a 10,000-file tarball with ``unpack=true`` (files/s) vs ``tar -x`` of the same archive +
   ``sync`` on the same filesystem (and Python's ``tarfile``); the first round is the first
   unpack after the server started (``--fresh-server``: a new server before every round), and
   the slowest round is printed against the median (target: none slower than 2x);
3. 8 x 128 MiB concurrent uploads, raw PUT and multipart POST, each into a fresh server
   process: aggregate MiB/s vs the single upload, and the server's peak RSS vs its idle RSS;
4. the server's peak RSS during a 4 GiB upload vs its RSS when idle;
5. publish -> subscriber latency over 200 publishes (p50/p99) vs an HTTP round trip.

Usage: ``python bench/upload.py [--dir DIR] [--quick] [--only tarball,...] [--repeat N]
[--files N] [--fresh-server]`` (``--quick``: small sizes, a smoke run; ``--only``: a subset of
the measurements above; ``--repeat``: how many times 1 and 2 run, default 5, each with new
content and its own baseline; every round is printed, then median [min–max]).
Big files are deleted at the end. The throughput uploads are sent by ``curl`` (separate
processes, like CI jobs) when it is installed, else by httpx.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.baselines import (default_dir, direct_write, filesystem_swing,  # noqa: E402
                             journal_note, load, spread, tar_extract_sync)
from tests.serverproc import ServeProcess  # noqa: E402
FQRN = "bench.example.org"
TOKEN = "bench-token"
MiB = 1024 * 1024
BLOCK = MiB


def payload(total: int, seed: int) -> "iter[bytes]":
    """``total`` bytes of incompressible, never-repeating data, 1 MiB at a time, cheaply."""
    base = bytearray(os.urandom(BLOCK))
    sent, n = 0, 0
    while sent < total:
        size = min(BLOCK, total - sent)
        base[:16] = seed.to_bytes(8, "little") + n.to_bytes(8, "little")
        yield bytes(base[:size])
        sent += size
        n += 1


class Server(ServeProcess):
    """The server as its own process (its RSS alone), its stdout shown like the bench's."""

    #: The repository's ``compression`` (``--compression``).
    compression = "none"

    def __init__(self, workdir: Path):
        super().__init__({"CVMFS_EPHEMERAL_DATA_DIR": str(workdir / "data"),
                          "CVMFS_EPHEMERAL_KEYS_DIR": str(workdir / "keys"),
                          "CVMFS_EPHEMERAL_REPOSITORIES": json.dumps(
                              [{"fqrn": FQRN, "compression": self.compression}]),
                          "CVMFS_EPHEMERAL_TOKENS": TOKEN,
                          "CVMFS_EPHEMERAL_MAX_ARTIFACT_BYTES": str(5 * 1024**3)},
                         stdout=None)


CURL = shutil.which("curl")


def prepare(workdir: Path, name: str, size: int, seed: int) -> Path:
    """The payload as a file (untimed), for a client that sends from disk like a CI job."""
    path = workdir / f"{name}.payload"
    with open(path, "wb") as fh:
        for block in payload(size, seed):
            fh.write(block)
    return path


def put(url: str, name: str, size: int, seed: int, source: Path | None = None,
        **params) -> tuple[float, dict]:
    """Upload and time it. With ``source`` and curl available, curl sends the file: a
    separate C client process, as a CI job would be, so the measurement is the server's and
    not that of a Python client sharing the two cores (8 httpx threads in one process are
    GIL-bound long before the server is)."""
    if source is not None and CURL:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        target = f"{url}/repos/{FQRN}/{name}" + (f"?{query}" if query else "")
        started = time.perf_counter()
        out = subprocess.run([CURL, "-sS", "--fail-with-body", "-H",
                              f"Authorization: Bearer {TOKEN}", "-T", str(source), target],
                             capture_output=True, check=True).stdout
        return time.perf_counter() - started, json.loads(out)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Length": str(size)}
    started = time.perf_counter()
    with httpx.Client(timeout=None) as c:
        r = c.put(f"{url}/repos/{FQRN}/{name}", params=params, headers=headers,
                  content=payload(size, seed))
    elapsed = time.perf_counter() - started
    r.raise_for_status()
    return elapsed, r.json()


def baseline_write(path: Path, size: int) -> float:
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in payload(size, 999):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


def make_tarball(files: int, seed: int = 0) -> bytes:
    """``files`` small files (10-600 bytes) in directories of 500, all distinct per ``seed``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(files):
            data = (b"file %d.%d " % (seed, i)) * (1 + i % 60)
            info = tarfile.TarInfo(f"d{i // 500:03d}/f{i:05d}.txt")
            info.size = len(data)
            info.mtime = 1704067200
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def bench_tarball(url: str, workdir: Path, files: int, seed: int) -> tuple[float, float, float]:
    """files/s: uploading with unpack=true, ``tar -x`` + sync of the same archive, and
    ``tarfile`` extract + sync. Alternating which goes first; nothing is deleted until the
    end (right after mass deletions ext4 creates files several times slower for seconds)."""
    data = make_tarball(files, seed)
    archive = workdir / f"tarball{seed}.tar"
    archive.write_bytes(data)
    os.sync()

    def ours() -> float:
        started = time.perf_counter()
        r = httpx.put(f"{url}/repos/{FQRN}/tarball{seed}", params={"unpack": "true"},
                      content=data, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=None)
        elapsed = time.perf_counter() - started
        r.raise_for_status()
        assert r.json()["files"] == files, r.text
        return elapsed

    def tar_x() -> float:
        return tar_extract_sync(archive, workdir / f"tar-x{seed}")

    def tarfile_x() -> float:
        out = workdir / f"tarfile-x{seed}"
        started = time.perf_counter()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            tar.extractall(out, filter="data")
        os.sync()
        return time.perf_counter() - started

    if seed % 2:
        base = tar_x()
        os.sync()
        up = ours()
    else:
        up = ours()
        os.sync()
        base = tar_x()
    os.sync()
    py = tarfile_x()
    return files / up, files / base, files / py


def bench_latency(url: str, count: int) -> tuple[list[float], list[float], list[float]]:
    """Per publish: request sent -> subscriber has the event; minus the server's own staging
    and commit time (what is left is HTTP overhead + notification delivery)."""
    events: dict[int, float] = {}
    ready = threading.Event()
    body = json.dumps({"version": 1, "repository": FQRN})

    def listen() -> None:
        buf = b""
        with httpx.stream("GET", f"{url}/api/v1/notifications/subscribe", content=body,
                          timeout=None) as r:
            for piece in r.iter_raw():
                now = time.perf_counter()
                buf += piece
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    import base64
                    msg = json.loads(event[6:])
                    blob = base64.b64decode(msg["manifest"])
                    rev = int(blob.split(b"\nS", 1)[1].split(b"\n", 1)[0])
                    events[rev] = now
                    ready.set()
                if len(events) > count:
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    ready.wait(10)
    e2e, notify, rtt = [], [], []
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        for i in range(count):
            s = time.perf_counter()
            c.get(f"{url}/healthz")
            rtt.append(time.perf_counter() - s)
            sent = time.perf_counter()
            r = c.put(f"{url}/repos/{FQRN}/lat", params={"overwrite": "true"},
                      content=b"latency %d" % i)
            r.raise_for_status()
            info = r.json()
            deadline = time.monotonic() + 10
            while info["revision"] not in events and time.monotonic() < deadline:
                time.sleep(0.0005)
            got = events[info["revision"]] - sent
            e2e.append(got)
            notify.append(max(0.0, got - info["upload_time_s"] - info["publish_time_s"]))
    return e2e, notify, rtt


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


MEASUREMENTS = ("single", "tarball", "concurrent", "latency", "rss")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the server's data goes: the filesystem under test (default: "
                         "beside the data directory)")
    ap.add_argument("--files", type=int, default=None, help="files in the tarball (10,000)")
    ap.add_argument("--fresh-server", action="store_true",
                    help="start a new server before every tarball round")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true",
                    help="leave the data directory instead of deleting it: on ext4 without a "
                         "journal, deleting its objects slows the first round of a run started "
                         "within six minutes (README, \"Benchmarks\")")
    ap.add_argument("--only", default=",".join(MEASUREMENTS),
                    help=f"comma list of measurements to run, of {', '.join(MEASUREMENTS)}")
    ap.add_argument("--repeat", type=int, default=5,
                    help="single and tarball uploads, each of different content, each paired "
                         "with its own baseline; medians are reported")
    ap.add_argument("--compression", choices=("none", "zlib"), default="none",
                    help="the repository's compression (default none)")
    ap.add_argument("--concurrent-mib", type=int, default=None,
                    help="size of each of the 8 concurrent uploads (default 128, --quick 16)")
    args = ap.parse_args()
    Server.compression = args.compression
    only = set(args.only.split(","))
    if only - set(MEASUREMENTS):
        ap.error(f"unknown measurement(s): {', '.join(sorted(only - set(MEASUREMENTS)))}")
    q = args.quick
    single = (64 if q else 1024) * MiB
    each = (args.concurrent_mib or (16 if q else 128)) * MiB
    huge = (256 if q else 4096) * MiB
    files = args.files or (1000 if q else 10_000)
    publishes = 20 if q else 200
    workdir = Path(tempfile.mkdtemp(prefix="bench-upload-", dir=args.dir or default_dir()))
    server = Server(workdir)
    try:
        rows = []
        single_mibs = None
        if only & {"single", "concurrent"}:
            # The disk's speed here swings several-fold within a minute, so each upload is
            # paired with a baseline written right before it, and the ratios are compared.
            pairs, single_peaks = [], []
            for seed in range(1, max(1, args.repeat) + 1):
                source = prepare(workdir, f"single{seed}", single, seed)
                os.sync()
                base_s = baseline_write(workdir / "baseline.bin", single)
                with PeakRss(server) as rss:
                    up_s, _ = put(server.url, f"single{seed}", single, seed, source)
                os.sync()
                direct_s = direct_write(source, workdir / "direct.bin")
                source.unlink()
                pairs.append((single / MiB / up_s, single / MiB / base_s))
                single_peaks.append(rss.peak)
                ctx = f"; O_DIRECT {single / MiB / direct_s:7.1f} MiB/s" if direct_s else ""
                print(f"   single round {seed}: {single / MiB / up_s:7.1f} MiB/s vs write+fsync "
                      f"{single / MiB / base_s:7.1f} = {base_s / up_s:.2f}{ctx}  "
                      f"(load {load()})", flush=True)
            ratios = [u / b for u, b in pairs]
            single_mibs = statistics.median(u for u, _ in pairs)
            rows.append((f"single upload {single // MiB} MiB",
                         f"{spread([u for u, _ in pairs], '{:.1f}')} MiB/s",
                         f"raw write+fsync {spread([b for _, b in pairs], '{:.1f}')} MiB/s",
                         f"ratio {spread(ratios, '{:.2f}')} (target >= 0.8); "
                         f"server peak RSS {max(single_peaks) / MiB:.1f} MiB"))

        if "tarball" in only:
            rates, bases, pys = [], [], []
            for seed in range(max(1, args.repeat)):
                if args.fresh_server and seed:
                    server.stop()
                    server = Server(workdir)  # same data directory, new process
                up, base, py = bench_tarball(server.url, workdir, files, seed)
                rates.append(up)
                bases.append(base)
                pys.append(py)
                first = " (first unpack after the server started)" if seed == 0 or \
                    args.fresh_server else ""
                print(f"   tarball round {seed + 1}: {up:8,.0f} files/s vs tar -x + sync "
                      f"{base:8,.0f} = {up / base:.2f}; tarfile {py:8,.0f}  (load {load()})"
                      f"{first}", flush=True)
            median = statistics.median(rates)
            ratios = [u / b for u, b in zip(rates, bases)]
            rows.append((f"tarball {files} files, unpack=true", f"{spread(rates)} files/s",
                         f"tar -x + sync {spread(bases)} files/s",
                         f"ratio {spread(ratios, '{:.2f}')}; tarfile {spread(pys)}; slowest "
                         f"round {median / min(rates):.2f}x the median time (target <= 2, "
                         f">= 20,000 files/s)"))
            swing = filesystem_swing(bases)
            if swing:
                print(swing)

        if "concurrent" in only:
            server.stop()
            for kind in ("raw", "multipart"):
                rows.append(bench_concurrent(workdir, kind, each, single_mibs))
            server = Server(workdir)

        if "latency" in only:
            e2e, notify, rtt = bench_latency(server.url, publishes)
            rows.append((f"publish->subscriber, {publishes} publishes",
                         f"p50 {pct(notify, 50) * 1000:.1f} ms p99 {pct(notify, 99) * 1000:.1f} ms",
                         f"HTTP round trip p50 {pct(rtt, 50) * 1000:.1f} ms "
                         f"p99 {pct(rtt, 99) * 1000:.1f} ms",
                         f"upload->event p50 {pct(e2e, 50) * 1000:.1f} ms "
                         f"p99 {pct(e2e, 99) * 1000:.1f} ms (target p99 < 100 ms)"))

        if "rss" in only:
            server.stop()
            # a fresh server process, so that the peak is that of the big upload alone
            server = Server(workdir / "rss")
            rows.append(bench_rss(server, huge))

        print(f"\nupload benchmark ({os.cpu_count()} CPUs, data in {workdir}, "
              f"compression {args.compression})")
        note = journal_note(workdir)  # reads /proc and /sys: once
        if note:
            print(note)
        for row in rows:
            print(f"  {row[0]:40} {row[1]:>24}   vs {row[2]:36} {row[3]}")
    finally:
        server.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


class PeakRss:
    """The server's peak RSS over a ``with`` block: the kernel's high-water mark (VmHWM after
    ``clear_refs``) where it can be reset, else the highest of samples every 50 ms."""

    def __init__(self, server: Server):
        self.server = server
        self.peak = 0

    def __enter__(self) -> "PeakRss":
        self.idle = self.server.status("VmRSS")
        self.exact = self.server.reset_peak()
        self.peak = self.idle
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.status("VmRSS"))
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        self._stop.set()
        self._sampler.join()
        if self.exact:
            self.peak = self.server.status("VmHWM")


def put_multipart(url: str, name: str, source: Path) -> float:
    """The seed-compatible ``POST /repos/<repo>`` (field ``file``), sent by curl ``-F``."""
    started = time.perf_counter()
    if CURL:
        subprocess.run([CURL, "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {TOKEN}",
                        "-F", f"file=@{source};filename={name}", f"{url}/repos/{FQRN}"],
                       capture_output=True, check=True)
    else:
        with open(source, "rb") as fh, httpx.Client(timeout=None) as c:
            c.post(f"{url}/repos/{FQRN}", headers={"Authorization": f"Bearer {TOKEN}"},
                   files={"file": (name, fh)}).raise_for_status()
    return time.perf_counter() - started


def bench_concurrent(workdir: Path, kind: str, each: int,
                     single_mibs: float | None) -> tuple[str, str, str, str]:
    """8 uploads of ``each`` bytes at once (``raw`` PUT or ``multipart`` POST) into a fresh
    server process: aggregate MiB/s and the server's peak RSS beside its idle RSS."""
    sources = [prepare(workdir, f"conc{i}", each, 100 + i) for i in range(8)]
    os.sync()
    server = Server(workdir / f"concurrent-{kind}")
    try:
        def one(i: int) -> None:
            if kind == "raw":
                put(server.url, f"conc{i}", each, 100 + i, sources[i])
            else:
                put_multipart(server.url, f"conc{i}", sources[i])
        with PeakRss(server) as rss:
            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(one, range(8)))
            conc_s = time.perf_counter() - started
    finally:
        server.stop()
        for source in sources:
            source.unlink()
    conc_mibs = 8 * each / MiB / conc_s
    versus = f"ratio {conc_mibs / single_mibs:.2f} to the single upload; " if single_mibs else ""
    return (f"8 x {each // MiB} MiB concurrent, {kind}",
            f"{conc_mibs:8.1f} MiB/s, peak RSS {rss.peak / MiB:6.1f} MiB",
            f"idle RSS {rss.idle / MiB:8.1f} MiB",
            f"{versus}target peak RSS < 256 MiB")


def bench_rss(server: Server, huge: int) -> tuple[str, str, str, str]:
    """The server's peak RSS while one ``huge`` upload streams through it."""
    with PeakRss(server) as rss:
        put(server.url, "huge", huge, 7)
    idle, hwm = rss.idle, rss.peak
    return (f"server peak RSS, {huge // MiB} MiB upload", f"{hwm / MiB:8.1f} MiB",
            f"idle RSS {idle / MiB:8.1f} MiB", "target < 256 MiB")


if __name__ == "__main__":
    main()
