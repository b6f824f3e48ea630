"""Handing each new revision to the notification gateway.

``LocalNotifier``: the gateway runs in this process (the embedded default); the manifest goes
to its hub through the event loop. ``HttpNotifier``: the gateway is another process
(``CVMFS_EPHEMERAL_GATEWAY_URL``); the message is POSTed to ``<api root>/notifications/publish``
exactly as ``cvmfs_swissknife notify -p`` does (same body bytes, same Content-Type), from a
background thread, so a slow or absent gateway never delays a publish. Only the newest
manifest per repository is kept while waiting; failed posts are retried with backoff (a
gateway being redeployed comes back and gets the latest revision). A refusal (4xx) is logged
and dropped: a gateway refusing a message it cannot verify must not make us retry forever.

If this process dies with a post pending, the gateway still serves the previous revision
until the next publish; a subscriber that reconnects gets the current manifest from the
repository either way (see ``source.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

import httpx

from . import messages
from .hub import Hub

log = logging.getLogger(__name__)


class Notifier(Protocol):
    def notify(self, fqrn: str, manifest_blob: bytes) -> None: ...

    def close(self) -> None: ...


class LocalNotifier:
    """Delivers to the in-process hub (thread-safe: publishes happen on commit threads)."""

    def __init__(self, hub: Hub):
        self.hub = hub

    def notify(self, fqrn: str, manifest_blob: bytes) -> None:
        self.hub.offer_threadsafe(fqrn, manifest_blob)

    def close(self) -> None:
        pass


class HttpNotifier:
    """POSTs messages to a remote gateway like the real publisher, newest per repository."""

    def __init__(self, api_root: str, *, timeout: float = 10.0, max_backoff: float = 30.0,
                 on_result: Callable[[str, int, bool], None] | None = None):
        self.url = api_root.rstrip("/") + "/notifications/publish"
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.on_result = on_result
        self._pending: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gateway-notifier", daemon=True)
        self._thread.start()

    def notify(self, fqrn: str, manifest_blob: bytes) -> None:
        with self._cond:
            self._pending[fqrn] = manifest_blob
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Try to deliver what is pending (for up to ``timeout`` s), then stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        backoff = 0.2
        with httpx.Client(timeout=self.timeout) as client:
            while True:
                with self._cond:
                    while not self._pending and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    fqrn, blob = next(iter(self._pending.items()))
                ok = self._post(client, fqrn, blob)
                with self._cond:
                    if ok is not None and self._pending.get(fqrn) is blob:
                        del self._pending[fqrn]
                    self._cond.notify_all()
                if ok is None:  # transport error or 5xx: retry after a pause
                    with self._cond:
                        self._cond.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                else:
                    backoff = 0.2

    def _post(self, client: httpx.Client, fqrn: str, blob: bytes) -> bool | None:
        """True: delivered; False: refused for good (4xx); None: retry later."""
        msg = messages.canonical(fqrn, blob)
        try:
            resp = client.post(self.url, content=msg.raw, headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "User-Agent": "cvmfs-ephemeral"})
        except httpx.HTTPError as exc:
            log.warning("notifying %s about %s revision %d failed: %s; will retry",
                        self.url, fqrn, msg.revision, exc)
            return None
        if resp.status_code >= 500:
            log.warning("gateway %s answered %d for %s revision %d; will retry",
                        self.url, resp.status_code, fqrn, msg.revision)
            return None
        delivered = resp.status_code < 400
        if not delivered:
            log.error("gateway %s refused %s revision %d: %d %s", self.url, fqrn, msg.revision,
                      resp.status_code, resp.text[:200])
        if self.on_result is not None:
            self.on_result(fqrn, msg.revision, delivered)
        return delivered
