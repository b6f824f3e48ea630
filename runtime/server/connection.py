"""Connection-level limits that uvicorn does not have: header size and time, connection count.

Anyone can open a TCP connection to the upload service, token or not, so what a connection
costs before its request reaches the app must be bounded:

- **Header size** (``CVMFS_EPHEMERAL_MAX_HEADER_BYTES``): uvicorn's httptools protocol hands
  every byte to the parser, whose Python callbacks join the request line and header pieces by
  concatenation; a 256 MiB header took 86 s and blocked the event loop for seconds at a time.
  Here the parser never sees more than the limit of a request head: beyond it the answer is
  431 and the connection is closed.
- **Header time** (``CVMFS_EPHEMERAL_HEADER_TIMEOUT_S``): uvicorn times out idle keep-alive
  connections only after a response; a fresh connection, or one that sent half a request head,
  was held forever (3,000 of them held 3,000 file descriptors). The head of every request must
  arrive within the timeout, else 408 and close.
- **Connections** (``CVMFS_EPHEMERAL_MAX_CONNECTIONS``): a connection accepted beyond the limit
  gets 503 (``Retry-After``) as soon as its head arrives, and only a short time to send it.
  uvicorn's own ``limit_concurrency`` answers only after a full head arrived, with no time
  bound, so it does not stop half-sent requests.

The protocol is uvicorn's ``HttpToolsProtocol`` with these checks around its parser
callbacks; :func:`protocol_class` binds the limits (uvicorn instantiates the class itself).
:func:`raise_nofile_limit` lifts the soft file-descriptor limit to the hard one at start, so the
connection limit, not the default soft limit of 1,024, is what a busy server meets first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

#: Seconds a connection accepted beyond the connection limit has to send its request head.
OVER_LIMIT_HEADER_TIMEOUT_S = 2.0
#: A refused connection's request body read (and dropped) before the 503, so a small request
#: reads the answer instead of a reset; larger bodies are cut (the client may retry).
OVER_LIMIT_DRAIN_BYTES = 64 * 1024

_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout_s: float
    max_connections: int


def error_bytes(status: int, detail: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole ``Connection: close`` HTTP/1.1 response with the JSON one-line detail."""
    body = json.dumps({"detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "content-type: application/json", f"content-length: {len(body)}",
            "connection: close", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """The app a connection over the limit gets: drop a little of the body, then 503."""
    seen = 0
    try:
        while seen <= OVER_LIMIT_DRAIN_BYTES:
            message = await asyncio.wait_for(receive(), OVER_LIMIT_HEADER_TIMEOUT_S)
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
    except asyncio.TimeoutError:
        pass
    body = json.dumps({"detail": "too many connections to this server; retry later"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head and a connection limit."""

    limits = ConnectionLimits(64 * 1024, 30.0, 1000)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._over_limit = len(self.connections) > self.limits.max_connections
        if self._over_limit:
            log.warning("connection from %s over the limit of %d connections: answering 503",
                        _peer(self.client), self.limits.max_connections)
        self._arm_head_timer()

    # -- the request head: size and time ------------------------------------------------------

    def _head_timeout(self) -> float:
        if self._over_limit:
            return min(OVER_LIMIT_HEADER_TIMEOUT_S, self.limits.header_timeout_s)
        return self.limits.header_timeout_s

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout(), self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head waits for the running request: not idle
            return
        if self._head_bytes:
            log.warning("request head from %s not complete within %g s: 408",
                        _peer(self.client), self._head_timeout())
        self._refuse(408, f"request head not received within {self._head_timeout():g} s")

    def _refuse(self, status: int, detail: str) -> None:
        self.transport.write(error_bytes(status, detail))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's malformed-request answer, as the one-line JSON every other error is."""
        self._refuse(400, f"malformed HTTP request: {msg.rstrip('.')}")

    def data_received(self, data: bytes) -> None:
        while data and not self.transport.is_closing():
            if self._in_head:
                self._arm_head_timer()
                room = self.limits.max_header_bytes - self._head_bytes
                piece, data = data[:room], data[room:]
                self._head_bytes += len(piece)
            else:
                piece, data = data, b""
            super().data_received(piece)
            if (self._in_head and self._head_bytes >= self.limits.max_header_bytes
                    and not self.transport.is_closing()):
                log.warning("request head from %s larger than %d bytes: 431",
                            _peer(self.client), self.limits.max_header_bytes)
                self._refuse(431, f"request head larger than the limit of "
                                  f"{self.limits.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        if not self._over_limit:
            super().on_headers_complete()
            return
        app, self.app = self.app, _busy
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # whatever comes next is the head of the next request

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def protocol_class(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn should instantiate, with ``limits`` bound to it."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def raise_nofile_limit() -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1024 * 1024)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file-descriptor limit from %d to %d: %s",
                        soft, target, exc)
    return soft, hard


__all__ = ["ConnectionLimits", "GuardedHttpToolsProtocol", "error_bytes", "protocol_class",
           "raise_nofile_limit"]
