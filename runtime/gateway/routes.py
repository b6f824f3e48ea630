"""HTTP endpoints of the notification API (docs/cvmfs-format.md, "Notifications"), under ``/api/v1``.

``POST /api/v1/notifications/publish`` takes the body the real publisher sends (JSON, whatever
the Content-Type says: libcurl labels it form-urlencoded), parsed strictly (``messages.py``),
and answers ``{"status":"ok"}``. Every refusal is a 4xx ``{"detail": ...}``.

``GET /api/v1/notifications/subscribe`` carries a JSON body ``{"version":1,"repository":…}``
and answers with an endless ``text/event-stream``. The real client is strict (§10.2), so the
stream is written as a raw ASGI response: each event is exactly ``data: <one-line JSON>``
LF LF in one ``send`` (one HTTP chunk, one socket write), the response never completes
cleanly, and on server shutdown the handler returns without completing it, so the server
drops the connection (no terminating chunk) and the client counts a failure and reconnects
instead of stopping for good.

Keep-alive: the only bytes the real subscriber tolerates are a complete, valid message (see
``tests/test_gateway_keepalive.py`` for the source reading), so a stream silent for half the
keep-alive interval is sent the current message again: the subscriber verifies it, sees a
revision it already has and carries on.

A subscriber that stops reading costs at most ``buffer_bytes`` in the kernel and as much in
this process, plus one pending event; when an event cannot be written for ``send_timeout_s``
the connection is aborted (the client reconnects and gets the latest message). It never holds
up anyone else: every stream writes from its own task, and a publish only sets a slot.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..settings import validate_fqrn
from . import messages
from .fdlimit import raise_nofile_limit
from .hub import GatewayError, Hub, Subscriber

API_ROOT = "/api/v1"
#: A request body (about 1 KB) that takes longer than this is a stalled or hostile client.
BODY_TIMEOUT_S = 10.0
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"connection", b"keep-alive")]

log = logging.getLogger(__name__)


class BodyError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body, bounded in size (413) and time (408)."""
    body = bytearray()

    async def read() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BodyError(400, "client disconnected while sending the body")
            body.extend(message.get("body", b""))
            if len(body) > limit:
                raise BodyError(413, f"request body larger than {limit} bytes")
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(read(), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise BodyError(408, f"request body not received within {BODY_TIMEOUT_S:g} s") from None
    return bytes(body)


def publish_endpoint(hub: Hub):  # type: ignore[no-untyped-def]
    async def publish(request: Request) -> JSONResponse:
        try:
            body = await _read_body(request.receive, messages.MAX_PUBLISH_BODY)
            req = messages.parse(body)
            outcome = await hub.publish(req)
        except BodyError as exc:
            return _error(exc.status, exc.detail)
        except messages.MessageError as exc:
            return _error(400, str(exc))
        except GatewayError as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({"status": "ok"} if outcome.status == "ok"
                            else {"status": "ok", "detail": "unchanged"})
    return publish


def _transport_of(receive: Receive) -> Any:
    """The connection's transport behind uvicorn's ``receive`` (a RequestResponseCycle method),
    or None under another server.

    ASGI gives an app no handle on its connection, but dropping a subscriber that stopped
    reading needs one: returning from the app makes uvicorn *close* the transport, which waits
    to flush to a peer that never reads (the socket and its buffers stay forever); ``abort()``
    frees them at once. Middlewares that wrap ``receive`` keep the original as ``__wrapped__``
    (the :func:`functools.wraps` convention), which is followed back to uvicorn's method.
    """
    transport = getattr(getattr(_server_receive(receive), "__self__", None), "transport", None)
    if all(hasattr(transport, name) for name in ("abort", "get_extra_info",
                                                  "set_write_buffer_limits")):
        return transport
    return None


def _chunked(receive: Receive) -> bool:
    """Whether uvicorn frames this response as HTTP/1.1 chunks (it does for an open-ended
    body); only then may chunks be written to the transport beside it."""
    return getattr(getattr(_server_receive(receive), "__self__", None), "chunked_encoding",
                   None) is True


def _server_receive(receive: Receive) -> Receive:
    """``receive`` as the server made it, through middlewares' ``__wrapped__`` links."""
    for _ in range(16):
        inner = getattr(receive, "__wrapped__", None)
        if inner is None:
            break
        receive = inner
    return receive


def _bound_buffers(transport: Any, limit: int) -> None:
    """Cap what one subscriber can have unread: the kernel's send buffer and ours."""
    transport.set_write_buffer_limits(high=limit)
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)
    except (AttributeError, OSError):
        pass


class SubscribeEndpoint:
    """Raw ASGI app for the event stream (see the module docstring for why raw)."""

    def __init__(self, hub: Hub):
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            fqrn = messages.parse_subscription(
                await _read_body(receive, messages.MAX_SUBSCRIBE_BODY))
            validate_fqrn(fqrn)
        except BodyError as exc:
            await _error(exc.status, exc.detail)(scope, receive, send)
            return
        except ValueError:  # MessageError, or a malformed repository name
            await _error(400, 'expected a JSON body {"version":1,"repository":"<fqrn>"}')(
                scope, receive, send)
            return
        if self.hub.source.certificate(fqrn) is None:
            await _error(404, f"unknown repository {fqrn!r}")(scope, receive, send)
            return
        transport = _transport_of(receive)
        if transport is not None:
            _bound_buffers(transport, self.hub.buffer_bytes)
        sub = self.hub.subscribe(fqrn)
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        gone.add_done_callback(lambda _f: sub.close())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            if transport is not None and _chunked(receive):
                sub.transport = transport  # the hub may write ready-made chunks (hub.py)
            current = await self.hub.current(fqrn)
            if current is not None and sub.pending is None:
                sub.offer(current.event())
            await self._stream(sub, send, transport, gone)
        finally:
            gone.cancel()
            self.hub.unsubscribe(sub)

    async def _stream(self, sub: Subscriber, send: Send, transport: Any,
                      gone: asyncio.Future[None]) -> None:
        metrics = self.hub.metrics
        while True:
            await sub.wait()
            if sub.closed:
                return  # disconnected, or shutting down: end without completing
            event, accepted_at = sub.take()
            if event is None:
                continue
            message = {"type": "http.response.body", "body": event, "more_body": True}
            if transport is not None and not transport.get_write_buffer_size():
                # the kernel took everything so far: this write cannot block (the common
                # case, kept free of a timer per subscriber and event)
                await send(message)
            else:
                try:
                    async with asyncio.timeout(self.hub.send_timeout_s):
                        await send(message)
                except TimeoutError:
                    await self._drop(sub, transport, gone)
                    return
            now = time.monotonic()
            sub.last_sent = now
            if accepted_at is not None and metrics is not None:
                metrics.delivery_seconds.observe(now - accepted_at)

    async def _drop(self, sub: Subscriber, transport: Any, gone: asyncio.Future[None]) -> None:
        log.info("dropping a subscriber of %s that has not read for %g s", sub.fqrn,
                 self.hub.send_timeout_s)
        if self.hub.metrics is not None:
            self.hub.metrics.dropped.inc()
        if transport is not None:
            transport.abort()
            # let uvicorn see the connection lost before we return (else it logs an error)
            await asyncio.wait({gone}, timeout=1.0)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _ShutdownNoise(logging.Filter):
    """Hide uvicorn's "returned without completing response" for streams we end on purpose."""

    def __init__(self, hub: Hub):
        super().__init__()
        self.hub = hub

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.hub.closing and "without completing response" in record.getMessage())


def routes(hub: Hub) -> list[Route]:
    """The notification API's routes. A process serving it holds one socket per subscriber,
    so this also lifts the open-file limit to the hard limit."""
    limit = raise_nofile_limit()
    log.debug("open-file limit: %s", limit)
    logging.getLogger("uvicorn.error").addFilter(_ShutdownNoise(hub))
    return [
        Route(f"{API_ROOT}/notifications/publish", publish_endpoint(hub), methods=["POST"]),
        Route(f"{API_ROOT}/notifications/subscribe", SubscribeEndpoint(hub), methods=["GET"]),
    ]
