"""Notification gateway (docs/cvmfs-format.md, "Notifications") over real HTTP: the real publisher's request, the
subscriber's stream, verification, restarts, and the upload role notifying a remote gateway."""

from __future__ import annotations

import base64
import json
import queue
import shutil
import socket
import threading

import httpx
import pytest
from cryptography import x509

from runtime.settings import Settings
from tests.conftest import REFERENCE_DIR
from tests.cvmfs_reader import parse_manifest, verify_manifest_signature
from tests.live_server import free_socket, live_server
from tests.uploadkit import FQRN, auth, settings

REF = "zlib.ref.test"
SUBSCRIBE = "/api/v1/notifications/subscribe"
PUBLISH = "/api/v1/notifications/publish"


def captured_publish() -> tuple[bytes, bytes]:
    """Head and body of the request ``cvmfs_swissknife notify -p`` sent (exact bytes)."""
    text = (REFERENCE_DIR / "notify-publish-request.txt").read_bytes()
    raw = text.split(b"----- BEGIN RAW HTTP REQUEST -----\n")[1]
    raw = raw.split(b"\n----- END RAW HTTP REQUEST -----")[0]
    head, body = raw.split(b"\r\n\r\n", 1)
    return head, body


def captured_subscribe() -> bytes:
    text = (REFERENCE_DIR / "notify-subscribe-exchange.txt").read_bytes()
    raw = text.split(b"----- BEGIN RAW HTTP REQUEST -----\n")[1]
    return raw.split(b"\n----- END RAW HTTP REQUEST -----")[0]


def raw_request(port: int, request: bytes, host_was: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request.replace(host_was, b"127.0.0.1:%d" % port))
    return sock


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        more = sock.recv(65536)
        if not more:
            break
        data += more
    return data


@pytest.fixture
def ref_gateway(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    for suffix in ("crt", "pub"):
        shutil.copy(REFERENCE_DIR / REF / "keys" / f"{REF}.{suffix}", keys)
    s = Settings(data_dir=tmp_path / "data", keys_dir=keys, role="gateway", scheduler=False,
                 log_level="warning")
    with live_server(s) as server:
        yield server


class Subscriber:
    """An SSE subscriber on a thread: events and the way the stream ended, in a queue."""

    def __init__(self, url: str, fqrn: str):
        self.events: queue.Queue = queue.Queue()
        self.body = json.dumps({"version": 1, "repository": fqrn}, separators=(",", ":"))
        self.url = url
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        try:
            with httpx.stream("GET", self.url + SUBSCRIBE, content=self.body, timeout=None,
                              headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
                self.events.put(("status", r.status_code, r.headers.get("content-type")))
                for piece in r.iter_raw():
                    buf += piece
                    while b"\n\n" in buf:
                        event, buf = buf.split(b"\n\n", 1)
                        self.events.put(("event", event))
            self.events.put(("end", "clean"))
        except httpx.HTTPError as exc:
            self.events.put(("end", type(exc).__name__))

    def next(self, timeout: float = 10) -> tuple:
        return self.events.get(timeout=timeout)

    def message(self, timeout: float = 10) -> dict:
        kind, *rest = self.next(timeout)
        if kind == "status":
            kind, *rest = self.next(timeout)
        assert kind == "event", (kind, rest)
        event = rest[0]
        assert event.startswith(b"data: ") and b"\n" not in event
        return json.loads(event[len(b"data: "):])


def verified_revision(msg: dict, fqrn: str, cert_pem: bytes) -> int:
    """Check a message like the client does (§10.2) with the independent reader's code."""
    assert msg["type"] == "activity" and msg["version"] == 1 and msg["repository"] == fqrn
    assert isinstance(msg["timestamp"], str)
    m = parse_manifest(base64.b64decode(msg["manifest"], validate=True), fqrn)
    verify_manifest_signature(m, x509.load_pem_x509_certificate(cert_pem))
    return m.revision


# --- the real publisher and subscriber traffic --------------------------------------------------

def test_real_publisher_request_is_accepted_byte_for_byte(ref_gateway):
    head, body = captured_publish()
    sub = raw_request(ref_gateway.port, captured_subscribe(), b"127.0.0.1:18082")
    start = recv_until(sub, b"\r\n\r\n")
    assert b"200 OK" in start and b"content-type: text/event-stream" in start.lower()
    pub = raw_request(ref_gateway.port, head + b"\r\n\r\n" + body, b"127.0.0.1:18081")
    answer = recv_until(pub, b'{"status":"ok"}')
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')
    # the subscriber gets what the capture shows, one chunk "39c": data: + body + LF LF,
    # except that the gateway re-serializes the message itself and stamps it with the
    # manifest's signed time (T1795886207) instead of echoing the publisher's clock
    canonical = body.replace(b'"28 Nov 2026 17:18:26"', b'"28 Nov 2026 17:16:47"')
    assert canonical != body
    event = recv_until(sub, b"\n\n\r\n")
    assert event == b"%x\r\n" % (len(body) + 8) + b"data: " + canonical + b"\n\n\r\n"
    assert b"%x" % (len(body) + 8) == b"39c"
    sub.close()


def test_new_subscriber_gets_the_last_message_at_once(ref_gateway):
    head, body = captured_publish()
    assert httpx.post(ref_gateway.url + PUBLISH, content=body).json() == {"status": "ok"}
    sub = Subscriber(ref_gateway.url, REF)
    msg = sub.message()
    cert = (REFERENCE_DIR / REF / "keys" / f"{REF}.crt").read_bytes()
    assert verified_revision(msg, REF, cert) == 3
    # re-publishing the same message is accepted and changes nothing
    again = httpx.post(ref_gateway.url + PUBLISH, content=body)
    assert again.status_code == 200
    with pytest.raises(queue.Empty):
        sub.next(timeout=0.5)


@pytest.mark.parametrize("mutate, status, fragment", [
    (lambda d: d.replace(b'"version" : 1', b'"version" : "1"'), 400, "'version'"),
    (lambda d: d.replace(b'"activity"', b'"other"'), 400, "'type'"),
    (lambda d: d.replace(b'"manifest" : "Q2Y', b'"manifest" : "%%%'), 400, "base64"),
    (lambda d: b"not json", 400, "not JSON"),
    (lambda d: d.replace(b'"repository" : "zlib.ref.test"', b'"repository" : "none.ref.test"'),
     404, "unknown repository"),
])
def test_malformed_or_unknown_messages_are_refused(ref_gateway, mutate, status, fragment):
    _head, body = captured_publish()
    r = httpx.post(ref_gateway.url + PUBLISH, content=mutate(body))
    assert r.status_code == status and fragment in r.json()["detail"]


def test_forged_manifest_is_refused(ref_gateway):
    _head, body = captured_publish()
    doc = json.loads(body)
    blob = bytearray(base64.b64decode(doc["manifest"]))
    blob[-5] ^= 0xFF  # corrupt the signature
    doc["manifest"] = base64.b64encode(bytes(blob)).decode()
    r = httpx.post(ref_gateway.url + PUBLISH, content=json.dumps(doc))
    assert r.status_code == 403 and "does not verify" in r.json()["detail"]
    sub = Subscriber(ref_gateway.url, REF)
    assert sub.next()[0] == "status"
    with pytest.raises(queue.Empty):  # nothing was stored, so nothing to send
        sub.next(timeout=0.5)


def test_subscribe_for_unknown_repository_is_404(ref_gateway):
    r = httpx.request("GET", ref_gateway.url + SUBSCRIBE,
                      content=b'{"version":1,"repository":"nope.example.org"}')
    assert r.status_code == 404 and "unknown repository" in r.json()["detail"]


# --- our own publishes --------------------------------------------------------------------------

def test_upload_notifies_subscribers_with_a_verifying_manifest(tmp_path):
    with live_server(settings(tmp_path)) as srv:
        cert = (srv.settings.keys_dir / f"{FQRN}.crt").read_bytes()
        sub = Subscriber(srv.url, FQRN)
        first = verified_revision(sub.message(), FQRN, cert)
        assert first == srv.repositories[FQRN].revision()
        r = httpx.put(f"{srv.url}/repos/{FQRN}/n1", content=b"x", headers=auth())
        msg = sub.message()
        assert verified_revision(msg, FQRN, cert) == r.json()["revision"] > first
        assert base64.b64decode(msg["manifest"]) == srv.repositories[FQRN].manifest_bytes()
        # an older revision is refused by the publish endpoint (no rollback)
        stale = msg
        httpx.put(f"{srv.url}/repos/{FQRN}/n2", content=b"y", headers=auth())
        sub.message()
        old_body = json.dumps(stale).encode()
        refused = httpx.post(srv.url + PUBLISH, content=old_body)
        assert refused.status_code == 409 and "not newer" in refused.json()["detail"]
        # /repos/<fqrn>/notify sends the current one again
        httpx.post(f"{srv.url}/repos/{FQRN}/notify", headers=auth())
        assert verified_revision(sub.message(), FQRN, cert) == srv.repositories[FQRN].revision()


def test_restart_drops_streams_with_an_error_and_reconnects_get_current_manifest(tmp_path):
    s = settings(tmp_path)
    with live_server(s) as first:
        port = first.port
        sub = Subscriber(first.url, FQRN)
        sub.message()
        httpx.put(f"{first.url}/repos/{FQRN}/before", content=b"b", headers=auth())
        sub.message()
        revision = first.repositories[FQRN].revision()
    assert sub.next() == ("end", "RemoteProtocolError")  # not a clean end: clients retry
    with live_server(s, port=port) as second:
        again = Subscriber(second.url, FQRN)
        cert = (s.keys_dir / f"{FQRN}.crt").read_bytes()
        assert verified_revision(again.message(timeout=5), FQRN, cert) == revision


def test_upload_role_notifies_a_separate_gateway_over_http(tmp_path):
    reserved = free_socket()
    upload_port = reserved.getsockname()[1]
    reserved.close()
    keys_dir = settings(tmp_path / "upload").keys_dir
    gw_settings = Settings(data_dir=tmp_path / "gw-data", keys_dir=keys_dir, role="gateway",
                           stratum0_url=f"http://127.0.0.1:{upload_port}/cvmfs",
                           scheduler=False, log_level="warning")
    with live_server(gw_settings) as gw:
        upload_settings = settings(tmp_path / "upload", role="upload",
                                   gateway_url=f"{gw.url}/api/v1")
        with live_server(upload_settings, port=upload_port) as up:
            cert = (keys_dir / f"{FQRN}.crt").read_bytes()
            sub = Subscriber(gw.url, FQRN)
            # the gateway has no data directory of its own: the current manifest comes
            # from the stratum 0
            assert verified_revision(sub.message(), FQRN, cert) == \
                up.repositories[FQRN].revision()
            r = httpx.put(f"{up.url}/repos/{FQRN}/remote", content=b"r", headers=auth())
            assert verified_revision(sub.message(), FQRN, cert) == r.json()["revision"]
            assert httpx.get(f"{gw.url}/healthz").json()["role"] == "gateway"
            assert httpx.get(f"{gw.url}/repos/{FQRN}").status_code == 404
            assert httpx.request("GET", f"{up.url}{SUBSCRIBE}").status_code == 404
