"""The gateway's own Prometheus metrics, registered into the app's registry (``/metrics``).

The subscriber gauge (``cvmfs_ephemeral_subscribers``) is read from the hub at scrape time by
the server's collector; what only the gateway sees as it happens is here: how long an accepted
revision took to reach each subscriber's socket, and how many subscribers were dropped for not
reading.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: Fan-out to 10,000 subscribers should take well under a second: resolve that range finely.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.delivery_seconds = Histogram(
            "cvmfs_ephemeral_notification_delivery_seconds",
            "Time from accepting a revision to writing its event to a subscriber's socket",
            registry=registry, buckets=DELIVERY_BUCKETS)
        self.dropped = Counter(
            "cvmfs_ephemeral_subscribers_dropped",
            "Subscribers disconnected because they stopped reading their stream",
            registry=registry)
