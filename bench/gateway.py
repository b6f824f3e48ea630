"""Notification fan-out of one gateway process, each figure beside a baseline of the same run.

Starts ``python -m runtime serve --role gateway`` on loopback (its own process, so its RSS is
its own) and subscriber processes speaking the real subscriber's request over raw asyncio
sockets, then prints:

1. baseline: publish -> subscriber latency p50/p99 over 50 publishes with ONE subscriber;
2. subscribers held (target 10,000), as the clients and the gateway's own gauge count them;
3. gateway RSS: idle (1 subscriber) and per 1,000 subscribers;
4. publish -> LAST subscriber latency p50/p99 over 50 publishes to all of them (target p99
   < 1 s), the gateway's delivery histogram beside it;
5. the same with 1% of the subscribers not reading their stream (slow consumers), and how many
   of those the gateway dropped.

A publish is the POST a ``cvmfs_swissknife notify -p`` sends, with a freshly signed manifest;
the clock starts before the POST and stops when the last subscriber's socket delivered the
event (CLOCK_MONOTONIC is shared by all processes). Publishes are sequential: the next starts
when every reading subscriber has the previous one (or after 10 s).

Usage: ``python bench/gateway.py [--subscribers 10000] [--publishes 50] [--clients 4]``.
Loopback only, bounded, stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from multiprocessing.connection import Connection, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from tests.serverproc import free_port, proc_status  # noqa: E402

from runtime.cvmfs import keys as keys_mod  # noqa: E402
from runtime.cvmfs import manifest as manifest_mod  # noqa: E402
from runtime.gateway import messages  # noqa: E402

FQRN = "bench.example.org"
EVENT_END = b"\n\n\r\n"  # end of an SSE event and of its HTTP chunk


def lift_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- subscriber processes -----------------------------------------------------------------------

class Stats:
    """Per event (crc32 of its JSON): how many connections got it and when the last did."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.readers = 0
        self.seen: dict[int, list] = {}
        self.heads = 0

    def record(self, key: int, now: float) -> None:
        entry = self.seen.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], now)
        if entry[0] == self.readers:
            self.conn.send(("got", key, entry[1]))


class Stream(asyncio.Protocol):
    def __init__(self, stats: Stats, request: bytes):
        self.stats = stats
        self.request = request
        self.buf = b""
        self.head = False
        self.last_key: int | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self.buf + data
        if not self.head:
            if b"\r\n\r\n" not in buf:
                self.buf = buf
                return
            self.head = True
            self.stats.heads += 1
            buf = buf.split(b"\r\n\r\n", 1)[1]
        while True:
            end = buf.find(EVENT_END)
            if end < 0:
                break
            piece, buf = buf[:end], buf[end + len(EVENT_END):]
            key = zlib.crc32(piece[piece.find(b"data: ") + 6:])
            if key != self.last_key:  # a keep-alive repeats the last event: not a delivery
                self.last_key = key
                self.stats.record(key, now)
        self.buf = buf


async def client_loop(conn: Connection, port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats(conn)
    streams: list[Stream] = []
    body = json.dumps({"version": 1, "repository": FQRN}, separators=(",", ":")).encode()
    request = (b"GET /api/v1/notifications/subscribe HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
               b"User-Agent: cvmfs/2.12.0\r\nAccept: */*\r\nContent-Length: %d\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s"
               % (port, len(body), body))
    commands: asyncio.Queue = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    while True:
        cmd, arg = await commands.get()
        if cmd == "connect":
            for start in range(0, arg, 250):
                batch = [loop.create_connection(lambda: Stream(stats, request), "127.0.0.1", port)
                         for _ in range(min(250, arg - start))]
                for _t, proto in await asyncio.gather(*batch):
                    streams.append(proto)
                want = len(streams)
                deadline = time.monotonic() + 30
                while stats.heads < want and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            stats.readers = len(streams)
            conn.send(("connected", stats.heads))
        elif cmd == "pause":
            for s in streams[:arg]:
                s.transport.pause_reading()  # type: ignore[union-attr]
            stats.readers = len(streams) - arg
            conn.send(("paused", arg))
        elif cmd == "stop":
            for s in streams:
                s.transport.abort()  # type: ignore[union-attr]
            conn.send(("stopped", 0))
            return


def client_main(conn: Connection, port: int) -> None:
    lift_nofile()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(client_loop(conn, port))


# --- the gateway and the publisher --------------------------------------------------------------

def rss_mib(pid: int) -> float:
    return proc_status("VmRSS", pid) / 2**20


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (load-independent cost)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_gateway(work: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, CVMFS_EPHEMERAL_DATA_DIR=str(work / "data"),
               CVMFS_EPHEMERAL_KEYS_DIR=str(work / "keys"), CVMFS_EPHEMERAL_LOG_LEVEL="warning",
               CVMFS_EPHEMERAL_SCHEDULER="false", CVMFS_EPHEMERAL_HOST="127.0.0.1",
               CVMFS_EPHEMERAL_REPOSITORIES=FQRN)
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--role", "gateway",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gateway did not start")


def signed_manifests(keys_dir: Path, count: int) -> list[bytes]:
    key = serialization.load_pem_private_key((keys_dir / f"{FQRN}.key").read_bytes(), None)
    now = int(time.time())
    return [manifest_mod.Manifest(root_hash="0" * 40, root_size=1, ttl=60, revision=rev,
                                  fqrn=FQRN, certificate_hash="1" * 40,
                                  timestamp=now + rev).sign(key)  # type: ignore[arg-type]
            for rev in range(1, count + 1)]


def publish_body(blob: bytes) -> bytes:
    return ('{ "version" : 1, "timestamp" : "now", "type" : "activity", "repository" : "%s", '
            '"manifest" : "%s"}' % (FQRN, base64.b64encode(blob).decode())).encode()


class Bench:
    def __init__(self, port: int, clients: list[Connection]):
        self.url = f"http://127.0.0.1:{port}"
        self.clients = clients
        self.http = httpx.Client(timeout=10)

    def command(self, conns: list[Connection], cmd: str, args: list[int]) -> list[int]:
        """Send each subscriber process its command; their replies (late "got"s skipped)."""
        for c, arg in zip(conns, args):
            c.send((cmd, arg))
        replies = []
        for c in conns:
            while (reply := c.recv())[0] == "got":
                pass
            replies.append(reply[1])
        return replies

    def publish_round(self, conns: list[Connection], blobs: list[bytes]) -> list[float]:
        """Latency to the last reading subscriber of each publish, in seconds."""
        latencies = []
        for blob in blobs:
            key = zlib.crc32(messages.canonical(FQRN, blob).raw)
            pending = set(conns)
            last = 0.0
            t0 = time.monotonic()
            r = self.http.post(self.url + "/api/v1/notifications/publish",
                               content=publish_body(blob))
            assert r.status_code == 200, r.text
            deadline = t0 + 10
            while pending and time.monotonic() < deadline:
                for c in wait(list(pending), timeout=max(0.0, deadline - time.monotonic())):
                    kind, got_key, when = c.recv()
                    if kind == "got" and got_key == key:
                        pending.discard(c)
                        last = max(last, when)
            latencies.append(last - t0 if not pending else float("inf"))
            time.sleep(0.05)
        return latencies

    def metrics(self) -> str:
        return self.http.get(self.url + "/metrics").text


def loopback_write_floor(event: bytes, sockets: int = 1000, repeats: int = 5) -> float:
    """Median seconds for one process to write ``event`` once to each of ``sockets`` loopback
    TCP connections: the floor of any fan-out from one process, whatever serves it."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=sockets)
    clients, servers = [], []
    for _ in range(sockets):
        clients.append(socket.create_connection(listener.getsockname()))
        servers.append(listener.accept()[0])
    for s in servers:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for s in servers:
            s.send(event)
        times.append(time.perf_counter() - t)
        for c in clients:
            c.recv(65536)
    for s in clients + servers + [listener]:
        s.close()
    return statistics.median(times)


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return statistics.median(ordered), p99


def gauge(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--publishes", type=int, default=50)
    ap.add_argument("--clients", type=int, default=4, help="subscriber processes")
    args = ap.parse_args()
    lift_nofile()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    keys_mod.create_missing(work / "keys", FQRN)
    blobs = signed_manifests(work / "keys", 3 * args.publishes)
    port = free_port()
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for _ in range(args.clients):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=client_main, args=(child, port), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
    gw = start_gateway(work, port)
    try:
        bench = Bench(port, pipes)
        n = args.publishes
        print(f"gateway pid {gw.pid}; {args.clients} subscriber processes; {n} publishes each")

        bench.command(pipes[:1], "connect", [1])
        cpu0 = cpu_s(gw.pid)
        base = bench.publish_round(pipes[:1], blobs[:n])
        base_cpu = (cpu_s(gw.pid) - cpu0) / n
        b50, b99 = quantiles(base)
        idle_rss = rss_mib(gw.pid)
        print(f"baseline, 1 subscriber: publish->subscriber p50 {b50 * 1000:.1f} ms, "
              f"p99 {b99 * 1000:.1f} ms; gateway CPU {base_cpu * 1000:.1f} ms per publish; "
              f"gateway RSS {idle_rss:.1f} MiB")

        per = [args.subscribers // args.clients] * args.clients
        per[0] += args.subscribers - sum(per) - 1
        t = time.monotonic()
        held = sum(bench.command(pipes, "connect", per))
        connect_s = time.monotonic() - t
        time.sleep(1.0)
        rss = rss_mib(gw.pid)
        server_view = gauge(bench.metrics(), "cvmfs_ephemeral_subscribers")
        print(f"subscribers held: {held} (gateway gauge {server_view:.0f}; target "
              f"{args.subscribers}), connected in {connect_s:.1f} s")
        print(f"gateway RSS: {rss:.1f} MiB; {(rss - idle_rss) / (held / 1000):.1f} MiB per "
              f"1,000 subscribers (idle baseline {idle_rss:.1f} MiB)")

        before = bench.metrics()
        cpu0 = cpu_s(gw.pid)
        full = bench.publish_round(pipes, blobs[n:2 * n])
        cpu_per = (cpu_s(gw.pid) - cpu0) / n
        f50, f99 = quantiles(full)
        after = bench.metrics()
        count = gauge(after, "cvmfs_ephemeral_notification_delivery_seconds_count") - \
            gauge(before, "cvmfs_ephemeral_notification_delivery_seconds_count")
        total = gauge(after, "cvmfs_ephemeral_notification_delivery_seconds_sum") - \
            gauge(before, "cvmfs_ephemeral_notification_delivery_seconds_sum")
        print(f"{held} subscribers: publish->last subscriber p50 {f50 * 1000:.1f} ms, "
              f"p99 {f99 * 1000:.1f} ms (target < 1000 ms; baseline p50 {b50 * 1000:.1f} ms); "
              f"gateway-side mean delivery {total / max(count, 1) * 1000:.1f} ms over "
              f"{count:.0f} deliveries; gateway CPU {cpu_per * 1000:.0f} ms per publish "
              f"({cpu_per / held * 1e6:.1f} us per subscriber)")
        floor = loopback_write_floor(messages.canonical(FQRN, blobs[0]).event()) / 1000
        print(f"baseline, raw loopback write of the same event from one process: "
              f"{floor * 1e6:.1f} us per socket ({floor * held * 1000:.0f} ms for {held})")

        slow = max(1, held // 100)
        shares = [slow // args.clients] * args.clients
        shares[0] += slow - sum(shares)
        bench.command(pipes, "pause", shares)
        slowed = bench.publish_round(pipes, blobs[2 * n:3 * n])
        s50, s99 = quantiles(slowed)
        dropped = gauge(bench.metrics(), "cvmfs_ephemeral_subscribers_dropped_total")
        print(f"with {slow} subscribers not reading: publish->last reading subscriber p50 "
              f"{s50 * 1000:.1f} ms, p99 {s99 * 1000:.1f} ms (all reading: p50 "
              f"{f50 * 1000:.1f} ms); dropped so far {dropped:.0f}; gateway RSS "
              f"{rss_mib(gw.pid):.1f} MiB")
        bench.command(pipes, "stop", [0] * len(pipes))
    finally:
        gw.send_signal(signal.SIGINT)
        try:
            gw.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gw.kill()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()


if __name__ == "__main__":
    main()
