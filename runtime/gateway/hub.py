"""The gateway's state: the last message of each repository and its subscribers.

Accepting a message (``publish``) means: the repository is known (we have its certificate),
the manifest verifies against it and names that repository, and its revision is newer than
the last one. Re-publishing the very message already stored is accepted and changes nothing
(the real publisher may retry); anything older or different at the same revision is refused,
so no one can roll subscribers back or inject a manifest without the repository key, although
the endpoint needs no token (like cvmfs-gateway).

Each subscriber holds only the newest event not yet sent to it: a slow subscriber skips
intermediate revisions instead of queueing them (a client only cares about the latest).

Lives on one event loop; other threads hand manifests over with ``offer_threadsafe``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass

from ..cvmfs import manifest as manifest_mod
from . import messages
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
    """One open event stream: the pending event (newest wins) and a wake-up."""

    def __init__(self, fqrn: str):
        self.fqrn = fqrn
        self.pending: bytes | None = None
        self.wakeup = asyncio.Event()
        self.closed = False

    def offer(self, event: bytes) -> None:
        self.pending = event
        self.wakeup.set()

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()

    def take(self) -> bytes | None:
        event, self.pending = self.pending, None
        self.wakeup.clear()
        return event


@dataclass
class PublishOutcome:
    status: str  # "ok" (stored and pushed) | "unchanged"
    revision: int
    subscribers: int


class Hub:
    def __init__(self, source: ManifestSource):
        self.source = source
        self._last: dict[str, messages.Message] = {}
        self._subs: dict[str, set[Subscriber]] = {}
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Called with (fqrn, revision) after each push (metrics).
        self.pushed: list = []

    # -- the current message -----------------------------------------------------------------
    async def current(self, fqrn: str) -> messages.Message | None:
        """The newest message: memory, the shared data directory, or the stratum 0."""
        last = self._last.get(fqrn)
        blob = self.source.local_manifest(fqrn)
        if blob is None and last is None:
            blob = await self.source.remote_manifest(fqrn)
        if blob is not None:
            try:
                revision = manifest_mod.parse(blob).revision
            except manifest_mod.ManifestError:
                return last
            if last is None or revision > last.revision:
                # a revision nobody told us about (a restart, another writer): subscribers
                # have not seen it either
                last = messages.make(fqrn, blob)
                self._store_and_push(last)
        return last

    # -- accepting messages ------------------------------------------------------------------
    async def publish(self, msg: messages.Message) -> PublishOutcome:
        """Verify and store a message from the HTTP endpoint; push it if it is new."""
        fqrn = msg.repository
        cert = self.source.certificate(fqrn)
        if cert is None:
            raise UnknownRepository(f"unknown repository {fqrn!r}: no certificate for it here")
        parsed = manifest_mod.parse(msg.manifest)
        if parsed.fqrn != fqrn:
            raise GatewayError(f"manifest is for {parsed.fqrn!r}, not {fqrn!r}")
        try:
            manifest_mod.verify(msg.manifest, cert, fqrn)
        except manifest_mod.ManifestError as exc:
            raise BadSignature(f"manifest does not verify against the certificate of {fqrn}: "
                               f"{exc}") from exc
        last = await self.current(fqrn)
        if last is not None:
            if msg.revision == last.revision and msg.manifest == last.manifest:
                return PublishOutcome("unchanged", msg.revision, len(self._subs.get(fqrn, ())))
            if msg.revision <= last.revision:
                raise StaleRevision(f"revision {msg.revision} of {fqrn} is not newer than the "
                                    f"current revision {last.revision}")
        return PublishOutcome("ok", msg.revision, self._store_and_push(msg))

    def offer(self, fqrn: str, manifest_blob: bytes) -> None:
        """A manifest this process just published (trusted): store and push if newer."""
        last = self._last.get(fqrn)
        msg = messages.make(fqrn, manifest_blob, dt.datetime.now(dt.timezone.utc))
        if last is not None and msg.revision <= last.revision:
            return
        self._store_and_push(msg)

    def offer_threadsafe(self, fqrn: str, manifest_blob: bytes) -> None:
        if self.loop is None or self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.offer, fqrn, manifest_blob)

    async def resend(self, fqrn: str) -> messages.Message | None:
        """Push the current message again to every subscriber (``/repos/<fqrn>/notify``)."""
        msg = await self.current(fqrn)
        if msg is not None:
            for sub in list(self._subs.get(fqrn, ())):
                sub.offer(msg.event())
        return msg

    def _store_and_push(self, msg: messages.Message) -> int:
        self._last[msg.repository] = msg
        subs = list(self._subs.get(msg.repository, ()))
        event = msg.event()
        for sub in subs:
            sub.offer(event)
        for hook in self.pushed:
            hook(msg.repository, msg.revision)
        return len(subs)

    # -- subscribers -------------------------------------------------------------------------
    def subscribe(self, fqrn: str) -> Subscriber:
        sub = Subscriber(fqrn)
        if self.closing:
            sub.close()
        self._subs.setdefault(fqrn, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.fqrn)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.fqrn]

    def subscriber_counts(self) -> dict[str, int]:
        return {fqrn: len(subs) for fqrn, subs in self._subs.items()}

    def close(self) -> None:
        """Server shutdown: end every stream with an error so clients reconnect elsewhere."""
        self.closing = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
