"""Fan-out: many subscribers on one process, bounded per subscriber, a subscriber that stops
reading is dropped without holding anyone up, and the gateway's metrics say so.

(Speed at 10,000 subscribers is measured by bench/gateway.py, not here.)"""

from __future__ import annotations

import re
import resource
import socket
import time

import httpx

from runtime.server.app import create_app
from runtime.settings import Settings
from tests.gatewaykit import (PUBLISH, REF, RawSubscriber, canonical_event, reference_manifest,
                              signed_manifest, split_gateway, swissknife_body)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_every_subscriber_gets_each_publish_and_is_counted(tmp_path):
    with split_gateway(tmp_path) as gw:
        subs = [RawSubscriber(gw.port) for _ in range(200)]
        for s in subs:
            assert s.chunk() == canonical_event(reference_manifest())
        text = httpx.get(gw.url + "/metrics").text
        assert metric(text, f'cvmfs_ephemeral_subscribers{{repository="{REF}"}}') == 200
        before = metric(text, "cvmfs_ephemeral_notification_delivery_seconds_count")
        rev4 = signed_manifest(4)
        assert httpx.post(gw.url + PUBLISH, content=swissknife_body(rev4)).status_code == 200
        for s in subs:
            assert s.chunk() == canonical_event(rev4)
        text = httpx.get(gw.url + "/metrics").text
        # each subscriber's delivery of the publish is timed once
        assert metric(text, "cvmfs_ephemeral_notification_delivery_seconds_count") \
            == before + 200
        for s in subs:
            s.close()
        deadline = time.monotonic() + 5
        while gw.hub.subscriber_counts() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gw.hub.subscriber_counts() == {}  # closed streams leave nothing behind


def test_a_subscriber_that_stops_reading_is_dropped_and_delays_no_one(tmp_path):
    """Keep-alives every 20 ms fill a non-reading subscriber's small buffers; once an event
    cannot be written for 0.3 s its connection is aborted, while a reading subscriber keeps
    getting every event on time."""
    with split_gateway(tmp_path, gateway_keepalive_s=0.02, gateway_send_timeout_s=0.3,
                       gateway_subscriber_buffer_bytes=4096) as gw:
        stuck = RawSubscriber(gw.port, rcvbuf=4096)  # reads its head, then nothing
        reader = RawSubscriber(gw.port)
        deadline = time.monotonic() + 20
        while gw.hub.subscriber_counts().get(REF) != 1:
            assert time.monotonic() < deadline, "the stuck subscriber was never dropped"
            reader.chunk(timeout=1)  # a keep-alive at least every ~20 ms, never stalled
        assert metric(httpx.get(gw.url + "/metrics").text,
                      "cvmfs_ephemeral_subscribers_dropped_total") == 1
        rev4 = signed_manifest(4)
        assert httpx.post(gw.url + PUBLISH, content=swissknife_body(rev4)).status_code == 200
        while (chunk := reader.chunk(timeout=2)) != canonical_event(rev4):
            assert chunk == canonical_event(reference_manifest())
        # the dropped one finds its connection aborted once it reads what was buffered
        stuck.sock.settimeout(5)
        ended = False
        try:
            while stuck.sock.recv(65536):
                pass
            ended = True
        except (ConnectionResetError, socket.timeout):
            ended = True
        assert ended
        reader.close()


def test_serving_the_gateway_lifts_the_open_file_limit(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(1024, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        create_app(Settings(data_dir=tmp_path / "d", keys_dir=tmp_path / "k", role="gateway",
                            scheduler=False))
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
