"""Prometheus metrics (``GET /metrics``): one registry per app, so tests can run many apps.

Counters and the publish histogram are updated as things happen; the revision, whitelist
expiry and subscriber gauges are read from the repositories and the hub at scrape time, so
they are right even for changes made by another process (a CLI publish, a maintenance job).

Retention (issue 12): artifacts and bytes per repository and per top-level namespace, the
share of its quota each namespace uses, and the artifacts each expiry sweep removed. Label
cardinality is bounded: only top-level namespaces are labels (never full artifact names), and
at most :data:`MAX_NAMESPACE_SERIES` per repository, the largest by bytes; the others are
summed into one series with ``namespace=""`` (a name no artifact can have).
"""

from __future__ import annotations

import datetime as dt
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest

from ..repository import top_namespace
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ..repository import Repository
from ..version import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Namespaces labelled per repository (the largest by bytes); the rest share ``namespace=""``.
MAX_NAMESPACE_SERIES = 50
OTHER_NAMESPACES = ""


def namespace_totals(names_sizes: list[tuple[str, int]],
                     cap: int = MAX_NAMESPACE_SERIES) -> dict[str, tuple[int, int]]:
    """(artifacts, bytes) per top-level namespace, at most ``cap`` of them plus the rest."""
    totals: dict[str, list[int]] = {}
    for name, size in names_sizes:
        entry = totals.setdefault(top_namespace(name), [0, 0])
        entry[0] += 1
        entry[1] += size
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1][1], kv[0]))
    out = {ns: (n, b) for ns, (n, b) in ranked[:cap]}
    rest = ranked[cap:]
    if rest:
        out[OTHER_NAMESPACES] = (sum(n for _ns, (n, _b) in rest),
                                 sum(b for _ns, (_n, b) in rest))
    return out


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
        # -- retention --
        art_bytes = GaugeMetricFamily("cvmfs_ephemeral_artifact_bytes",
                                      "Bytes of the published artifacts (file sizes)",
                                      labels=["repository"])
        ns_artifacts = GaugeMetricFamily(
            "cvmfs_ephemeral_namespace_artifacts", "Artifacts per top-level namespace "
            f"(at most {MAX_NAMESPACE_SERIES} per repository; namespace=\"\" sums the rest)",
            labels=["repository", "namespace"])
        ns_bytes = GaugeMetricFamily("cvmfs_ephemeral_namespace_bytes",
                                     "Bytes per top-level namespace (same series as "
                                     "cvmfs_ephemeral_namespace_artifacts)",
                                     labels=["repository", "namespace"])
        quota = GaugeMetricFamily("cvmfs_ephemeral_namespace_quota_bytes",
                                  "Byte quota of each top-level namespace",
                                  labels=["repository"])
        ratio = GaugeMetricFamily("cvmfs_ephemeral_namespace_quota_used_ratio",
                                  "Share of its quota a top-level namespace uses (0..1)",
                                  labels=["repository", "namespace"])
        now = dt.datetime.now(dt.timezone.utc)
        for fqrn, repo in self.repositories.items():
            try:
                revision.add_metric([fqrn], repo.revision())
                whitelist.add_metric([fqrn], repo.whitelist().seconds_left(now))
                arts = repo.artifacts()
                artifacts.add_metric([fqrn], len(arts))
                art_bytes.add_metric([fqrn], sum(a.size for a in arts))
                limit = getattr(repo.config, "quota_bytes", None)
                if limit:
                    quota.add_metric([fqrn], limit)
                for ns, (count, size) in namespace_totals([(a.name, a.size)
                                                           for a in arts]).items():
                    ns_artifacts.add_metric([fqrn, ns], count)
                    ns_bytes.add_metric([fqrn, ns], size)
                    if limit and ns != OTHER_NAMESPACES:
                        ratio.add_metric([fqrn, ns], size / limit)
            except Exception:  # noqa: BLE001 - a scrape must not fail because of one repository
                continue
        yield revision
        yield whitelist
        yield artifacts
        yield from (art_bytes, ns_artifacts, ns_bytes, quota, ratio)
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
        # -- retention: expirations per maintenance run (in-process runs: scheduler, routes)
        self.expirations = Histogram(
            "cvmfs_ephemeral_expirations_per_run", "Artifacts an expiry sweep removed",
            ["repository"], registry=r,
            buckets=(0, 1, 2, 5, 10, 25, 50, 100, 250, 1000, 10000))
        r.register(_StateCollector(repositories, subscribers))
        Info("cvmfs_ephemeral_build", "Version of the running server", registry=r).info(
            {"version": __version__})

    def observe_job(self, fqrn: str, job: str, report: dict) -> None:
        """A maintenance job ran on ``fqrn`` (``Repository.job_listeners``)."""
        if job == "clean" and not report.get("dry_run"):
            self.expirations.labels(fqrn).observe(int(report.get("removed_count", 0)))

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)
