"""Fuzzing the gateway's publish route and subscribe parser over real HTTP (hypothesis, short
runs): no input answers 5xx, and nothing a subscriber sees changes unless a publish carries a
valid, newer, signed manifest."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gatewaykit import (PUBLISH, REF, SUBSCRIBE, RawSubscriber, canonical_event,
                              reference_manifest, signed_manifest, split_gateway, swissknife_body)

REV3 = reference_manifest()
VALID = swissknife_body(REV3)
REFUSALS = {400, 403, 404, 409, 413}
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with split_gateway(tmp_path_factory.mktemp("fuzz"), gateway_refresh_s=3600) as gw:
        watcher = RawSubscriber(gw.port)
        assert watcher.chunk() == canonical_event(REV3)
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            yield gw, watcher, client
        watcher.close()


def nothing_changed(gw, watcher) -> None:  # type: ignore[no-untyped-def]
    assert watcher.no_chunk(within=0.2), "a subscriber was sent something"
    late = RawSubscriber(gw.port)
    assert late.chunk() == canonical_event(REV3)
    late.close()


def check_publish(client: httpx.Client, body: bytes) -> None:
    r = client.post(PUBLISH, content=body)
    assert r.status_code < 500, (r.status_code, r.text, body[:200])
    if r.status_code == 200:  # only the current manifest itself, re-published
        assert r.json() == {"status": "ok", "detail": "unchanged"}, body[:200]
    else:
        assert r.status_code in REFUSALS and r.json()["detail"], (r.status_code, r.text)


# JSON values including what lenient parsers take: NaN, Infinity, huge numbers, odd strings
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                    st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
real_keys = st.sampled_from(["version", "timestamp", "type", "repository", "manifest"])


@st.composite
def message_like(draw) -> bytes:  # type: ignore[no-untyped-def]
    """Objects with the real keys (maybe repeated, maybe with the real manifest) and noise."""
    pairs = []
    for _ in range(draw(st.integers(0, 8))):
        key = draw(st.one_of(real_keys, st.text(max_size=6)))
        value = draw(st.one_of(json_values, st.just(json.loads(VALID)["manifest"]),
                               st.just(REF), st.just("activity"), st.just(1)))
        pairs.append((key, value))
    sep = draw(st.sampled_from([", ", ",", " ,\n", ",\t"]))
    body = "{" + sep.join(f"{json.dumps(k)} : {json.dumps(v)}" for k, v in pairs) + "}"
    return body.encode("utf-8", "surrogatepass")


@st.composite
def mutated_valid(draw) -> bytes:  # type: ignore[no-untyped-def]
    """The captured valid body with a few bytes replaced, inserted or deleted."""
    body = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body) - 1))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        piece = draw(st.binary(min_size=1, max_size=8))
        if op == "replace":
            body[at:at + len(piece)] = piece
        elif op == "insert":
            body[at:at] = piece
        else:
            del body[at:at + len(piece)]
    return bytes(body)


@FUZZ
@given(body=st.binary(max_size=3000))
def test_publish_with_arbitrary_bytes(gateway, body):
    _gw, _watcher, client = gateway
    check_publish(client, body)


@FUZZ
@given(body=message_like())
def test_publish_with_message_like_json(gateway, body):
    _gw, _watcher, client = gateway
    check_publish(client, body)


@FUZZ
@given(body=mutated_valid())
def test_publish_with_mutations_of_the_real_body(gateway, body):
    _gw, _watcher, client = gateway
    check_publish(client, body)


@FUZZ
@given(depth=st.integers(1, 30_000), opener=st.sampled_from([b"[", b'{"a":']))
def test_publish_with_deep_nesting(gateway, depth, opener):
    _gw, _watcher, client = gateway
    closer = b"]" if opener == b"[" else b"}"
    check_publish(client, opener * depth + b"1" + closer * depth)


def test_after_all_publish_fuzzing_subscribers_saw_nothing(gateway):
    gw, watcher, _client = gateway
    nothing_changed(gw, watcher)


@FUZZ
@given(body=st.one_of(st.binary(max_size=600), message_like(),
                      st.builds(lambda v: json.dumps({"version": 1, "repository": v},
                                                     allow_nan=True).encode(), json_values)))
def test_subscribe_parser(gateway, body):
    gw, _watcher, _client = gateway
    with httpx.stream("GET", gw.url + SUBSCRIBE, content=body, timeout=10) as r:
        assert r.status_code < 500, (r.status_code, body[:200])
        if r.status_code == 200:  # only a well-formed request for the repository streams
            assert json.loads(body)["repository"] == REF
        else:
            assert r.status_code in (400, 404, 413)
            r.read()
            assert r.json()["detail"]


def test_after_subscribe_fuzzing_subscribers_saw_nothing(gateway):
    gw, watcher, _client = gateway
    nothing_changed(gw, watcher)


actions = st.lists(st.one_of(
    st.tuples(st.just("signed"), st.integers(1, 12)),  # a validly signed manifest
    st.tuples(st.just("forged"), st.integers(1, 12)),  # same, signature broken
    st.tuples(st.just("garbage"), message_like()),
), min_size=1, max_size=8)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=actions)
def test_subscribers_follow_exactly_the_newest_valid_signed_revision(tmp_path_factory, steps):
    with split_gateway(tmp_path_factory.mktemp("seq")) as gw:
        sub = RawSubscriber(gw.port)
        assert sub.chunk() == canonical_event(REV3)
        current = 3
        for kind, arg in steps:
            if kind == "garbage":
                body = arg
            else:
                blob = signed_manifest(arg)
                if kind == "forged":
                    blob = blob[:-1] + bytes([blob[-1] ^ 1])
                body = swissknife_body(blob)
            r = httpx.post(gw.url + PUBLISH, content=body, timeout=10)
            assert r.status_code < 500
            if kind == "signed" and arg > current:
                assert r.status_code == 200
                current = arg
                assert sub.chunk() == canonical_event(signed_manifest(arg))
            else:
                assert r.status_code != 200 or r.json().get("detail") == "unchanged"
        assert sub.no_chunk(within=0.1)
        late = RawSubscriber(gw.port)
        expected = REV3 if current == 3 else signed_manifest(current)
        assert late.chunk() == canonical_event(expected)
        late.close()
        sub.close()

