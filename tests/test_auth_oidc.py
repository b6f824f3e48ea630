"""Trusted publishing: CI identity tokens (GitHub Actions, GitLab CI) verified against a real
issuer on loopback, mapped by trust policies to exactly one templated namespace."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from runtime.auth.policy import PolicyError, load_config
from tests.live_server import LiveServer, live_server
from tests.oidc_issuer import (AUDIENCE, Issuer, SigningKey, github_claims, gitlab_claims,
                               hs256_with_public_key, running_issuer, tampered, unsigned)
from tests.uploadkit import FQRN, OTHER, TOKEN, auth, settings, snapshot

GH_PREFIX = "gh+123456+"  # gh+{repository_id}+ for repository_id 123456
GL_PREFIX = "gl+4242+main+"  # gl+{project_id}+{ref}+


def oidc_config(github: Issuer, gitlab: Issuer) -> str:
    return json.dumps({"issuers": [
        {"issuer": github.url, "audience": AUDIENCE, "name": "github",
         "web_url": "https://github.example", "policies": [
             {"name": "app-branches", "claims": {"repository": "octo-org/app",
                                                 "ref": "refs/heads/*"},
              "repository": FQRN, "prefix": "gh+{repository_id}+", "max_ttl_s": 3600,
              "quota_bytes": 10**9}]},
        {"issuer": gitlab.url, "audience": AUDIENCE, "name": "gitlab", "policies": [
            {"name": "app-protected", "claims": {"project_path": "group/sub/app",
                                                 "ref_protected": True},
             "repository": FQRN, "prefix": "gl+{project_id}+{ref}+"}]},
    ]})


@pytest.fixture
def issuers() -> Iterator[tuple[Issuer, Issuer]]:
    with running_issuer() as gh, running_issuer() as gl:
        yield gh, gl


def server(tmp_path: Path, issuers: tuple[Issuer, Issuer], **over) -> LiveServer:
    return live_server(settings(tmp_path, oidc=oidc_config(*issuers), **over))


def put(srv: LiveServer, name: str, token: str, repo: str = FQRN, **params) -> httpx.Response:
    return httpx.put(f"{srv.url}/repos/{repo}/{name}", content=b"payload", headers=auth(token),
                     params=params, timeout=30)


def test_a_matching_github_job_publishes_into_its_templated_namespace_only(tmp_path, issuers, caplog):
    gh, _gl = issuers
    token = gh.sign(github_claims(gh.url))
    with server(tmp_path, issuers) as srv, caplog.at_level(logging.INFO, logger="runtime.auth"):
        ok = put(srv, GH_PREFIX + "build-1", token)
        assert ok.status_code == 200, ok.text
        assert ok.json()["path"] == f"/cvmfs/{FQRN}/{GH_PREFIX}build-1"
        repo = srv.repositories[FQRN]
        before = snapshot(repo)
        outside = put(srv, "gh+999+build-1", token)
        assert outside.status_code == 403 and "must start with 'gh+123456+'" in outside.json()["detail"]
        assert put(srv, "build-1", token).status_code == 403
        assert put(srv, GH_PREFIX + "x", token, repo=OTHER).status_code == 403
        for path in (f"/repos/{FQRN}/gc", f"/repos/{FQRN}/clean", "/gc", "/resign", "/housekeeping"):
            r = httpx.post(f"{srv.url}{path}", headers=auth(token), timeout=30)
            assert r.status_code == 403 and "admin" in r.json()["detail"], (path, r.text)
        # the TTL is bounded by the policy, deleting is bounded by the namespace
        too_long = put(srv, GH_PREFIX + "b2", token, ttl_s=7200)
        assert too_long.status_code == 403 and "3600" in too_long.json()["detail"]
        assert httpx.delete(f"{srv.url}/repos/{FQRN}/other", headers=auth(TOKEN)).status_code == 404
        assert snapshot(repo) == before
        assert httpx.delete(f"{srv.url}/repos/{FQRN}/{GH_PREFIX}build-1",
                            headers=auth(token)).status_code == 200
    grants = [json.loads(r.getMessage().split("authorised: ", 1)[1])
              for r in caplog.records if "authorised: " in r.getMessage()]
    assert grants[0] == {
        "kind": "oidc", "label": "github:repo:octo-org/app:ref:refs/heads/main", "role": "upload",
        "repository_scope": FQRN, "prefix": GH_PREFIX, "issuer": gh.url,
        "subject": "repo:octo-org/app:ref:refs/heads/main", "policy": "app-branches",
        "quota_bytes": 10**9,
        "run_url": "https://github.example/octo-org/app/actions/runs/9876543210",
        "claims": {k: github_claims(gh.url)[k] for k in (
            "repository", "repository_id", "repository_owner", "ref", "ref_type", "sha",
            "workflow_ref", "job_workflow_ref", "event_name", "run_id", "run_attempt", "actor",
            "ref_protected")}}
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


def test_a_gitlab_job_publishes_by_project_and_protected_ref(tmp_path, issuers):
    _gh, gl = issuers
    with server(tmp_path, issuers) as srv:
        ok = put(srv, GL_PREFIX + "pkg", gl.sign(gitlab_claims(gl.url)))
        assert ok.status_code == 200, ok.text
        unprotected = put(srv, GL_PREFIX + "pkg2", gl.sign(gitlab_claims(gl.url, ref_protected="false")))
        assert unprotected.status_code == 403
        assert unprotected.json()["detail"] == ("no trust policy matches this identity "
                                                "(policy app-protected: claim 'ref_protected' does not match)")
        other = put(srv, GL_PREFIX + "pkg3", gl.sign(gitlab_claims(gl.url, project_path="group/evil")))
        assert other.status_code == 403 and "'project_path'" in other.json()["detail"]


def test_a_job_of_another_repository_or_branch_is_refused_naming_the_claim(tmp_path, issuers):
    gh, _gl = issuers
    with server(tmp_path, issuers) as srv:
        repo = srv.repositories[FQRN]
        before = snapshot(repo)
        evil = gh.sign(github_claims(gh.url, repository="evil/app", repository_id="123456"))
        r = put(srv, GH_PREFIX + "x", evil)
        assert r.status_code == 403 and "claim 'repository' does not match" in r.json()["detail"]
        assert evil not in r.text
        tag = put(srv, GH_PREFIX + "x", gh.sign(github_claims(gh.url, ref="refs/tags/v1")))
        assert tag.status_code == 403 and "claim 'ref'" in tag.json()["detail"]
        # a templated value that is not a name segment refuses the request
        weird = put(srv, GH_PREFIX + "x", gh.sign(github_claims(gh.url, repository_id="../1")))
        assert weird.status_code == 403 and "repository_id" in weird.json()["detail"]
        assert snapshot(repo) == before


def refused_tokens(gh: Issuer, gl: Issuer) -> dict[str, tuple[str, str]]:
    """case -> (token, what the one-line reason says)."""
    now = int(time.time())
    good = github_claims(gh.url)
    stranger = SigningKey(gh.keys[0].kid)  # same kid, another issuer's key
    bad_sig = "signature does not verify"
    return {
        "expired": (gh.sign({**good, "exp": now - 600, "iat": now - 900, "nbf": now - 900}),
                    "has expired"),
        "not yet valid": (gh.sign({**good, "nbf": now + 600}), "not valid yet"),
        "issued in the future": (gh.sign({**good, "iat": now + 600, "nbf": now - 5}),
                                 "not valid yet"),
        "untrusted issuer": (gh.sign({**good, "iss": "https://token.actions.githubusercontent.com"}),
                             "issuer is not trusted"),
        "another trusted issuer's name": (gh.sign({**good, "iss": gl.url}), bad_sig),
        "wrong audience": (gh.sign({**good, "aud": "https://elsewhere.test"}), "audience"),
        "alg none": (unsigned(good, gh.keys[0].kid), "algorithm 'none' is not accepted"),
        "HS256 with the public key": (hs256_with_public_key(good, gh.keys[0]),
                                      "algorithm 'HS256' is not accepted"),
        "ES256 header on an RSA key": (gh.sign(good, key=SigningKey(gh.keys[0].kid, "ES256")),
                                       "does not fit its key"),
        "key of another issuer": (gh.sign(good, key=stranger), bad_sig),
        "tampered payload": (tampered(gh.sign(good), repository_id="777"), bad_sig),
        "oversized": (gh.sign({**good, "padding": "x" * 9000}), "larger than 8192 bytes"),
        "no exp": (gh.sign({k: v for k, v in good.items() if k != "exp"}),
                   "MissingRequiredClaimError"),
        "malformed": ("eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "malformed"),
    }


def test_tokens_that_do_not_verify_are_refused_with_401_and_nothing_published(tmp_path, issuers):
    gh, gl = issuers
    with server(tmp_path, issuers) as srv:
        assert put(srv, GH_PREFIX + "warm", gh.sign(github_claims(gh.url))).status_code == 200
        repo = srv.repositories[FQRN]
        before = snapshot(repo)
        for case, (token, reason) in refused_tokens(gh, gl).items():
            r = put(srv, GH_PREFIX + "x", token)
            assert r.status_code == 401, (case, r.status_code, r.text)
            detail = r.json()["detail"]
            assert reason in detail and "\n" not in detail, (case, detail)
            assert token.split(".")[1][:40] not in r.text, case  # the token is never echoed
            assert r.headers["www-authenticate"] == "Bearer"
        assert snapshot(repo) == before


def test_an_unknown_kid_refreshes_the_keys_once_per_interval(tmp_path, issuers):
    gh, _gl = issuers
    good = github_claims(gh.url)
    with server(tmp_path, issuers) as srv:
        assert put(srv, GH_PREFIX + "a", gh.sign(good)).status_code == 200
        fetched = gh.jwks_fetches
        for attempt in range(3):
            r = put(srv, GH_PREFIX + "b", gh.sign(good, key=SigningKey(f"made-up-{attempt}")))
            assert r.status_code == 401 and "key id is not published" in r.json()["detail"]
        assert gh.jwks_fetches == fetched + 1  # one refresh, then rate-limited (60 s)


def test_key_rotation_at_the_issuer_is_picked_up_without_a_restart(tmp_path, issuers):
    gh, _gl = issuers
    with server(tmp_path, issuers) as srv:
        assert put(srv, GH_PREFIX + "before", gh.sign(github_claims(gh.url))).status_code == 200
        old = gh.keys[0]
        new = gh.rotate("ES256")
        r = put(srv, GH_PREFIX + "after", gh.sign(github_claims(gh.url), key=new))
        assert r.status_code == 200, r.text
        # ES256 is accepted only from an EC P-256 key; the old RSA key is gone from the JWKS
        assert put(srv, GH_PREFIX + "old", gh.sign(github_claims(gh.url), key=old)).status_code == 401


def test_a_jwks_outage_serves_cached_keys_for_the_stale_window_then_refuses(tmp_path, issuers):
    gh, _gl = issuers
    token = gh.sign(github_claims(gh.url))
    with server(tmp_path, issuers, oidc_jwks_cache_s=0.3, oidc_jwks_stale_s=2.0,
                oidc_jwks_refresh_s=0.5) as srv:
        assert put(srv, GH_PREFIX + "a", token).status_code == 200
        fetched_at = time.monotonic()
        gh.down = True
        time.sleep(0.5)  # the cache is due for a refresh, which fails: the cached keys serve
        r = put(srv, GH_PREFIX + "b", token)
        assert r.status_code == 200, r.text
        assert gh.refused_while_down == 1
        time.sleep(max(0.0, fetched_at + 2.3 - time.monotonic()))
        repo = srv.repositories[FQRN]
        before = snapshot(repo)
        late = put(srv, GH_PREFIX + "c", token)  # past the stale window: refused
        assert late.status_code == 503 and "could not be fetched" in late.json()["detail"]
        assert gh.refused_while_down == 2
        assert snapshot(repo) == before
        gh.down = False
        time.sleep(0.6)  # the next attempt after a failure: the keys are back
        assert put(srv, GH_PREFIX + "c", token).status_code == 200


def test_a_hung_issuer_delays_only_identity_tokens_and_for_a_bounded_time(tmp_path, issuers):
    gh, _gl = issuers
    gh.stall_s = 5.0
    with server(tmp_path, issuers, oidc_http_timeout_s=3.0) as srv:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            waiting = pool.submit(put, srv, GH_PREFIX + "x", gh.sign(github_claims(gh.url)))
            time.sleep(0.2)
            plain = put(srv, "plain", TOKEN)  # served while the key fetch hangs
            assert plain.status_code == 200 and not waiting.done()
            r = waiting.result()
        assert r.status_code == 503 and 2.9 < time.monotonic() - started < 4.9


def test_static_tokens_keep_working_beside_identity_tokens(tmp_path, issuers):
    with server(tmp_path, issuers) as srv:
        assert put(srv, "plain", TOKEN).status_code == 200
        assert put(srv, "plain2", "wrong-token").status_code == 403


@pytest.mark.parametrize("misbehaviour", ["jwks over 1 MiB", "discovery names another issuer"])
def test_an_issuer_that_misbehaves_is_not_trusted(tmp_path, issuers, misbehaviour):
    gh, _gl = issuers
    if misbehaviour == "jwks over 1 MiB":
        gh.jwks_padding = 2 * 1024 * 1024
    else:
        gh.claimed_issuer = "https://token.actions.githubusercontent.com"
    with server(tmp_path, issuers) as srv:
        repo = srv.repositories[FQRN]
        before = snapshot(repo)
        r = put(srv, GH_PREFIX + "x", gh.sign(github_claims(gh.url)))
        assert r.status_code == 503 and "could not be fetched" in r.json()["detail"]
        assert snapshot(repo) == before
        # a static token is served meanwhile
        assert put(srv, "plain", TOKEN).status_code == 200


def test_identity_tokens_without_configured_issuers_are_refused(tmp_path, issuers):
    gh, _gl = issuers
    with live_server(settings(tmp_path)) as srv:
        r = put(srv, GH_PREFIX + "x", gh.sign(github_claims(gh.url)))
        assert r.status_code == 401 and "no issuer configured" in r.json()["detail"]


def test_trust_configuration_is_validated_at_start(tmp_path):
    base = {"issuer": "https://token.actions.githubusercontent.com", "audience": AUDIENCE}
    policy = {"claims": {"repository": "octo-org/app"}, "repository": FQRN}
    bad = {
        "http off loopback": {**base, "issuer": "http://gitlab.example.org", "policies": [policy]},
        "no policy": {**base, "policies": []},
        "match everything": {**base, "policies": [{**policy, "claims": {"repository": "*"}}]},
        "ambiguous prefix": {**base, "policies": [{**policy, "prefix": "gh-{repository_owner}-"}]},
        "open placeholder": {**base, "policies": [{**policy, "prefix": "gh+{repository_id}"}]},
        "role admin": {**base, "policies": [{**policy, "role": "admin"}]},
        "bad repository": {**base, "policies": [{**policy, "repository": "nodot"}]},
        "unknown key": {**base, "policies": [{**policy, "color": "red"}]},
    }
    for case, issuer in bad.items():
        with pytest.raises(PolicyError):
            load_config(json.dumps([issuer]))
            pytest.fail(case)
    yaml_file = tmp_path / "oidc.yaml"
    yaml_file.write_text(
        "issuers:\n"
        "  - issuer: https://gitlab.example.org\n"
        f"    audience: {AUDIENCE}\n"
        "    policies:\n"
        "      - claims: {project_path: group/app, ref_protected: true}\n"
        f"        repository: {FQRN}\n"
        "        prefix: 'gl/{project_path}/'\n")
    config = load_config(json.dumps([{**base, "policies": [policy]}]), yaml_file)
    assert [i.issuer for i in config.issuers] == [base["issuer"], "https://gitlab.example.org"]
    # '/' in a value stays a segment separator: a directory per project once names nest
    assert config.issuers[1].policies[0].render_prefix(
        {"project_path": "group/app"}) == "gl/group/app/"
