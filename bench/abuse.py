"""Hostile-upload benchmark: what each class of abusive archive costs the server, beside the
server's own baseline measured in the same run.

Runs the real server (``python -m runtime serve``, a separate process so that its memory is
its own) on loopback and prints:

1. baseline: the server's idle RSS, and ``/healthz`` latency with no load (median, worst);
2. peak server RSS (``VmHWM``, reset before each class through ``/proc/<pid>/clear_refs``)
   for each hostile class: a PAX-header bomb (.tar.gz, 256 MiB header), a GNU long-name bomb,
   an image archive whose metadata inflates to 256 MiB; for four hostile uploads at once (two
   header bombs, two metadata bombs); and last for a legitimate archive of 1M empty files
   (last because the heap it grows stays grown);
3. the worst ``/healthz`` latency during the 1M-entry upload (polled every 50 ms), split into
   the staging (parsing) and commit phases;
4. the time for a 10,000-file tar, alone and with 16 stalled archive uploads (bodies that
   stop sending) to another repository: the ratio shows whether the unpack pool is fair.

Usage: ``python bench/abuse.py [--dir DIR] [--entries N] [--repeat N]`` (``--entries``: files of
the many-entries class, default 1,000,000; ``--repeat``: runs of 4, medians printed).
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serverproc import ServeProcess  # noqa: E402
FQRN = "bench.example.org"
STALLED = "stalled.example.org"
TOKEN = "bench-token"
MiB = 1024 * 1024


class Server(ServeProcess):
    """The server as its own process (its RSS alone): FQRN and the STALLED repository."""

    def __init__(self, workdir: Path):
        super().__init__({"CVMFS_EPHEMERAL_DATA_DIR": str(workdir / "data"),
                          "CVMFS_EPHEMERAL_KEYS_DIR": str(workdir / "keys"),
                          "CVMFS_EPHEMERAL_REPOSITORIES": f"{FQRN},{STALLED}",
                          "CVMFS_EPHEMERAL_TOKENS": TOKEN})

    def reset_peak(self) -> bool:
        """The peaks this bench reports need the reset: refuse to go on without it."""
        if not super().reset_peak():
            raise RuntimeError(f"cannot reset VmHWM of pid {self.pid} (clear_refs)")
        return True


# --- hostile archives -------------------------------------------------------------------------

def _header(name: str, typeflag: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, typeflag, 1704067200
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _gzip(pieces: Iterator[bytes]) -> bytes:
    co = zlib.compressobj(6, wbits=31)
    return b"".join([co.compress(p) for p in pieces] + [co.flush()])


def header_bomb(typeflag: bytes, inflated: int = 256 * MiB) -> bytes:
    def pieces() -> Iterator[bytes]:
        yield _header("././@bomb", typeflag, inflated)
        block = b"a" * MiB
        for _ in range(inflated // MiB):
            yield block
        yield bytes(1024)
    return _gzip(pieces())


def metadata_bomb(total: int = 256 * MiB, each: int = 16 * MiB - 1) -> bytes:
    """An "image": manifest.json first, then 16 MiB metadata blobs until ``total``."""
    def pieces() -> Iterator[bytes]:
        manifest = json.dumps([{"Config": "x.json", "Layers": []}]).encode()
        yield _header("manifest.json", tarfile.REGTYPE, len(manifest)) + manifest
        yield bytes(-len(manifest) % 512)
        zeros = bytes(MiB)
        for i in range(total // each + 1):
            yield _header(f"blobs/sha256/{i:064x}", tarfile.REGTYPE, each)
            for _ in range(each // MiB):
                yield zeros
            yield bytes(each % MiB) + bytes(-each % 512)
        yield bytes(1024)
    return _gzip(pieces())


def empty_files(count: int) -> bytes:
    def pieces() -> Iterator[bytes]:
        batch = []
        for i in range(count):
            d, f = divmod(i, 1000)
            batch.append(_header(f"d{d:04d}/f{f:04d}", tarfile.REGTYPE, 0))
            if len(batch) == 4096:
                yield b"".join(batch)
                batch = []
        yield b"".join(batch) + bytes(1024)
    return _gzip(pieces())


def small_files_tar(files: int, seed: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(files):
            data = b"%d-%d\n" % (seed, i) * (1 + i % 20)
            info = tarfile.TarInfo(f"d{i % 50}/f{i}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- measurements -----------------------------------------------------------------------------

def put(url: str, name: str, data: bytes, fqrn: str = FQRN) -> httpx.Response:
    with httpx.Client(timeout=3600, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        return c.put(f"{url}/repos/{fqrn}/{name}", params={"unpack": "true"}, content=data)


def healthz_latencies(url: str, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    """(when, latency) of /healthz polled every 50 ms until ``stop``."""
    with httpx.Client(timeout=60) as c:
        while not stop.is_set():
            t = time.perf_counter()
            c.get(url + "/healthz")
            out.append((t, time.perf_counter() - t))
            time.sleep(0.05)


def peak_of(server: Server, uploads: list[tuple[str, bytes]], watch_healthz: bool = False
            ) -> tuple[int, list[httpx.Response], list[tuple[float, float]], float]:
    """Peak RSS while ``uploads`` run at once; their answers; /healthz latencies meanwhile;
    when the uploads started."""
    server.reset_peak()
    lat: list[tuple[float, float]] = []
    started = time.perf_counter()
    stop = threading.Event()
    poller = threading.Thread(target=healthz_latencies, args=(server.url, stop, lat))
    if watch_healthz:
        poller.start()
    with ThreadPoolExecutor(len(uploads)) as pool:
        results = list(pool.map(lambda u: put(server.url, *u), uploads))
    stop.set()
    if watch_healthz:
        poller.join()
    return server.status("VmHWM"), results, lat, started


def stall(url: str, name: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"PUT /repos/{STALLED}/{name}?unpack=true HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100000000\r\n\r\n")
    sock.sendall(head.encode() + small_files_tar(3, 0)[:2048])
    return sock


def timed_put(url: str, name: str, data: bytes) -> float:
    t = time.perf_counter()
    r = put(url, name, data)
    assert r.status_code == 200, r.text
    return time.perf_counter() - t


def mib(n: float) -> str:
    return f"{n / MiB:7.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only-many", action="store_true",
                    help="run only the legitimate many-entry archive (faster iteration)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-abuse-", dir=args.dir))
    print("preparing archives ...", flush=True)
    pax, gnu = header_bomb(tarfile.XHDTYPE), header_bomb(tarfile.GNUTYPE_LONGNAME)
    meta, many = metadata_bomb(), empty_files(args.entries)
    server = Server(workdir)
    try:
        time.sleep(1)
        idle = server.status("VmRSS")
        with httpx.Client(timeout=10) as c:
            base_lat = []
            for _ in range(50):
                t = time.perf_counter()
                c.get(server.url + "/healthz")
                base_lat.append(time.perf_counter() - t)
        print(f"baseline: idle RSS {mib(idle)}; /healthz with no load median "
              f"{statistics.median(base_lat) * 1000:.1f} ms, worst {max(base_lat) * 1000:.1f} ms")
        print(f"{'hostile class':40} {'wire':>9} {'status':>8} {'peak RSS':>12}")
        classes = [("PAX header bomb (256 MiB header)", pax),
                   ("GNU long-name bomb (256 MiB name)", gnu),
                   ("image metadata bomb (256 MiB JSON)", meta)]
        if args.only_many:
            classes = []
        for label, data in classes:
            peak, answers, _, _ = peak_of(server, [("bomb", data)])
            print(f"{label:40} {len(data) / 1024:6.0f} KiB {answers[0].status_code:>8} "
                  f"{mib(peak)}", flush=True)
        if not args.only_many:
            peak, answers, _, _ = peak_of(server, [("b1", pax), ("b2", gnu), ("b3", meta),
                                                   ("b4", meta)])
            codes = ",".join(str(a.status_code) for a in answers)
            print(f"{'four at once (PAX, GNU, 2 x metadata)':40} {'':10} {codes:>8} {mib(peak)}",
                  flush=True)
        # last: a legitimate archive this large leaves the process's heap grown
        peak, answers, lat, started = peak_of(server, [("many", many)], watch_healthz=True)
        body = answers[0].json() if answers[0].status_code == 200 else {}
        print(f"{f'{args.entries:,} empty files (.tar.gz)':40} {len(many) / 1024:6.0f} KiB "
              f"{answers[0].status_code:>8} {mib(peak)}  (staging {body.get('upload_time_s', 0):.1f} s"
              f", commit {body.get('publish_time_s', 0):.1f} s)", flush=True)
        parse_end = started + body.get("upload_time_s", 0)
        during_parse = [l for t, l in lat if t <= parse_end] or [0.0]
        during_commit = [l for t, l in lat if t > parse_end] or [0.0]
        print(f"  worst /healthz during that upload: {max(l for _, l in lat) * 1000:.0f} ms over "
              f"{len(lat)} polls (median {statistics.median(l for _, l in lat) * 1000:.1f} ms);"
              f" while parsing {max(during_parse) * 1000:.0f} ms, while committing "
              f"{max(during_commit) * 1000:.0f} ms; baseline worst {max(base_lat) * 1000:.1f} ms",
              flush=True)

        alone, loaded = [], []
        for i in range(0 if args.only_many else args.repeat):
            data = small_files_tar(10_000, seed=i + 1)
            alone.append(timed_put(server.url, f"alone{i}", data))
            socks = [stall(server.url, f"stall{i}-{n}") for n in range(16)]
            time.sleep(0.5)
            loaded.append(timed_put(server.url, f"loaded{i}", small_files_tar(10_000, 100 + i)))
            for s in socks:
                s.close()
            time.sleep(0.5)
        if args.only_many:
            return
        a, b = statistics.median(alone), statistics.median(loaded)
        print(f"10,000-file tar: alone {a:.2f} s; with 16 stalled uploads to another repository "
              f"{b:.2f} s; ratio {b / a:.2f} (median of {args.repeat})")
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    main()
