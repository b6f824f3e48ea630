"""In the split layout (a gateway role with a stratum-0 URL) subscribers only ever see a message
the gateway built itself from a manifest it verified: lenient or hostile publish bodies change
nothing anyone sees, the newest signed revision wins, and a late subscriber gets the current
canonical message, from what was published or from the stratum 0."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.gatewaykit import (PUBLISH, REF, SUBSCRIBE, RawSubscriber, canonical_event,
                              reference_manifest, signed_manifest, split_gateway, swissknife_body)

REV3 = reference_manifest()


def lenient_variants(valid_body: bytes) -> dict[str, bytes]:
    """The valid current manifest wrapped in JSON that lenient parsers accept."""
    doc = json.loads(valid_body)
    manifest = json.dumps(doc["manifest"])
    return {
        "duplicate manifest key": valid_body[:-1] + b', "manifest" : ' + manifest.encode() + b"}",
        "duplicate repository key": valid_body.replace(
            b'"repository" : "zlib.ref.test"',
            b'"repository" : "zlib.ref.test", "repository" : "zlib.ref.test"'),
        "NaN value": valid_body[:-1] + b', "extra" : NaN}',
        "Infinity value": valid_body[:-1] + b', "extra" : -Infinity}',
        "5,000-deep nesting": valid_body[:-1] + b', "extra" : ' + b"[" * 5000 + b"]" * 5000
        + b"}",
        "nesting inside a value": valid_body[:-1] + b', "x" : {"a" : {"b" : {"c" : {"d" : '
        b'{"e" : {"f" : {"g" : {"h" : 1}}}}}}}}}',
    }


@pytest.fixture
def gateway(tmp_path):
    with split_gateway(tmp_path, gateway_refresh_s=0) as gw:
        yield gw


def test_lenient_json_is_refused_and_changes_nothing_any_subscriber_sees(gateway):
    early = RawSubscriber(gateway.port)
    first = early.chunk()
    assert first == canonical_event(REV3)  # from the stratum 0: nothing published yet
    for name, body in lenient_variants(swissknife_body(REV3)).items():
        r = httpx.post(gateway.url + PUBLISH, content=body)
        assert r.status_code == 400, (name, r.status_code, r.text)
        detail = r.json()["detail"]
        assert "\n" not in detail and detail, name
    assert early.no_chunk(within=0.5)
    late = RawSubscriber(gateway.port)
    assert late.chunk() == canonical_event(REV3)
    early.close()
    late.close()


@pytest.mark.parametrize("body, fragment", [
    (b'{"a": 1, "a": 2}', "duplicate key"),
    (b'{"version": NaN}', "NaN is not valid JSON"),
    (b"[" * 5000 + b"]" * 5000, "nested deeper than 8"),
    (b"{" + b'"k":{' * 5000 + b"1" + b"}" * 5001, "nested deeper than 8"),
    (b"\xff\xfe not utf-8", "not JSON"),
])
def test_hostile_json_is_a_clear_400(gateway, body, fragment):
    r = httpx.post(gateway.url + PUBLISH, content=body)
    assert r.status_code == 400 and fragment in r.json()["detail"]


def test_bodies_built_to_make_a_parser_backtrack_are_refused_quickly(gateway):
    """Bounded in time as well as size: escaped quotes that a naive string regex rescans from
    every position, and 30,000 sibling arrays (timeout 5 s on the client)."""
    for body in (b'"' + b'\\"' * 30000, b"[" + b"[]," * 20000 + b"[]]"):
        r = httpx.post(gateway.url + PUBLISH, content=body, timeout=5)
        assert r.status_code == 400


def test_oversized_body_is_413(gateway):
    r = httpx.post(gateway.url + PUBLISH, content=b" " * (64 * 1024 + 1))
    assert r.status_code == 413 and "larger than 65536" in r.json()["detail"]


def test_a_valid_but_unusual_body_is_stored_in_canonical_form(gateway):
    """Extra keys, other spacing, escapes and several lines reach no subscriber: the stored
    message is rebuilt from the verified manifest."""
    early = RawSubscriber(gateway.port)
    assert early.chunk() == canonical_event(REV3)
    rev4 = signed_manifest(4)
    doc = json.loads(swissknife_body(rev4))
    doc["timestamp"] = "\u2028 whatever \"the\" publisher's clock says"
    doc["extra"] = {"nested": ["ignored", 1.5, None]}
    odd = json.dumps(doc, indent=2, ensure_ascii=True).encode()
    r = httpx.post(gateway.url + PUBLISH, content=odd)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert early.chunk() == canonical_event(rev4)
    assert RawSubscriber(gateway.port).chunk() == canonical_event(rev4)


def test_newest_revision_wins_and_older_or_forged_ones_change_nothing(gateway):
    rev4, rev5 = signed_manifest(4), signed_manifest(5)
    assert httpx.post(gateway.url + PUBLISH, content=swissknife_body(rev5)).status_code == 200
    sub = RawSubscriber(gateway.port)
    assert sub.chunk() == canonical_event(rev5)
    stale = httpx.post(gateway.url + PUBLISH, content=swissknife_body(rev4))
    assert stale.status_code == 409 and "not newer than the current revision 5" in \
        stale.json()["detail"]
    other5 = signed_manifest(5, base=rev4.replace(b"\nD60\n", b"\nD61\n"))
    same_rev = httpx.post(gateway.url + PUBLISH, content=swissknife_body(other5))
    assert same_rev.status_code == 409
    again = httpx.post(gateway.url + PUBLISH, content=swissknife_body(rev5, stamp="later"))
    assert again.status_code == 200 and again.json()["detail"] == "unchanged"
    assert sub.no_chunk(within=0.5)
    assert RawSubscriber(gateway.port).chunk() == canonical_event(rev5)


def test_a_gateway_that_missed_a_publish_heals_from_the_stratum_0(gateway):
    """The stored message is not final: new subscriptions re-read the stratum 0 (at most every
    ``gateway_refresh_s``) and a newer verified manifest there is pushed to everyone."""
    early = RawSubscriber(gateway.port)
    assert early.chunk() == canonical_event(REV3)
    rev6 = signed_manifest(6)
    gateway.stratum0_serves(rev6)  # published while the gateway was not told
    time.sleep(0.05)
    late = RawSubscriber(gateway.port)
    got = late.chunk()
    if got == canonical_event(REV3):  # answered from memory; the refresh runs behind it
        got = late.chunk()
    assert got == canonical_event(rev6)
    assert early.chunk() == canonical_event(rev6)
    # a stratum 0 serving something unverifiable is ignored
    gateway.stratum0_serves(rev6[:-3] + b"xyz")
    time.sleep(0.05)
    assert RawSubscriber(gateway.port).chunk() == canonical_event(rev6)
    assert early.no_chunk(within=0.3)


@pytest.mark.parametrize("body", [
    b'{"version":1,"repository":"zlib.ref.test","repository":"zlib.ref.test"}',
    b'{"version":NaN,"repository":"zlib.ref.test"}',
    b'{"version":1,"repository":"zlib.ref.test","x":' + b"[" * 1500 + b"]" * 1500 + b"}",
    b'{"version":"1","repository":"zlib.ref.test"}',
    b'{"version":1,"repository":"../../etc"}',
    b"",
])
def test_subscribe_requests_are_parsed_strictly(gateway, body):
    r = httpx.request("GET", gateway.url + SUBSCRIBE, content=body, timeout=5)
    assert r.status_code == 400 and "repository" in r.json()["detail"]


def test_oversized_subscribe_body_is_413(gateway):
    r = httpx.request("GET", gateway.url + SUBSCRIBE, content=b" " * 5000, timeout=5)
    assert r.status_code == 413


def test_subscribing_to_a_known_repository_in_the_strict_form_streams(gateway):
    with httpx.stream("GET", gateway.url + SUBSCRIBE, timeout=5,
                      content=json.dumps({"version": 1, "repository": REF})) as r:
        assert r.status_code == 200
        assert next(r.iter_raw()) == canonical_event(REV3)
