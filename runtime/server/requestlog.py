"""Request ids and the access log: one line per request an operator may care about.

Every request gets an id: the client's ``X-Request-ID`` when it is sane (1-128 characters of
``A-Za-z0-9._:-``, so it cannot forge log lines), else a fresh random one. It is set in
:data:`runtime.logs.request_id` for every line logged while serving the request and echoed in
the response's ``X-Request-ID``, so a CI job can quote it to an operator.

Lines (logger ``runtime.access``):

- a refused request (status >= 400) is always logged with its status and the one-line reason
  from the JSON answer (``detail``): at warning (error for 5xx), unless the route wrote the
  request's own event line (an upload, a delete, a TTL or pin change: :func:`event_logged`),
  which then is the one warning of that refusal and carries what the access line cannot (the
  token's label, the artifact); the access line stays, at info, so that the access log still
  has one line per request;
- with ``CVMFS_EPHEMERAL_ACCESS_LOG=api`` (the default) every other request of the upload API,
  the admin routes and the notification API is logged at info, and the stratum 0 files,
  ``/healthz`` and ``/metrics`` at debug; ``all`` logs those at info too; ``off`` logs every
  request that is not refused at debug.

The path is logged without its query string (a query could carry a secret), and the token is
never logged: the app's own event lines name the token by its label.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any, Awaitable, Callable

from .. import logs

log = logging.getLogger("runtime.access")

Scope = dict[str, Any]
Message = dict[str, Any]
App = Callable[[Scope, Callable, Callable], Awaitable[None]]

SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Paths that ``access_log=api`` leaves out (a stratum 1 or a client fetching objects, probes).
QUIET_PREFIXES = ("/cvmfs/", "/cvmfs-meta/", "/healthz", "/metrics")
#: Bytes of an error answer kept to read its ``detail`` (our errors are one short line).
DETAIL_BYTES = 4096


#: Per request, set by the middleware: a one-item list that :func:`event_logged` sets to True.
#: A list, not a bool, so that a route running in a copied context (a worker thread, a task
#: group) still reaches the middleware's own flag.
_event_line: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "event_line", default=None)


def event_logged() -> None:
    """Called by a route that wrote this request's own event line: its refusal is reported
    there, at warning, and the access line need not report it a second time."""
    flag = _event_line.get()
    if flag is not None:
        flag[0] = True


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if SANE_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def _detail(body: bytes) -> str:
    """The refusal's one-line reason: the JSON ``detail``; for any other body (an HTML page of
    the browser, a plain-text error) its first line, so a log line stays one line."""
    try:
        detail = json.loads(body.decode("utf-8")).get("detail", "")
    except (ValueError, AttributeError, UnicodeDecodeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return text.splitlines()[0] if text else ""
    return str(detail).splitlines()[0] if detail else ""


class RequestLogMiddleware:
    """Sets the request id, echoes it, and writes the access and refusal lines."""

    def __init__(self, app: App, mode: str = "api"):
        self.app = app
        self.mode = mode

    def _quiet(self, path: str) -> bool:
        if self.mode == "off":
            return True
        return self.mode == "api" and path.startswith(QUIET_PREFIXES)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope)
        token = logs.request_id.set(rid)
        event_line = [False]
        event_token = _event_line.set(event_line)
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 0, "bytes": 0, "error": b""}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                seen["bytes"] += len(body)
                if seen["status"] >= 400 and len(seen["error"]) < DETAIL_BYTES:
                    seen["error"] += body[:DETAIL_BYTES]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._line(scope, seen, time.perf_counter() - started, event_line[0])
            _event_line.reset(event_token)
            logs.request_id.reset(token)

    def _line(self, scope: Scope, seen: dict[str, Any], duration: float,
              event_logged: bool) -> None:
        status = seen["status"] or 500  # the app died before answering: uvicorn sends 500
        path = scope.get("path", "")
        client = scope.get("client") or ("?", 0)
        fields = {"method": scope.get("method", ""), "path": path, "status": status,
                  "bytes": seen["bytes"], "duration_s": round(duration, 6),
                  "client": client[0]}
        stratum0_miss = status == 404 and path.startswith(QUIET_PREFIXES)
        if status >= 400 and status != 499 and not stratum0_miss:
            reason = _detail(seen["error"])
            level = (logging.INFO if event_logged
                     else logging.WARNING if status < 500 else logging.ERROR)
            logs.event(log, level, f"refused {fields['method']} {path}: {status} {reason}",
                       reason=reason, **fields)
        else:
            level = logging.DEBUG if self._quiet(path) else logging.INFO
            logs.event(log, level, f"{fields['method']} {path} {status}", **fields)


__all__ = ["RequestLogMiddleware", "event_logged", "request_id_from"]
