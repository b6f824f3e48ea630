"""HTTP endpoints of the notification API (docs/cvmfs-format.md, "Notifications"), under ``/api/v1``.

``POST /api/v1/notifications/publish`` takes the body the real publisher sends (JSON, whatever
the Content-Type says: libcurl labels it form-urlencoded) and answers ``{"status":"ok"}``.

``GET /api/v1/notifications/subscribe`` carries a JSON body ``{"version":1,"repository":…}``
and answers with an endless ``text/event-stream``. The real client is strict (§10.2), so the
stream is written as a raw ASGI response: each event is exactly ``data: <one-line JSON>``
LF LF in one ``send`` (one HTTP chunk, one socket write), nothing else is ever written, the
response never completes cleanly, and on server shutdown the handler returns without
completing it, so the server drops the connection (no terminating chunk) and the client
counts a failure and reconnects instead of stopping for good.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..settings import validate_fqrn
from . import messages
from .hub import GatewayError, Hub

API_ROOT = "/api/v1"
MAX_BODY = 64 * 1024
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"connection", b"keep-alive")]

log = logging.getLogger(__name__)


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when it exceeds ``MAX_BODY`` or the client left."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            return None
        if not message.get("more_body", False):
            return bytes(body)


def publish_endpoint(hub: Hub):
    async def publish(request: Request) -> JSONResponse:
        body = await _read_body(request.receive)
        if body is None:
            return _error(413, f"notification body larger than {MAX_BODY} bytes")
        try:
            msg = messages.parse(body)
        except messages.MessageError as exc:
            return _error(400, str(exc))
        try:
            outcome = await hub.publish(msg)
        except GatewayError as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({"status": "ok"} if outcome.status == "ok"
                            else {"status": "ok", "detail": "unchanged"})
    return publish


class SubscribeEndpoint:
    """Raw ASGI app for the event stream (see the module docstring for why raw)."""

    def __init__(self, hub: Hub):
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            await _error(413, "subscription body too large")(scope, receive, send)
            return
        try:
            doc = json.loads(body or b"{}")
            fqrn = doc["repository"]
            validate_fqrn(fqrn)
        except (ValueError, KeyError, TypeError):
            await _error(400, 'expected a JSON body {"version":1,"repository":"<fqrn>"}')(
                scope, receive, send)
            return
        if self.hub.source.certificate(fqrn) is None:
            await _error(404, f"unknown repository {fqrn!r}")(scope, receive, send)
            return
        sub = self.hub.subscribe(fqrn)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            current = await self.hub.current(fqrn)
            if current is not None and sub.pending is None:
                sub.offer(current.event())
            await self._stream(sub, receive, send)
        finally:
            self.hub.unsubscribe(sub)

    async def _stream(self, sub, receive: Receive, send: Send) -> None:  # type: ignore[no-untyped-def]
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            while True:
                if sub.pending is None and not sub.closed:
                    wake = asyncio.ensure_future(sub.wakeup.wait())
                    done, _ = await asyncio.wait({wake, gone},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if wake not in done:
                        wake.cancel()
                if gone.done() or sub.closed:
                    return  # disconnected, or shutting down: end without completing
                event = sub.take()
                if event is not None:
                    await send({"type": "http.response.body", "body": event,
                                "more_body": True})
        finally:
            gone.cancel()


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
    logging.getLogger("uvicorn.error").addFilter(_ShutdownNoise(hub))
    return [
        Route(f"{API_ROOT}/notifications/publish", publish_endpoint(hub), methods=["POST"]),
        Route(f"{API_ROOT}/notifications/subscribe", SubscribeEndpoint(hub), methods=["GET"]),
    ]
