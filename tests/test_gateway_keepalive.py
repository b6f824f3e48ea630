"""Keep-alives on idle notification streams, chosen for what the REAL CVMFS subscriber accepts.

Load balancers cut connections idle for 30 s, so the gateway must write something on a quiet
stream. Which bytes are safe follows from the subscriber's receive callback,
``cvmfs/notify/subscriber_sse.cc`` ``SubscriberSSE::CurlRecvCB`` (cvmfs 2.12, used both by
``cvmfs_swissknife notify -s`` and by the mounted client's ``notification_client.cc``):

1. ``std::string buf(static_cast<char*>(buffer))`` copies the block as a C string, ignoring
   its length. The bundled libcurl 7.86 (``externals/libcurl``) NUL-terminates each network
   *read* (``lib/transfer.c`` readwrite_data: ``buf[nread] = 0``) and its chunked decoder
   (``lib/http_chunks.c``, CHUNK_DATA) passes the callback a pointer into that read buffer,
   so the callback sees a chunk's payload *followed by the chunk's CRLF trailer*.
2. ``SplitString(buf, '\\n')``: because of that trailer every chunk gives two or more lines,
   so every chunk runs ``Consume(topic, buffer_ + lines[0])`` (``AppendToBuffer`` strips one
   leading ``"data: "``), then clears the buffer. Further lines are meant to be kept when they
   start with ``"data: "``, but the test is ``substr(0, 5) == "data: "``: never true.
3. ``Consume`` (``cmd_sub.cc`` / ``notification_client.cc``) returns ``kError`` unless the text
   decodes as an activity message (``notify/messages.cc`` ``FromJSONString``) whose manifest
   verifies; ``kError`` makes the callback return 0, libcurl aborts the transfer, the
   supervisor logs "Subscription failed. Retrying." and gives up after more than 10 failures
   in 60 s.

So an SSE comment (``": ..."``), an empty line or an empty ``data:`` event each reach
``Consume`` as ``":"``, ``""`` or ``"\\r"`` and break the stream. The only keep-alive it
tolerates is a complete valid message; a revision it already has is ignored ("not newer": the
capture's run 3 with ``-m 3`` printed nothing and kept the stream open). The gateway therefore
sends the current canonical message again on a stream silent for half the interval.

The model below transcribes steps 1-3 (no CVMFS code is copied) and is checked against the
captured exchange before it judges anything.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography import x509

from tests.conftest import REFERENCE_DIR
from tests.cvmfs_reader import parse_manifest, verify_manifest_signature
from tests.gatewaykit import REF, REF_KEYS, RawSubscriber, canonical_event, split_gateway

CERT = x509.load_pem_x509_certificate((REF_KEYS / f"{REF}.crt").read_bytes())


class CvmfsSubscriberModel:
    """``SubscriberSSE::CurlRecvCB`` + ``SwissknifeSubscriber::Consume``, step for step."""

    def __init__(self, min_revision: int = 0):
        self.buffer = ""
        self.revision = min_revision
        self.announced: list[int] = []  # "repository ... is now at revision N"
        self.aborted = False

    def _append(self, s: str) -> None:
        self.buffer += s[6:] if s[:6] == "data: " else s

    def on_chunk(self, payload: bytes, rest_of_read: bytes = b"") -> None:
        """One write callback: libcurl's pointer to the payload, read as a C string."""
        assert not self.aborted, "transfer already aborted"
        block = (payload + b"\r\n" + rest_of_read).split(b"\0", 1)[0].decode("latin-1")
        lines = block.split("\n")
        self._append(lines[0])
        if len(lines) == 1:
            return
        ok = self._consume(self.buffer)
        self.buffer = ""
        for line in lines[1:]:
            if line[:5] == "data: ":  # the source's 5-vs-6 comparison: never true
                self._append(line)
        if not ok:
            self.aborted = True  # callback returns 0: CURLE_WRITE_ERROR, reconnect

    def _consume(self, text: str) -> bool:
        try:
            msg = json.loads(text)
            if msg["type"] != "activity" or not isinstance(msg["version"], int):
                return False
            if not all(isinstance(msg[k], str) for k in ("timestamp", "repository", "manifest")):
                return False
            m = parse_manifest(base64.b64decode(msg["manifest"], validate=True), REF)
            verify_manifest_signature(m, CERT)
        except Exception:  # noqa: BLE001 - any failure is kError to the real client
            return False
        if m.revision > self.revision:
            self.revision = m.revision
            self.announced.append(m.revision)
        return True


def captured_event_chunk() -> bytes:
    text = (REFERENCE_DIR / "notify-subscribe-exchange.txt").read_text()
    payload = text.split("; payload:\n", 1)[1].split("\n\n# (end of payload", 1)[0]
    return payload.encode() + b"\n\n"


def test_the_model_reproduces_the_captured_exchange():
    """Run 1: the captured chunk announces revision 3; run 3 (-m 3): ignored, stream open."""
    run1 = CvmfsSubscriberModel()
    run1.on_chunk(captured_event_chunk())
    assert run1.announced == [3] and not run1.aborted
    run3 = CvmfsSubscriberModel(min_revision=3)
    run3.on_chunk(captured_event_chunk())
    run3.on_chunk(captured_event_chunk())
    assert run3.announced == [] and not run3.aborted


@pytest.mark.parametrize("keepalive", [b": keep-alive\n\n", b":\n\n", b"\n", b"data: \n\n",
                                       b"data: ", b" "])
def test_comment_and_empty_keepalives_would_break_the_real_subscriber(keepalive):
    model = CvmfsSubscriberModel(min_revision=3)
    model.on_chunk(captured_event_chunk())
    model.on_chunk(keepalive)
    assert model.aborted


def test_idle_streams_get_the_current_message_again_which_the_subscriber_ignores(tmp_path):
    interval = 0.4
    with split_gateway(tmp_path, gateway_keepalive_s=interval) as gw:
        sub = RawSubscriber(gw.port)
        model = CvmfsSubscriberModel()
        first = sub.chunk()
        assert first == canonical_event((gw.stratum0 / REF / ".cvmfspublished").read_bytes())
        model.on_chunk(first)
        arrivals = [time.monotonic()]
        for _ in range(3):
            chunk = sub.chunk(timeout=interval * 3)
            arrivals.append(time.monotonic())
            assert chunk == first  # the same canonical bytes: a no-op for the client
            model.on_chunk(chunk)
        assert model.announced == [3] and not model.aborted
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert max(gaps) < interval * 1.5, gaps  # never silent for much over one interval
        sub.close()


def test_keepalives_can_be_disabled(tmp_path):
    with split_gateway(tmp_path, gateway_keepalive_s=0) as gw:
        sub = RawSubscriber(gw.port)
        sub.chunk()
        assert sub.no_chunk(within=0.6)
