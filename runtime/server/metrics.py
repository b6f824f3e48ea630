"""Prometheus metrics (``GET /metrics``): one registry per app, so tests can run many apps.

Counters and the publish histogram are updated as things happen; the revision, whitelist
expiry and subscriber gauges are read from the repositories and the hub at scrape time, so
they are right even for changes made by another process (a CLI publish, a maintenance job).
"""

from __future__ import annotations

import datetime as dt
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ..repository import Repository
from ..version import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StateCollector(Collector):
    def __init__(self, repositories: dict[str, Repository],
                 subscribers: Callable[[], dict[str, int]] | None):
        self.repositories = repositories
        self.subscribers = subscribers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        revision = GaugeMetricFamily("cvmfs_ephemeral_revision",
                                     "Revision (manifest S) currently served", labels=["repository"])
        whitelist = GaugeMetricFamily(
            "cvmfs_ephemeral_whitelist_seconds_to_expiry",
            "Seconds until clients refuse the whitelist (re-sign before it reaches 0)",
            labels=["repository"])
        artifacts = GaugeMetricFamily("cvmfs_ephemeral_artifacts", "Artifacts published",
                                      labels=["repository"])
        now = dt.datetime.now(dt.timezone.utc)
        for fqrn, repo in self.repositories.items():
            try:
                revision.add_metric([fqrn], repo.revision())
                whitelist.add_metric([fqrn], repo.whitelist().seconds_left(now))
                artifacts.add_metric([fqrn], len(repo.artifacts()))
            except Exception:  # noqa: BLE001 - a scrape must not fail because of one repository
                continue
        yield revision
        yield whitelist
        yield artifacts
        if self.subscribers is not None:
            subs = GaugeMetricFamily("cvmfs_ephemeral_subscribers",
                                     "Open notification streams", labels=["repository"])
            for fqrn, count in sorted(self.subscribers().items()):
                subs.add_metric([fqrn], count)
            yield subs


class Metrics:
    def __init__(self, repositories: dict[str, Repository],
                 subscribers: Callable[[], dict[str, int]] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.uploads = Counter("cvmfs_ephemeral_uploads", "Upload requests by outcome",
                               ["repository", "outcome"], registry=r)
        self.upload_bytes = Counter("cvmfs_ephemeral_upload_bytes",
                                    "Bytes received in successful uploads", ["repository"],
                                    registry=r)
        self.publish_seconds = Histogram(
            "cvmfs_ephemeral_publish_seconds", "Time a commit took (catalogs, sign, fsync)",
            ["repository"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.commit_batch = Histogram("cvmfs_ephemeral_commit_batch_size",
                                      "Transactions published per revision (group commit)",
                                      ["repository"], registry=r,
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.notifications = Counter("cvmfs_ephemeral_notifications",
                                     "Notification messages pushed to subscribers",
                                     ["repository"], registry=r)
        r.register(_StateCollector(repositories, subscribers))
        Info("cvmfs_ephemeral_build", "Version of the running server", registry=r).info(
            {"version": __version__})

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)
