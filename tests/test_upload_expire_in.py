"""``expire_in`` (GitLab's syntax) on the upload routes and the TTL route, over loopback."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from runtime.maintenance.clean import clean
from tests.live_server import live_server
from tests.uploadkit import FQRN, auth, settings, snapshot


def expires_in_s(answer: dict) -> float:
    at = dt.datetime.fromisoformat(answer["expires_at"].replace("Z", "+00:00"))
    return at.timestamp() - dt.datetime.now(dt.timezone.utc).timestamp()


@pytest.mark.parametrize("expire_in, seconds", [
    ("30 mins", 1800), ("2 hrs 20 min", 8400), ("1 week", 604800), ("3 days", 259200),
    ("1h", 3600), ("1.5 hours", 5400), ("90", 90),
])
def test_put_with_expire_in_sets_the_expiry(client, expire_in, seconds):
    r = client.put(f"/repos/{FQRN}/a.bin", content=b"x", params={"expire_in": expire_in})
    assert r.status_code == 200, r.text
    assert abs(expires_in_s(r.json()) - seconds) < 30
    listed = client.get(f"/repos/{FQRN}").json()["files"][0]
    assert listed["expires_at"] == r.json()["expires_at"]


def test_multipart_takes_expire_in(client):
    r = client.post(f"/repos/{FQRN}", files={"file": ("m.txt", b"m")},
                    params={"expire_in": "2 days"})
    assert r.status_code == 200, r.text
    assert abs(expires_in_s(r.json()) - 2 * 86400) < 30


def test_ttl_route_takes_expire_in(client):
    assert client.put(f"/repos/{FQRN}/a.bin", content=b"x").status_code == 200
    r = client.post(f"/repos/{FQRN}/a.bin/ttl", params={"expire_in": "1 week"})
    assert r.status_code == 200, r.text
    assert abs(expires_in_s(r.json()) - 604800) < 30


@pytest.mark.parametrize("params, message", [
    ({"expire_in": "never"}, "'never' is not allowed"),
    ({"expire_in": "soon"}, "not a duration"),
    ({"expire_in": "0 mins"}, "between 1 and"),
    ({"expire_in": "-5 min"}, "not a duration"),
    ({"expire_in": "31 days"}, "between 1 and 2592000"),
    ({"expire_in": "1 fortnight"}, "unknown unit"),
    ({"expire_in": "1 hour", "ttl_s": "60"}, "either ttl_s or expire_in"),
])
def test_refusals_are_422_with_one_line_and_publish_nothing(srv, client, params, message):
    before = snapshot(srv.repositories[FQRN])
    r = client.put(f"/repos/{FQRN}/a.bin", content=b"x", params=params)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert snapshot(srv.repositories[FQRN]) == before
    ttl = client.post(f"/repos/{FQRN}/a.bin/ttl", params=params)
    assert ttl.status_code == 422 and message in ttl.json()["detail"]


def test_never_where_allowed_means_no_expiry(tmp_path):
    with live_server(settings(tmp_path, allow_never_expire=True)) as srv, \
            httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as client:
        r = client.put(f"/repos/{FQRN}/keep.bin", content=b"k", params={"expire_in": "never"})
        assert r.status_code == 200, r.text
        assert r.json()["expires_at"] is None
        assert srv.repositories[FQRN].artifact("keep.bin").expires_at is None
        assert client.get(f"/repos/{FQRN}").json()["files"][0]["expires_at"] is None
        # an expiry sweep far in the future removes the mortal artifact, leaves this one alone
        assert client.put(f"/repos/{FQRN}/short.bin", content=b"s",
                          params={"expire_in": "1 min"}).status_code == 200
        repo = srv.repositories[FQRN]
        clean(repo, now=repo.clock() + 10 * 365 * 86400)
        assert [a.name for a in repo.artifacts()] == ["keep.bin"]
        # and the TTL route can give it a lifetime again, or take it away
        r = client.post(f"/repos/{FQRN}/keep.bin/ttl", params={"expire_in": "1 day"})
        assert r.status_code == 200 and abs(expires_in_s(r.json()) - 86400) < 30
        r = client.post(f"/repos/{FQRN}/keep.bin/ttl", params={"expire_in": "NEVER"})
        assert r.status_code == 200 and r.json()["expires_at"] is None


def test_an_identity_with_a_maximum_lifetime_is_bounded_in_expire_in_too(tmp_path):
    """An OIDC policy's max_ttl_s (3600 s here) bounds expire_in like ttl_s (403), and such an
    identity may not ask for ``never`` even where the server allows it."""
    from tests.oidc_issuer import running_issuer, github_claims
    from tests.test_auth_oidc import GH_PREFIX, oidc_config

    with running_issuer() as gh, running_issuer() as gl, \
            live_server(settings(tmp_path, oidc=oidc_config(gh, gl),
                                 allow_never_expire=True)) as srv:
        token = gh.sign(github_claims(gh.url))

        def put(name: str, expire_in: str) -> httpx.Response:
            return httpx.put(f"{srv.url}/repos/{FQRN}/{GH_PREFIX}{name}", content=b"p",
                             headers=auth(token), params={"expire_in": expire_in}, timeout=30)

        ok = put("a", "30 mins")
        assert ok.status_code == 200 and abs(expires_in_s(ok.json()) - 1800) < 30
        too_long = put("b", "2 hrs")
        assert too_long.status_code == 403 and "3600" in too_long.json()["detail"]
        never = put("c", "never")
        assert never.status_code == 403 and "never expire" in never.json()["detail"]
        assert {a.name for a in srv.repositories[FQRN].artifacts()} == {GH_PREFIX + "a"}
