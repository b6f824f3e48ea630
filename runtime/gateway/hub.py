"""The gateway's state: the current message of each repository and its subscribers.

What subscribers see is only ever a message this gateway built itself
(:func:`messages.canonical`) from a manifest it verified or read from its own repository: a
publish request is a *claim* that a manifest exists; its bytes are never stored or forwarded.

Accepting a publish means: the repository is known (we have its certificate), the manifest
verifies against it and names that repository, and its revision is newer than the current one
(the newest revision wins). Re-publishing the current manifest is accepted and changes nothing
(the real publisher may retry); anything older, or different at the same revision, is refused,
so no one can roll subscribers back or inject a manifest without the repository key, although
the endpoint needs no token (like cvmfs-gateway).

The current message comes from, in order: the shared data directory (read on every new
subscription, so it is never behind this host's stratum 0), what was accepted, and in the
split layout the stratum 0 (fetched and verified when nothing is known yet, and re-read in the
background at most every ``refresh_s`` when subscribers connect, so a gateway that missed a
publish heals without waiting for the next one).

Fan-out is O(1) per subscriber and needs no task while idle: each subscriber holds one pending
event (the newest wins: a slow subscriber skips intermediate revisions instead of queueing
them, a client only cares about the latest) and a future its stream task sleeps on. One timer
for the whole hub sends keep-alives (see ``routes.py``).

Lives on one event loop; other threads hand manifests over with ``offer_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from ..cvmfs import manifest as manifest_mod
from ..settings import Settings
from . import messages
from .metrics import GatewayMetrics
from .source import ManifestSource

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """A refused publish; ``status`` is the HTTP status to answer with."""

    status = 400


class UnknownRepository(GatewayError):
    status = 404


class BadSignature(GatewayError):
    status = 403


class StaleRevision(GatewayError):
    status = 409


class Subscriber:
    """One open event stream: the pending event (newest wins) and the future its task awaits.

    ``pending_at`` is when the pending revision was accepted (None for a keep-alive or the
    message a new stream starts with), for the delivery-latency histogram.

    ``transport``, when the server lets us have it (``routes.py``), is the connection itself: an
    event for a stream whose task is asleep, with nothing pending and nothing unsent, is written
    straight to it as a ready-made HTTP chunk. That is the common case, and it costs one socket
    write instead of waking a task that goes through the whole ASGI send chain, which nearly
    halves the CPU a publish to 10,000 subscribers takes. Everything else (a backed-up socket,
    a stream already sending) goes through the pending slot and the stream's task, in order.
    """

    __slots__ = ("fqrn", "pending", "pending_at", "last_sent", "closed", "transport",
                 "_waiter")

    def __init__(self, fqrn: str):
        self.fqrn = fqrn
        self.pending: bytes | None = None
        self.pending_at: float | None = None
        self.last_sent = time.monotonic()
        self.closed = False
        self.transport: asyncio.WriteTransport | None = None
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, event: bytes, accepted_at: float | None = None,
              chunk: bytes | None = None) -> bool:
        """Hand over an event; True if it was written to the socket right away."""
        transport, waiter = self.transport, self._waiter
        if (chunk is not None and transport is not None and self.pending is None
                and waiter is not None and not waiter.done()
                and not transport.get_write_buffer_size() and not transport.is_closing()):
            transport.write(chunk)
            self.last_sent = time.monotonic()
            return True
        self.pending = event
        self.pending_at = accepted_at
        self._wake()
        return False

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Sleep until there is an event to send or the stream must end."""
        if self.pending is None and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take(self) -> tuple[bytes | None, float | None]:
        event, at = self.pending, self.pending_at
        self.pending = self.pending_at = None
        return event, at


@dataclass
class PublishOutcome:
    status: str  # "ok" (stored and pushed) | "unchanged"
    revision: int
    subscribers: int


class Hub:
    def __init__(self, source: ManifestSource, *, keepalive_s: float = 20.0,
                 send_timeout_s: float = 10.0, buffer_bytes: int = 64 * 1024,
                 refresh_s: float = 5.0):
        self.source = source
        self.keepalive_s = keepalive_s
        self.send_timeout_s = send_timeout_s
        self.buffer_bytes = buffer_bytes
        self.refresh_s = refresh_s
        self._last: dict[str, messages.Message] = {}
        self._subs: dict[str, set[Subscriber]] = {}
        self._remote_at: dict[str, float] = {}
        self._remote_task: dict[str, asyncio.Task[bytes | None]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.metrics: GatewayMetrics | None = None
        #: Called with (fqrn, revision) after each push (metrics).
        self.pushed: list = []

    @classmethod
    def from_settings(cls, settings: Settings) -> "Hub":
        return cls(ManifestSource(settings), keepalive_s=settings.gateway_keepalive_s,
                   send_timeout_s=settings.gateway_send_timeout_s,
                   buffer_bytes=settings.gateway_subscriber_buffer_bytes,
                   refresh_s=settings.gateway_refresh_s)

    def instrument(self, registry: CollectorRegistry) -> None:
        self.metrics = GatewayMetrics(registry)

    # -- the current message -----------------------------------------------------------------
    async def current(self, fqrn: str) -> messages.Message | None:
        """The newest message: the shared data directory, what we hold, or the stratum 0."""
        blob = self.source.local_manifest(fqrn)
        if blob is None:
            if fqrn not in self._last:
                blob = await self._remote(fqrn)
            else:
                self._refresh_soon(fqrn)
        if blob is not None:
            try:
                self._accept(messages.canonical(fqrn, blob))
            except manifest_mod.ManifestError as exc:
                log.warning("current manifest of %s does not parse: %s", fqrn, exc)
        return self._last.get(fqrn)

    async def _remote(self, fqrn: str) -> bytes | None:
        """The stratum 0's verified manifest; one fetch at a time, at most every refresh_s."""
        task = self._remote_task.get(fqrn)
        if task is None:
            if time.monotonic() - self._remote_at.get(fqrn, -1e9) < self.refresh_s:
                return None
            self._remote_at[fqrn] = time.monotonic()
            task = asyncio.ensure_future(self.source.remote_manifest(fqrn))
            self._remote_task[fqrn] = task
            task.add_done_callback(lambda _t: self._remote_task.pop(fqrn, None))
        return await asyncio.shield(task)

    def _refresh_soon(self, fqrn: str) -> None:
        """Re-read the stratum 0 in the background (a new subscriber need not wait for it)."""
        if not self.source.stratum0_url or fqrn in self._remote_task:
            return
        if time.monotonic() - self._remote_at.get(fqrn, -1e9) < self.refresh_s:
            return

        async def refresh() -> None:
            blob = await self._remote(fqrn)
            if blob is not None:
                self._accept(messages.canonical(fqrn, blob))

        task = asyncio.ensure_future(refresh())
        self._background.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._background.discard)

    # -- accepting messages ------------------------------------------------------------------
    async def publish(self, req: messages.PublishRequest) -> PublishOutcome:
        """Verify a publish request's manifest; store and push its canonical message if newer."""
        fqrn = req.repository
        cert = self.source.certificate(fqrn)
        if cert is None:
            raise UnknownRepository(f"unknown repository {fqrn!r}: no certificate for it here")
        parsed = manifest_mod.parse(req.manifest)
        if parsed.fqrn != fqrn:
            raise GatewayError(f"manifest is for {parsed.fqrn!r}, not {fqrn!r}")
        try:
            manifest_mod.verify(req.manifest, cert, fqrn)
        except manifest_mod.ManifestError as exc:
            raise BadSignature(f"manifest does not verify against the certificate of {fqrn}: "
                               f"{exc}") from exc
        msg = messages.canonical(fqrn, req.manifest)
        await self.current(fqrn)
        last = self._last.get(fqrn)
        if last is not None:
            if msg.revision == last.revision and msg.manifest == last.manifest:
                return PublishOutcome("unchanged", msg.revision, len(self._subs.get(fqrn, ())))
            if msg.revision <= last.revision:
                raise StaleRevision(f"revision {msg.revision} of {fqrn} is not newer than the "
                                    f"current revision {last.revision}")
        self._accept(msg)
        return PublishOutcome("ok", msg.revision, len(self._subs.get(fqrn, ())))

    def offer(self, fqrn: str, manifest_blob: bytes) -> None:
        """A manifest this process just published (trusted): store and push if newer."""
        self._accept(messages.canonical(fqrn, manifest_blob))

    def offer_threadsafe(self, fqrn: str, manifest_blob: bytes) -> None:
        if self.loop is None or self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.offer, fqrn, manifest_blob)

    async def resend(self, fqrn: str) -> messages.Message | None:
        """Push the current message again to every subscriber (``/repos/<fqrn>/notify``)."""
        msg = await self.current(fqrn)
        if msg is not None:
            event, chunk = msg.event(), msg.chunk()
            for sub in list(self._subs.get(fqrn, ())):
                sub.offer(event, None, chunk)
        return msg

    def _accept(self, msg: messages.Message) -> bool:
        """Store ``msg`` and push it if it is newer than the current one (synchronous, so no
        other publish can slip in between the comparison and the store)."""
        last = self._last.get(msg.repository)
        if last is not None and msg.revision <= last.revision:
            return False
        self._last[msg.repository] = msg
        accepted_at = time.monotonic()
        event, chunk = msg.event(), msg.chunk()
        observe = self.metrics.delivery_seconds.observe if self.metrics is not None else None
        for sub in list(self._subs.get(msg.repository, ())):
            if sub.offer(event, accepted_at, chunk) and observe is not None:
                observe(sub.last_sent - accepted_at)
        for hook in self.pushed:
            hook(msg.repository, msg.revision)
        return True

    # -- subscribers -------------------------------------------------------------------------
    def subscribe(self, fqrn: str) -> Subscriber:
        sub = Subscriber(fqrn)
        if self.closing:
            sub.close()
        self._subs.setdefault(fqrn, set()).add(sub)
        if self._ticker is None and self.keepalive_s > 0 and not self.closing:
            self._ticker = asyncio.ensure_future(self._keepalives())
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.fqrn)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.fqrn]

    def subscriber_counts(self) -> dict[str, int]:
        return {fqrn: len(subs) for fqrn, subs in self._subs.items()}

    async def _keepalives(self) -> None:
        """Every half interval, give each stream silent for half an interval the current
        message again, so no stream is ever silent for a whole interval."""
        half = self.keepalive_s / 2
        while not self.closing:
            await asyncio.sleep(half)
            quiet_since = time.monotonic() - half
            for fqrn, subs in list(self._subs.items()):
                msg = self._last.get(fqrn)
                if msg is None:
                    continue
                event, chunk = msg.event(), msg.chunk()
                for sub in list(subs):
                    if sub.pending is None and sub.last_sent <= quiet_since:
                        sub.offer(event, None, chunk)

    def close(self) -> None:
        """Server shutdown: end every stream with an error so clients reconnect elsewhere."""
        self.closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
