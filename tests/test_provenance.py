"""Provenance: every artifact records who uploaded it and what the uploader said about it, in
state.db (never in the published tree), shown in the listing and the upload response."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from runtime.__main__ import app
from runtime.client.upload import ci_metadata
from runtime.repository import Repository
from tests.live_server import LiveServer, live_server
from tests.uploadkit import FQRN, auth, settings, snapshot

SECRET = "prov-secret-9f1c2e7d"
LABEL = "ci-uploader"


def server(tmp_path: Path, **over) -> LiveServer:  # type: ignore[no-untyped-def]
    tmp_path.mkdir(parents=True, exist_ok=True)
    tokens = tmp_path / "tokens"
    tokens.write_text(json.dumps({"label": LABEL, "secret": SECRET, "role": "upload",
                                  "repository": FQRN, "prefix": "b-"}) + "\n")
    return live_server(settings(tmp_path, tokens="", tokens_file=tokens, **over))


def put(srv: LiveServer, name: str, body: bytes = b"payload", headers: dict | None = None,
        **params: str) -> httpx.Response:
    return httpx.put(f"{srv.url}/repos/{FQRN}/{name}", content=body,
                     headers={**auth(SECRET), **(headers or {})}, params=params, timeout=30)


def listed(srv: LiveServer, name: str) -> dict:
    files = httpx.get(f"{srv.url}/repos/{FQRN}", timeout=30).json()["files"]
    return next(f for f in files if f["name"] == name)


def state_bytes(repo: Repository) -> bytes:
    """state.db and its WAL: everything SQLite has written."""
    return b"".join(p.read_bytes() for p in repo.state_path.parent.glob("state.db*"))


def test_a_static_token_upload_records_its_label_and_never_the_secret(tmp_path):
    with server(tmp_path) as srv:
        r = put(srv, "b-1", headers={"X-Artifact-Meta-Commit-SHA": "0123abcd",
                                     "X-Artifact-Meta-Pipeline-URL": "https://ci.example/p/7",
                                     "x-artifact-meta-ref": "refs/heads/main"})
        assert r.status_code == 200, r.text
        expected = {"uploaded_by": {"kind": "token", "label": LABEL, "role": "upload",
                                    "repository_scope": FQRN, "prefix": "b-"},
                    "meta": {"commit-sha": "0123abcd", "pipeline-url": "https://ci.example/p/7",
                             "ref": "refs/heads/main"}}
        assert r.json()["provenance"] == expected
        assert listed(srv, "b-1")["provenance"] == expected
        repo = srv.repositories[FQRN]
        assert repo.artifact("b-1").provenance == expected
        db = state_bytes(repo)
        assert LABEL.encode() in db and b"0123abcd" in db
        assert SECRET.encode() not in db
        # nothing of it in the published tree: the served files never hold the label
        published = b"".join(p.read_bytes() for p in (srv.settings.data_dir).rglob("*")
                             if p.is_file() and "private" not in p.parts)
        assert LABEL.encode() not in published


def test_metadata_values_round_trip_as_utf8(tmp_path):
    with server(tmp_path) as srv:
        r = put(srv, "b-u", headers={"X-Artifact-Meta-Author": "Zoë Ångström".encode()})
        assert r.status_code == 200, r.text
        assert listed(srv, "b-u")["provenance"]["meta"] == {"author": "Zoë Ångström"}


@pytest.mark.parametrize("headers, reason", [
    ({f"X-Artifact-Meta-K{i}": "v" for i in range(17)}, "more than 16"),
    ({"X-Artifact-Meta-" + "k" * 65: "v"}, "1 to 64"),
    ({"X-Artifact-Meta-a_b": "v"}, "1 to 64"),
    ({"X-Artifact-Meta-Long": "v" * 513}, "longer than 512"),
    ({f"X-Artifact-Meta-K{i}": "v" * 500 for i in range(9)}, "4096 bytes in all"),
    ({"X-Artifact-Meta-Bad": b"\xff\xfe"}, "not UTF-8"),
    ({"X-Artifact-Meta-Ctl": b"a\tb"}, "control"),
    ({"X-Artifact-Meta-Bidi": "abc\u202edef".encode()}, "control"),
], ids=["17-keys", "long-key", "bad-key", "long-value", "total", "not-utf8", "tab", "bidi"])
def test_metadata_out_of_bounds_is_400_and_publishes_nothing(tmp_path, headers, reason):
    with server(tmp_path) as srv:
        assert put(srv, "b-0").status_code == 200
        repo = srv.repositories[FQRN]
        before = snapshot(repo)
        r = put(srv, "b-bad", body=b"x" * 200_000, headers=headers)
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert reason in detail and "\n" not in detail
        assert snapshot(repo) == before


def test_limits_themselves_are_accepted(tmp_path):
    with server(tmp_path) as srv:
        headers = {f"X-Artifact-Meta-K{i:02d}": "v" * 200 for i in range(16)}
        r = put(srv, "b-max", headers=headers)
        assert r.status_code == 200, r.text
        assert len(r.json()["provenance"]["meta"]) == 16


def test_overwrite_replaces_provenance_and_a_ttl_change_keeps_it(tmp_path):
    with server(tmp_path) as srv:
        assert put(srv, "b-o", headers={"X-Artifact-Meta-Commit-Sha": "aaa"}).status_code == 200
        # same content again: only the record of who uploaded it (and the expiry) changes
        again = put(srv, "b-o", headers={"X-Artifact-Meta-Commit-Sha": "bbb"}, overwrite="true")
        assert again.status_code == 200 and again.json()["refreshed"]
        assert listed(srv, "b-o")["provenance"]["meta"] == {"commit-sha": "bbb"}
        new = put(srv, "b-o", body=b"other", headers={"X-Artifact-Meta-Ref": "r"},
                  overwrite="true")
        assert new.status_code == 200 and not new.json()["refreshed"]
        assert listed(srv, "b-o")["provenance"]["meta"] == {"ref": "r"}
        ttl = httpx.post(f"{srv.url}/repos/{FQRN}/b-o/ttl", params={"ttl_s": 60},
                         headers=auth(SECRET), timeout=30)
        assert ttl.status_code == 200, ttl.text
        assert listed(srv, "b-o")["provenance"]["meta"] == {"ref": "r"}
        assert listed(srv, "b-o")["provenance"]["uploaded_by"]["label"] == LABEL


def test_a_library_overwrite_without_provenance_drops_the_old_record(tmp_path):
    with server(tmp_path) as srv:
        assert put(srv, "b-l").status_code == 200
        repo = srv.repositories[FQRN]
        with repo.begin() as tx:
            tx.add_file("b-l", b"replaced by a local tool")
            tx.publish()
        assert repo.artifact("b-l").provenance is None
        assert listed(srv, "b-l")["provenance"] is None


OLD_ARTIFACTS_TABLE = """
CREATE TABLE artifacts (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    entry TEXT NOT NULL,
    catalog_hash TEXT,
    catalog_size INTEGER,
    counters TEXT,
    content_digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    files INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revision INTEGER NOT NULL
);
"""


def test_a_state_db_of_the_old_schema_is_migrated_forward(tmp_path):
    """An artifact published before provenance existed lists with ``provenance: null`` and
    the next upload records its own."""
    # publish once, then turn state.db back into the old schema with the same rows
    with server(tmp_path) as srv:
        assert put(srv, "b-old").status_code == 200
        state_path = srv.repositories[FQRN].state_path
    conn = sqlite3.connect(state_path)
    rows = conn.execute("SELECT name, kind, entry, catalog_hash, catalog_size, counters,"
                        " content_digest, size, files, created_at, expires_at, revision"
                        " FROM artifacts").fetchall()
    conn.execute("DROP TABLE artifacts")
    conn.executescript(OLD_ARTIFACTS_TABLE)
    conn.executemany("INSERT INTO artifacts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert "provenance" not in [c[1] for c in sqlite3.connect(state_path).execute(
        "PRAGMA table_info(artifacts)")]
    with server(tmp_path) as srv:
        assert listed(srv, "b-old")["provenance"] is None
        r = put(srv, "b-new", headers={"X-Artifact-Meta-Ref": "main"})
        assert r.status_code == 200, r.text
        assert listed(srv, "b-new")["provenance"]["meta"] == {"ref": "main"}
        assert listed(srv, "b-old")["provenance"] is None
    columns = [c[1] for c in sqlite3.connect(state_path).execute("PRAGMA table_info(artifacts)")]
    from runtime.repository.state import ADDED_COLUMNS  # every added column, in order
    assert columns[-len(ADDED_COLUMNS):] == list(ADDED_COLUMNS)
    assert columns[-len(ADDED_COLUMNS)] == "provenance"


def run_cli(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["upload", *args],
                              env={"CVMFS_EPHEMERAL_TOKEN": SECRET, **(env or {})})


GITHUB_ENV = {"GITHUB_ACTIONS": "true", "GITHUB_SHA": "d6f2f5a4c1b0", "GITHUB_REF":
              "refs/heads/main", "GITHUB_SERVER_URL": "https://github.com",
              "GITHUB_REPOSITORY": "octo-org/app", "GITHUB_RUN_ID": "9876543210"}
GITLAB_ENV = {"GITLAB_CI": "true", "CI_COMMIT_SHA": "77aa", "CI_COMMIT_REF_NAME": "main",
              "CI_PIPELINE_URL": "https://gitlab.example/group/app/-/pipelines/5"}
NO_CI = {k: "" for k in list(GITHUB_ENV) + list(GITLAB_ENV)}


def test_ci_metadata_from_the_runner_environment():
    assert ci_metadata(GITHUB_ENV) == {
        "commit-sha": "d6f2f5a4c1b0", "ref": "refs/heads/main",
        "pipeline-url": "https://github.com/octo-org/app/actions/runs/9876543210"}
    assert ci_metadata(GITLAB_ENV) == {
        "commit-sha": "77aa", "ref": "main",
        "pipeline-url": "https://gitlab.example/group/app/-/pipelines/5"}
    assert ci_metadata({"HOME": "/root"}) == {}


def test_the_client_sends_meta_options_and_ci_defaults(tmp_path):
    f = tmp_path / "b-cli"
    f.write_bytes(b"built\n")
    with server(tmp_path / "srv") as srv:
        res = run_cli(str(f), "--url", srv.url, "--repo", FQRN, "--json",
                      "--meta", "Build-ID=42", "--meta", "ref=override", env=GITHUB_ENV)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["provenance"]["meta"] == {
            "commit-sha": "d6f2f5a4c1b0", "ref": "override", "build-id": "42",
            "pipeline-url": "https://github.com/octo-org/app/actions/runs/9876543210"}
        res = run_cli(str(f), "--url", srv.url, "--repo", FQRN, "--name", "b-gl",
                      env={**NO_CI, **GITLAB_ENV})
        assert res.exit_code == 0, res.output
        assert listed(srv, "b-gl")["provenance"]["meta"]["pipeline-url"].endswith("/pipelines/5")
        res = run_cli(str(f), "--url", srv.url, "--repo", FQRN, "--name", "b-none",
                      "--no-ci-meta", env=GITHUB_ENV)
        assert res.exit_code == 0, res.output
        assert listed(srv, "b-none")["provenance"]["meta"] == {}
        bad = run_cli(str(f), "--url", srv.url, "--repo", FQRN, "--meta", "no-equals-sign")
        assert bad.exit_code == 2 and "KEY=VALUE" in bad.stderr


def test_an_oidc_upload_records_issuer_subject_and_the_run_claims(tmp_path):
    from tests.oidc_issuer import AUDIENCE, github_claims, running_issuer

    with running_issuer() as gh:
        oidc = json.dumps({"issuers": [{
            "issuer": gh.url, "audience": AUDIENCE, "name": "github",
            "web_url": "https://github.example", "policies": [{
                "name": "app", "claims": {"repository": "octo-org/app"},
                "repository": FQRN, "prefix": "gh+{repository_id}+"}]}]})
        token = gh.sign(github_claims(gh.url))
        with server(tmp_path, oidc=oidc) as srv:
            r = httpx.put(f"{srv.url}/repos/{FQRN}/gh+123456+b", content=b"x", timeout=30,
                          headers={**auth(token), "X-Artifact-Meta-Ref": "refs/heads/main"})
            assert r.status_code == 200, r.text
            by = listed(srv, "gh+123456+b")["provenance"]["uploaded_by"]
            assert by["kind"] == "oidc" and by["issuer"] == gh.url and by["policy"] == "app"
            assert by["subject"] == "repo:octo-org/app:ref:refs/heads/main"
            assert by["claims"]["repository"] == "octo-org/app"
            assert by["claims"]["sha"] == "d6f2f5a4c1b0e9e8d7c6b5a4f3e2d1c0b9a8f7e6"
            assert r.json()["provenance"]["uploaded_by"] == by
            db = state_bytes(srv.repositories[FQRN])
            assert token.encode() not in db and token.split(".")[2].encode() not in db
