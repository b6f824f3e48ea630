"""Static tokens: labels, roles, repository and prefix scopes, hashed tokens files, and the
``token new`` command that makes them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from runtime.auth.tokens import TokenConfigError, digest, load_tokens
from runtime.settings import Settings
from tests.live_server import live_server
from tests.uploadkit import FQRN, OTHER, auth, settings, snapshot

UPLOADER = "upload-secret-0123456789abcdef"
TEAM_A = "team-a-secret-0123456789abcdef"
ADMIN = "admin-secret-0123456789abcdefgh"
REPO_ADMIN = "repo-admin-secret-0123456789abc"
PLAIN = "plain-secret-0123456789abcdefgh"
LEGACY = "legacy-secret-0123456789abcdef"


def entry(label: str, secret: str, **scope: str) -> str:
    return json.dumps({"label": label, "sha256": digest(secret), **scope})


def tokens_file(tmp: Path) -> Path:
    path = tmp / "tokens"
    path.write_text("\n".join([
        "# labelled, hashed entries",
        entry("ci-upload", UPLOADER, role="upload", repository=FQRN),
        entry("team-a", TEAM_A, role="upload", repository=FQRN, prefix="team-a-"),
        entry("ops", ADMIN, role="admin"),
        entry("ops-other", REPO_ADMIN, role="admin", repository=OTHER),
        json.dumps({"label": "old-plain", "secret": PLAIN, "role": "upload"}),
        f"{LEGACY} {OTHER}   # a legacy line",
    ]) + "\n")
    return path


def put(srv, name: str, token: str, repo: str = FQRN) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.put(f"{srv.url}/repos/{repo}/{name}", content=b"x", headers=auth(token), timeout=30)


def post(srv, path: str, token: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{srv.url}{path}", headers=auth(token), timeout=60)


def test_the_file_stores_hashes_and_reads_every_format(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        tokens = load_tokens(Settings(tokens_file=tokens_file(tmp_path)))
    by_label = {t.label: t for t in tokens}
    assert by_label["team-a"].secret == "" and by_label["team-a"].sha256 == digest(TEAM_A)
    assert (by_label["team-a"].role, by_label["team-a"].repository, by_label["team-a"].prefix) \
        == ("upload", FQRN, "team-a-")
    assert by_label["old-plain"].role == "upload"
    legacy = next(t for t in tokens if t.label.startswith("file-"))
    assert (legacy.role, legacy.repository) == ("admin", OTHER)  # the old meaning
    assert "plain-text secrets for old-plain" in caplog.text
    assert "1 legacy 'token [repository]' line" in caplog.text
    for secret in (PLAIN, LEGACY):
        assert secret not in caplog.text


@pytest.mark.parametrize("line, message", [
    ('{"label": "x", "sha256": "abc"}', "'sha256' must be 64 hex digits"),
    ('{"label": "x"}', "exactly one of 'sha256' and 'secret'"),
    ('{"label": "x", "secret": "short"}', "at least 16 characters"),
    ('{"label": "bad label", "secret": "0123456789abcdefg"}', "'label' must be"),
    ('{"label": "x", "role": "root", "secret": "0123456789abcdefg"}', "'role' must be"),
    ('{"label": "x", "role": "admin", "prefix": "a-", "secret": "0123456789abcdefg"}',
     "admin token cannot have a prefix"),
    ('{"label": "x", "prefix": "../", "secret": "0123456789abcdefg"}', "invalid prefix"),
    ('{"label": "x", "repository": "nodot", "secret": "0123456789abcdefg"}', "invalid repository"),
    ('{"label": "x", "scope": "all", "secret": "0123456789abcdefg"}', "unknown key 'scope'"),
    ('{"label": "x", ', "not valid JSON"),
    ("a b c", "expected 'token [repository]'"),
])
def test_a_bad_line_stops_the_service_naming_the_line(tmp_path, line, message):
    path = tmp_path / "tokens"
    path.write_text(f"# comment\n{line}\n")
    with pytest.raises(TokenConfigError) as info:
        load_tokens(Settings(tokens_file=path))
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)
    assert "0123456789abcdefg" not in str(info.value)


def test_one_secret_configured_twice_is_refused(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(entry("a", UPLOADER) + "\n" + entry("b", UPLOADER) + "\n")
    with pytest.raises(TokenConfigError, match="'a' and 'b' have the same secret"):
        load_tokens(Settings(tokens_file=path))


def test_roles_and_scopes_on_the_live_service(tmp_path, caplog):
    with live_server(settings(tmp_path, tokens="", tokens_file=tokens_file(tmp_path))) as srv, \
            caplog.at_level(logging.INFO, logger="runtime.auth"):
        repo = srv.repositories[FQRN]
        assert put(srv, "build", UPLOADER).status_code == 200
        assert put(srv, "team-a-build", TEAM_A).status_code == 200
        grant = caplog.records[-1].getMessage()
        assert grant == (f"PUT /repos/{FQRN}/team-a-build authorised: " + json.dumps(
            {"kind": "token", "label": "team-a", "prefix": "team-a-", "repository_scope": FQRN,
             "role": "upload"}, sort_keys=True))
        assert put(srv, "plain-entry", PLAIN).status_code == 200
        before = snapshot(repo)
        # the prefix scope: names outside it, and deleting or re-timing others' artifacts
        r = put(srv, "build2", TEAM_A)
        assert r.status_code == 403 and r.json()["detail"] == \
            "artifact name must start with 'team-a-' for 'team-a'"
        assert put(srv, "team-ab", TEAM_A).status_code == 403
        # the multipart route names the artifact inside the body: checked once it is read
        multipart = httpx.post(f"{srv.url}/repos/{FQRN}", headers=auth(TEAM_A), timeout=30,
                               files={"file": ("build3", b"x" * 100_000)})
        assert multipart.status_code == 403 and "team-a-" in multipart.json()["detail"]
        assert httpx.delete(f"{srv.url}/repos/{FQRN}/build", headers=auth(TEAM_A)).status_code == 403
        assert httpx.post(f"{srv.url}/repos/{FQRN}/build/ttl", params={"ttl_s": 60},
                          headers=auth(TEAM_A)).status_code == 403
        # the repository scope
        assert put(srv, "x", UPLOADER, repo=OTHER).status_code == 403
        assert put(srv, "team-a-x", TEAM_A, repo=OTHER).status_code == 403
        # upload tokens never reach maintenance routes
        for token in (UPLOADER, TEAM_A, PLAIN):
            for path in (f"/repos/{FQRN}/gc", f"/repos/{FQRN}/resign", "/clean", "/housekeeping"):
                r = post(srv, path, token)
                assert r.status_code == 403 and "needs an admin token" in r.json()["detail"], path
        # a repository-scoped admin runs that repository's jobs, not the global ones nor others'
        assert post(srv, f"/repos/{OTHER}/clean", REPO_ADMIN).status_code == 200
        assert post(srv, f"/repos/{FQRN}/clean", REPO_ADMIN).status_code == 403
        assert post(srv, "/clean", REPO_ADMIN).status_code == 403
        assert snapshot(repo) == before
        assert httpx.post(f"{srv.url}/repos/{FQRN}", headers=auth(TEAM_A), timeout=30,
                          files={"file": ("team-a-mp", b"x")}).status_code == 200
        # the unscoped admin does everything; legacy lines keep their old meaning
        assert post(srv, "/clean", ADMIN).status_code == 200
        assert put(srv, "by-admin", ADMIN).status_code == 200
        assert put(srv, "legacy", LEGACY, repo=OTHER).status_code == 200
        assert post(srv, f"/repos/{OTHER}/clean", LEGACY).status_code == 200
        for name in ("team-a-build", "team-a-mp"):
            assert httpx.delete(f"{srv.url}/repos/{FQRN}/{name}",
                                headers=auth(TEAM_A)).status_code == 200
        assert put(srv, "y", "cvmfse_not-a-configured-secret").status_code == 403


def test_token_new_prints_a_secret_and_the_line_that_grants_it(tmp_path):
    cmd = [sys.executable, "-m", "runtime", "token", "new", "--label", "team-b",
           "--role", "upload", "--repo", FQRN, "--prefix", "team-b-"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    secret, line = out.stdout.splitlines()
    assert secret.startswith("cvmfse_") and len(secret) > 40
    assert secret not in line and json.loads(line) == {
        "label": "team-b", "role": "upload", "repository": FQRN, "prefix": "team-b-",
        "sha256": digest(secret)}
    path = tmp_path / "tokens"
    path.write_text(line + "\n")
    with live_server(settings(tmp_path, tokens="", tokens_file=path)) as srv:
        assert put(srv, "team-b-1", secret).status_code == 200
        assert put(srv, "other", secret).status_code == 403
    hashed = subprocess.run([sys.executable, "-m", "runtime", "token", "hash"], input=secret + "\n",
                            capture_output=True, text=True, timeout=60, check=True)
    assert hashed.stdout.strip() == digest(secret)
    bad = subprocess.run([*cmd[:6], "x", "--role", "admin", "--prefix", "p-"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "admin token cannot have a prefix" in bad.stderr
