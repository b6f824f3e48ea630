"""The body idle timeout: a request whose body stops arriving is abandoned, not waited on.

Why: an upload whose client stops sending (a stalled CI runner, a half-open connection) would
otherwise hold its staging transaction, its unpack slot and gc's cut-off for as long as the TCP
connection lives. ASGI ``receive`` has no timeout, so this middleware gives it one: while the
request body is incomplete, each wait for the next piece may last at most
``CVMFS_EPHEMERAL_BODY_IDLE_TIMEOUT_S`` seconds. Beyond it, :class:`BodyIdleTimeout` is raised
into the app (the upload aborts its transaction: nothing is published) and every later
``receive`` reports a disconnect, so nothing else waits on that body.

The clock measures the client, not us: time spent while the app is not asking for the body
(an unpack pipe that is full) does not count. Once the body is complete, ``receive`` is passed
through unchanged (a streaming response waits on it for the disconnect).

:class:`BodyIdleTimeout` is a :class:`~starlette.requests.ClientDisconnect`, so code that
already gives up on a vanished client gives up on a stalled one too; the exception handler in
``app.py`` answers 408 with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from starlette.requests import ClientDisconnect

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyIdleTimeout(ClientDisconnect):
    """No byte of the request body arrived for ``seconds``."""

    def __init__(self, seconds: float):
        super().__init__(f"no request body received for {seconds:g} s; nothing was published")
        self.seconds = seconds


class BodyIdleTimeoutMiddleware:
    """Bounds each wait for the next piece of an incomplete request body."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"complete": False, "timed_out": False}

        async def guarded() -> Message:
            if state["timed_out"]:
                return {"type": "http.disconnect"}
            if state["complete"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                state["timed_out"] = True
                raise BodyIdleTimeout(self.timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["complete"] = True
            return message

        guarded.__wrapped__ = receive  # type: ignore[attr-defined]  # see gateway/routes.py
        await self.app(scope, guarded, send)


__all__ = ["BodyIdleTimeout", "BodyIdleTimeoutMiddleware"]
