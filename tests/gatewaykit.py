"""Helpers for the gateway tests: a split-layout gateway (its own process role, a stratum 0
served over HTTP), newer manifests signed with the reference repository's key, bodies built the
way ``cvmfs_swissknife notify -p`` builds them, and a raw subscriber that sees the stream as
HTTP chunks (what libcurl hands the real subscriber's callback)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from runtime.cvmfs import manifest as manifest_mod
from runtime.settings import Settings
from tests.conftest import REFERENCE_DIR
from tests.httpserve import serve_directory
from tests.live_server import LiveServer, live_server

REF = "zlib.ref.test"
REF_KEYS = REFERENCE_DIR / REF / "keys"
SUBSCRIBE = "/api/v1/notifications/subscribe"
PUBLISH = "/api/v1/notifications/publish"


def reference_manifest() -> bytes:
    return (REFERENCE_DIR / REF / "public" / ".cvmfspublished").read_bytes()


def signed_manifest(revision: int, base: bytes | None = None) -> bytes:
    """The reference manifest at another revision, signed with the reference key (what the
    repository owner, and only the owner, can produce)."""
    m = manifest_mod.parse(base or reference_manifest())
    key = serialization.load_pem_private_key((REF_KEYS / f"{REF}.key").read_bytes(),
                                             password=None)
    return dataclasses.replace(m, revision=revision, timestamp=m.timestamp + revision).sign(key)


def utc_stamp(manifest_blob: bytes) -> str:
    t = manifest_mod.parse(manifest_blob).timestamp
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%d %b %Y %H:%M:%S")


def swissknife_body(manifest_blob: bytes, stamp: str = "28 Nov 2026 17:18:26",
                    fqrn: str = REF) -> bytes:
    """A publish body in the exact shape of tests/fixtures/.../notify-publish-request.txt."""
    return ('{ "version" : 1, "timestamp" : %s, "type" : "activity", "repository" : %s, '
            '"manifest" : %s}' % (json.dumps(stamp), json.dumps(fqrn),
                                  json.dumps(base64.b64encode(manifest_blob).decode()))
            ).encode()


def canonical_event(manifest_blob: bytes) -> bytes:
    """The one event a gateway may send for a manifest: the real publisher's shape, stamped
    with the manifest's own time."""
    return b"data: " + swissknife_body(manifest_blob, utc_stamp(manifest_blob)) + b"\n\n"


@dataclass
class SplitGateway:
    server: LiveServer
    stratum0: Path  # the directory the stratum 0 serves: <stratum0>/<fqrn>/.cvmfspublished

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def stratum0_serves(self, blob: bytes) -> None:
        (self.stratum0 / REF / ".cvmfspublished").write_bytes(blob)

    @property
    def hub(self):  # type: ignore[no-untyped-def]
        return self.server.app.state.hub


@contextmanager
def split_gateway(tmp: Path, **overrides) -> Iterator[SplitGateway]:  # type: ignore[no-untyped-def]
    """``serve --role gateway`` with a stratum-0 URL, as Docker and Kubernetes deploy it."""
    keys = tmp / "gw-keys"
    keys.mkdir()
    shutil.copy(REF_KEYS / f"{REF}.crt", keys)
    stratum0 = tmp / "stratum0"
    (stratum0 / REF).mkdir(parents=True)
    (stratum0 / REF / ".cvmfspublished").write_bytes(reference_manifest())
    with serve_directory(stratum0) as s0_url:
        base = dict(data_dir=tmp / "gw-data", keys_dir=keys, role="gateway",
                    stratum0_url=s0_url, scheduler=False, log_level="warning",
                    gateway_keepalive_s=0)
        base.update(overrides)
        with live_server(Settings(**base)) as server:
            yield SplitGateway(server, stratum0)


def subscribe_request(port: int, fqrn: str = REF) -> bytes:
    """The request the real subscriber sends (notify-subscribe-exchange.txt, run 1)."""
    body = b'{"version":1,"repository":"%s"}' % fqrn.encode()
    return (b"GET /api/v1/notifications/subscribe HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"User-Agent: cvmfs/2.12.0\r\nAccept: */*\r\nContent-Length: %d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" % (port, len(body))
            + body)


class RawSubscriber:
    """A subscriber on a plain socket that decodes HTTP/1.1 chunked framing itself, so a test
    sees each chunk exactly as the server framed it."""

    def __init__(self, port: int, fqrn: str = REF, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(subscribe_request(port, fqrn))
        self.buf = b""
        self.head = self._until(b"\r\n\r\n", 10)

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            more = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        if not more:
            raise ConnectionError("stream closed by the server")
        self.buf += more
        return True

    def _until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            if not self._fill(deadline):
                raise TimeoutError(f"no {marker!r} within {timeout} s")
        out, self.buf = self.buf.split(marker, 1)
        return out

    def chunk(self, timeout: float = 10) -> bytes:
        """The next chunk's payload; TimeoutError if none arrives in time."""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                raise TimeoutError(f"no chunk within {timeout} s")
        size_line, rest = self.buf.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(rest) < size + 2:
            if not self._fill(deadline):
                raise TimeoutError("chunk cut short")
            _size_line, rest = self.buf.split(b"\r\n", 1)
        assert rest[size:size + 2] == b"\r\n", "chunk not followed by CRLF"
        self.buf = rest[size + 2:]
        return rest[:size]

    def no_chunk(self, within: float) -> bool:
        try:
            self.chunk(timeout=within)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()
