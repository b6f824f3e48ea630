"""Hierarchical artifact names over real loopback HTTP, read back through the test reader.

``team-a/app/pr-123`` is the artifact ``pr-123`` in the namespace ``team-a/app``: the artifact
keeps its own nested catalog mounted at ``/team-a/app/pr-123``; ``/team-a`` and
``/team-a/app`` are plain directories of the root catalog, there exactly while an artifact
lies below them. What the client and ``cvmfs_swissknife check`` require of those directories
(pinned here through the reader's ``check()``):

- the client finds a deep mountpoint by walking the root catalog's directories and looking
  each prefix up among the root's nested catalogs (``cvmfs/catalog.cc``,
  ``Catalog::FindSubtree``; ``cvmfs/catalog_mgr_impl.h``, ``FindCatalog``), so every
  namespace must be a directory entry of the root catalog and the mountpoint is registered
  in the root's ``nested_catalogs`` under its full path;
- check recurses through every directory, requires link count 2 + subdirectories
  (``cvmfs/swissknife_check.cc``: "wrong linkcount"), an empty mountpoint flagged 1 | 2 and
  registered ("nested catalog at %s not registered", "non-empty nested catalog mountpoint"),
  ``self_nested`` equal to the catalog's own nested catalogs ("number of nested catalogs does
  not match") and ``self_dir`` counting every directory row, namespaces included.
"""

from __future__ import annotations

import http.client
import io
import json
import tarfile
import urllib.parse

import httpx
import pytest

from runtime.repository import ArtifactExists, InvalidPath
from runtime.repository.names import (namespaces_of, parent_namespace, top_namespace,
                                      validate_artifact_name)
from tests.cvmfs_reader import RepoReader
from tests.live_server import live_server
from tests.uploadkit import FQRN, TOKEN, auth, make_tar, settings, snapshot

F_DIR, F_MOUNTPOINT = 1, 2


def repo_of(srv):  # type: ignore[no-untyped-def]
    return srv.repositories[FQRN]


def reader(srv) -> RepoReader:  # type: ignore[no-untyped-def]
    pub = (srv.settings.keys_dir / f"{FQRN}.pub").read_bytes()
    return RepoReader(f"{srv.url}/cvmfs/{FQRN}", FQRN, pub)


def put(client, name: str, body: bytes = b"x", **params):  # type: ignore[no-untyped-def]
    return client.put(f"/repos/{FQRN}/{name}", content=body, params=params)


def raw_request(srv, method: str, path: str, body: bytes = b"x") -> tuple[int, dict]:
    """Send ``path`` exactly as written (no client-side normalisation of ``..`` or ``//``)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=auth())
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data or b"{}")
    except ValueError:
        return resp.status, {"detail": data.decode(errors="replace")}


# --- the name itself -------------------------------------------------------------------------

def test_name_helpers_shared_with_retention():
    assert parent_namespace("team-a/app/pr-123") == "team-a/app"
    assert parent_namespace("foo") == ""
    assert top_namespace("team-a/app/pr-123") == "team-a"
    assert top_namespace("foo") == "foo"
    assert namespaces_of("a/b/c") == ["a", "a/b"] and namespaces_of("a") == []


@pytest.mark.parametrize("name, fragment", [
    ("a//b", "empty segment"), ("/a", "empty segment"), ("a/", "empty segment"),
    ("a/./b", "invalid artifact name segment '.'"), ("a/../b", "'..'"),
    ("a/b/c/d/e", "5 segments, at most 4"), ("a\\b", "backslashes"),
    ("a/.cvmfscatalog", "reserved"), ("a/b\x00", "control characters"),
])
def test_invalid_names_are_refused_not_normalised(name, fragment):
    with pytest.raises(InvalidPath, match=fragment.replace(".", r"\.")):
        validate_artifact_name(name)


# --- end to end through the reader -------------------------------------------------------------

def test_deep_artifacts_end_to_end_through_the_reader(srv, client):
    tar = make_tar([("d", "dir", None), ("d/f.txt", "file", b"deep file\n")])
    assert put(client, "team-a/app/pr-123", tar, unpack="true").status_code == 200
    r = put(client, "team-a/app/pr-124", b"one file")
    assert r.status_code == 200, r.text
    assert r.json()["path"] == f"/cvmfs/{FQRN}/team-a/app/pr-124"
    assert put(client, "team-a/lib/x", b"lib").status_code == 200
    assert put(client, "top", b"top-level").status_code == 200

    with reader(srv) as rd:
        rd.check()
        assert rd.read_file("/team-a/app/pr-123/d/f.txt") == b"deep file\n"
        assert rd.read_file("/team-a/app/pr-124") == b"one file"
        assert rd.listdir("") == ["team-a", "top"]
        assert rd.listdir("/team-a") == ["app", "lib"]
        assert rd.listdir("/team-a/app") == ["pr-123", "pr-124"]
        # the namespaces are plain directories of the root catalog
        for ns, subdirs in (("/team-a", 2), ("/team-a/app", 1), ("/team-a/lib", 0)):
            e = rd.entry(ns)
            assert (e.type, e.catalog, e.flags, e.nested_catalog) == ("dir", "", F_DIR, None)
            assert e.linkcount == 2 + subdirs  # pr-124 and x are files: not counted
        # the directory artifact is the leaf, mounted with its own nested catalog
        mount = rd.entry("/team-a/app/pr-123")
        assert mount.flags == F_DIR | F_MOUNTPOINT and mount.nested_catalog
        root = rd.root_catalog()
        assert [n.path for n in root.nested] == ["/team-a/app/pr-123"]
        nested = rd.catalog(mount.nested_catalog)
        assert nested.root_prefix == "/team-a/app/pr-123"
        assert rd.entry("/team-a/app/pr-123/d/f.txt").catalog == "/team-a/app/pr-123"
        # root counters: root + 3 namespaces + the mountpoint; 3 file artifacts; 1 nested
        assert root.statistics["self_dir"] == 5
        assert root.statistics["self_regular"] == 3
        assert root.statistics["self_nested"] == 1
        assert root.statistics["subtree_regular"] == 2  # f.txt and the .cvmfscatalog marker


def test_namespace_directories_go_with_their_last_artifact(srv, client):
    for name in ("team-a/app/one", "team-a/app/two", "team-a/lib/x"):
        assert put(client, name).status_code == 200
    assert client.delete(f"/repos/{FQRN}/team-a/lib/x").status_code == 200
    with reader(srv) as rd:
        rd.check()
        assert rd.listdir("/team-a") == ["app"]  # lib went with x; team-a is still used
        assert rd.entry("/team-a").linkcount == 3
    assert client.delete(f"/repos/{FQRN}/team-a/app/one").status_code == 200
    with reader(srv) as rd:
        rd.check()
        assert rd.listdir("/team-a/app") == ["two"]
    assert client.delete(f"/repos/{FQRN}/team-a/app/two").status_code == 200
    with reader(srv) as rd:
        rd.check()
        assert rd.listdir("") == []
        assert rd.root_catalog().statistics["self_dir"] == 1


def test_deep_directory_download_names_members_from_the_artifact(client):
    tar = make_tar([("a.txt", "file", b"alpha")])
    assert put(client, "ns/sub/build", tar, unpack="true").status_code == 200
    r = client.get(f"/repos/{FQRN}/ns/sub/build")
    assert r.status_code == 200
    assert "filename*=UTF-8''build.tar" in r.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
        assert tf.getnames() == ["build", "build/a.txt"]
    assert client.head(f"/repos/{FQRN}/ns/sub/build").status_code == 200
    r = client.get(f"/repos/{FQRN}/ns/sub")
    assert r.status_code == 404 and "is a namespace" in r.json()["detail"]


def test_ttl_route_and_multipart_take_deep_names(client):
    r = client.post(f"/repos/{FQRN}", params={"name": "team-a/mp/report"},
                    files={"file": ("ignored.txt", b"multipart")})
    assert r.status_code == 200 and r.json()["name"] == "team-a/mp/report"
    r = client.post(f"/repos/{FQRN}/team-a/mp/report/ttl", params={"ttl_s": 60})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "team-a/mp/report"
    # an artifact may itself be called ``ttl``: the route takes the name up to the last /ttl
    assert put(client, "team-a/ttl").status_code == 200
    assert client.post(f"/repos/{FQRN}/team-a/ttl/ttl", params={"ttl_s": 60}).status_code == 200
    assert client.get(f"/repos/{FQRN}/team-a/mp/report").content == b"multipart"


# --- a name is an artifact or a namespace, never both ---------------------------------------------

def test_artifact_and_namespace_conflicts_are_409_and_publish_nothing(srv, client):
    assert put(client, "a/b").status_code == 200
    assert put(client, "x/y/z").status_code == 200
    before = snapshot(repo_of(srv))
    for name, fragment in (("a/b/c", "'a/b' is an artifact"),
                           ("a/b/c/d", "'a/b' is an artifact"),
                           ("x/y", "'x/y' is a namespace"), ("x", "'x' is a namespace")):
        for params in ({}, {"overwrite": "true"}, {"unpack": "true"}):
            body = make_tar([("f", "file", b"f")]) if params.get("unpack") else b"x"
            r = put(client, name, body, **params)
            assert r.status_code == 409, (name, params, r.text)
            assert fragment in r.json()["detail"]
    assert snapshot(repo_of(srv)) == before


def staged_pair(repo, names: tuple[str, str], data: bytes) -> list:
    """Two open transactions, each staging one file artifact of ``names``."""
    txs = []
    for name in names:
        tx = repo.begin()
        tx.artifact(name)
        tx.add_file(name, data)
        txs.append(tx)
    return txs


def test_conflict_is_decided_at_commit_for_racing_uploads(srv):
    """Both uploads pass the request-time check; the group commit lets only the first in."""
    repo = repo_of(srv)
    for first, second in (("r/s", "r/s/t"), ("q/s/t", "q/s")):
        txs = staged_pair(repo, (first, second), b"raced")
        result = repo.publish(*txs)
        assert result.error_for(txs[0]) is None
        assert isinstance(result.error_for(txs[1]), ArtifactExists)
        names = {a.name for a in repo.artifacts()}
        assert first in names and second not in names
    # staged side by side, committed one after the other: the second finds the first's row
    for first, second in (("m/n", "m/n/o"), ("k/l/m", "k/l")):
        txs = staged_pair(repo, (first, second), b"staged together")
        txs[0].publish()
        with pytest.raises(ArtifactExists):
            txs[1].publish()
        assert second not in {a.name for a in repo.artifacts()}
    with reader(srv) as rd:
        rd.check()


# --- listing and deleting namespaces -------------------------------------------------------------

def test_prefix_listing_matches_whole_segments(client):
    for name in ("team-a/app/1", "team-a/app/2", "team-a/lib", "team-ab/x", "team-b"):
        assert put(client, name).status_code == 200
    for prefix in ("team-a/", "team-a"):
        body = client.get(f"/repos/{FQRN}", params={"prefix": prefix}).json()
        assert [f["name"] for f in body["files"]] == ["team-a/app/1", "team-a/app/2",
                                                      "team-a/lib"]
        assert body["namespaces"] == [{"name": "team-a/app", "artifacts": 2, "size": 2}]
    body = client.get(f"/repos/{FQRN}", params={"prefix": "team-a/app/"}).json()
    assert [f["name"] for f in body["files"]] == ["team-a/app/1", "team-a/app/2"]
    assert client.get(f"/repos/{FQRN}", params={"prefix": "team"}).json()["files"] == []
    full = client.get(f"/repos/{FQRN}").json()
    assert len(full["files"]) == 5
    assert [n["name"] for n in full["namespaces"]] == ["team-a", "team-ab"]
    for bad in ("../", "a//", "a/../b/"):
        r = client.get(f"/repos/{FQRN}", params={"prefix": bad})
        assert r.status_code == 422 and r.json()["detail"].startswith("invalid prefix")


def test_recursive_delete_removes_a_namespace_in_one_revision(srv, client):
    for name in ("team-a/app/1", "team-a/app/2", "team-a/lib/x", "team-b/keep"):
        assert put(client, name).status_code == 200
    repo = repo_of(srv)
    r = client.delete(f"/repos/{FQRN}/team-a")
    assert r.status_code == 409 and "recursive=true" in r.json()["detail"]
    revisions = len(repo.revisions())
    r = client.delete(f"/repos/{FQRN}/team-a", params={"recursive": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["removed"] == ["team-a/app/1", "team-a/app/2", "team-a/lib/x"]
    assert len(repo.revisions()) == revisions + 1
    assert r.json()["revision"] == repo.revision()
    assert [a.name for a in repo.artifacts()] == ["team-b/keep"]
    with reader(srv) as rd:
        rd.check()
        assert rd.listdir("") == ["team-b"]
    r = client.delete(f"/repos/{FQRN}/team-a", params={"recursive": "true"})
    assert r.status_code == 404
    # recursive on an artifact deletes just that artifact
    assert client.delete(f"/repos/{FQRN}/team-b/keep",
                         params={"recursive": "true"}).status_code == 200
    assert repo.artifacts() == []


# --- limits and escapes --------------------------------------------------------------------------

def test_depth_limit_follows_the_setting(tmp_path):
    with live_server(settings(tmp_path, max_name_depth=2)) as server, \
            httpx.Client(base_url=server.url, headers=auth(), timeout=30) as c:
        assert put(c, "a/b").status_code == 200
        r = put(c, "a/c/d")
        assert r.status_code == 400
        assert r.json()["detail"] == "invalid artifact name 'a/c/d': 3 segments, at most 2 allowed"


@pytest.mark.parametrize("path", [
    "a/../b", "a/%2e%2e/b", "%2e%2e/b", "a/./b", "a//b", "a/b/", "/a", "a%5Cb", "a\\b",
    "a%2F%2E%2E%2Fb",
])
def test_path_escapes_are_refused_everywhere(srv, path):
    repo = repo_of(srv)
    before = snapshot(repo)
    url = f"/repos/{FQRN}/{path}"
    status, body = raw_request(srv, "PUT", url)
    assert status == 400, (path, body)
    assert "invalid artifact name" in body["detail"]
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/ttl?ttl_s=60")):
        status, body = raw_request(srv, method, url + suffix, b"")
        assert status in (400, 404), (method, path, status, body)
    assert snapshot(repo) == before


def test_prefix_scoped_token_writes_only_under_its_prefix(tmp_path):
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(json.dumps({"label": "team-a-ci", "secret": "team-a-secret-0123456789",
                                  "role": "upload", "prefix": "team-a/"}) + "\n")
    with live_server(settings(tmp_path, tokens_file=tokens)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        scoped = auth("team-a-secret-0123456789")
        assert c.put(f"/repos/{FQRN}/team-a/x/y", content=b"ok",
                     headers=scoped).status_code == 200
        assert c.put(f"/repos/{FQRN}/team-b/z", content=b"x", headers=auth()).status_code == 200
        for name in ("team-b/x", "team-a", "team-ab/x"):
            r = c.put(f"/repos/{FQRN}/{name}", content=b"no", headers=scoped)
            assert r.status_code == 403, (name, r.text)
        # ``..`` cannot climb out of the prefix: refused before anything is written
        quoted = "team-a/%2E%2E/team-b/x"
        conn_status, body = _raw(server, "PUT", f"/repos/{FQRN}/{quoted}", "team-a-secret-0123456789")
        assert conn_status == 400 and "'..'" in body["detail"]
        r = c.delete(f"/repos/{FQRN}/team-b", params={"recursive": "true"}, headers=scoped)
        assert r.status_code == 403
        r = c.delete(f"/repos/{FQRN}/team-a", params={"recursive": "true"}, headers=scoped)
        assert r.status_code == 200 and r.json()["removed"] == ["team-a/x/y"]
        names = [f["name"] for f in c.get(f"/repos/{FQRN}").json()["files"]]
        assert names == ["team-b/z"]


def _raw(server, method: str, path: str, token: str = TOKEN) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=b"x", headers=auth(token))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_client_quotes_dot_segments_so_the_server_refuses_them():
    from runtime.client.upload import _quote

    assert _quote("team-a/app/pr 1") == "team-a/app/pr%201"
    assert _quote("a/../b") == "a/%2E%2E/b"
    assert urllib.parse.unquote(_quote("a/./b")) == "a/./b"


# --- expiry and gc ---------------------------------------------------------------------------

def test_expiry_and_gc_handle_deep_names(tmp_path):
    import time

    from runtime.maintenance.clean import clean
    from runtime.maintenance.gc import collect, default_grace_s
    from tests.served import object_files, served_repository

    with served_repository(tmp_path) as s:
        repo, t0 = s.repo, time.time()
        repo.clock = lambda: now[0]
        now = [t0]
        for name, expires in (("ci/main/old", t0 + 10), ("ci/main/new", t0 + 1000),
                              ("ci/pr/1", t0 + 10)):
            tx = repo.begin()
            tx.artifact(name)
            tx.add_file(f"{name}/f.txt", name.encode())
            tx.set_expiry(name, expires)
            tx.publish()
        now[0] = t0 + 100
        swept = clean(repo)
        assert swept.removed == ["ci/main/old", "ci/pr/1"]
        reader = s.reader()
        reader.check()
        assert reader.listdir("/ci") == ["main"]  # ci/pr went with its last artifact
        now[0] = t0 + 100 + default_grace_s(repo) + 1
        collect(repo, slack_s=0)
        reader = s.reader()
        assert object_files(repo) == reader.referenced_objects()
        assert reader.read_file("/ci/main/new/f.txt") == b"ci/main/new"
        reader.check()


def test_a_trust_policy_prefix_cannot_name_a_dot_segment():
    from pydantic import ValidationError

    from runtime.auth.policy import Policy

    ok = Policy(claims={"repository": "octo/app"}, repository=FQRN, prefix="gh/{repository}/")
    assert ok.render_prefix({"repository": "octo/app"}) == "gh/octo/app/"
    with pytest.raises(ValueError):
        ok.render_prefix({"repository": "octo/../../x"})  # a claim value cannot climb out
    for bad in ("gh/../x/", "gh/./x/", "gh//x/"):
        with pytest.raises(ValidationError, match="segments"):
            Policy(claims={"repository": "octo/app"}, repository=FQRN, prefix=bad)


# --- the command line ------------------------------------------------------------------------

def test_cli_uploads_lists_and_deletes_deep_names(srv, tmp_path):
    import os

    from typer.testing import CliRunner

    from runtime.__main__ import app

    env = {k: None for k in os.environ if k.startswith("CVMFS_EPHEMERAL_")}
    env["CVMFS_EPHEMERAL_TOKEN"] = TOKEN

    def cli(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(app, list(args), env=env)

    f = tmp_path / "report.txt"
    f.write_text("report\n")
    common = ("--url", srv.url, "--repo", FQRN)
    for name in ("team-a/app/pr-1", "team-a/app/pr-2", "team-b/x"):
        res = cli("upload", str(f), *common, "--name", name)
        assert res.exit_code == 0 and f"/cvmfs/{FQRN}/{name}" in res.stdout, res.output
    res = cli("upload", str(f), *common, "--name", "team-a/../team-b/y")
    assert res.exit_code == 1 and "invalid artifact name" in res.stderr
    res = cli("list", *common, "--prefix", "team-a/")
    assert res.exit_code == 0, res.output
    assert [line.split()[0] for line in res.stdout.splitlines()] == ["team-a/app/pr-1",
                                                                    "team-a/app/pr-2"]
    res = cli("delete", "team-a", *common)
    assert res.exit_code == 1 and "pass --recursive" in res.stderr
    res = cli("delete", "team-a", *common, "--recursive")
    assert res.exit_code == 0 and "deleted 2 artifact(s) under team-a" in res.stdout, res.output
    res = cli("delete", "team-b/x", *common)
    assert res.exit_code == 0 and "deleted team-b/x" in res.stdout
    assert json.loads(cli("list", *common, "--json").stdout)["files"] == []


def test_local_publish_takes_a_deep_name(tmp_path):
    import os

    from typer.testing import CliRunner

    from runtime.__main__ import app

    env = {k: None for k in os.environ if k.startswith("CVMFS_EPHEMERAL_")}
    env.update(CVMFS_EPHEMERAL_DATA_DIR=str(tmp_path / "d"),
               CVMFS_EPHEMERAL_KEYS_DIR=str(tmp_path / "k"))
    runner = CliRunner()
    assert runner.invoke(app, ["init", "local.example.org"], env=env).exit_code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    res = runner.invoke(app, ["publish", "local.example.org", str(src), "--name", "a/b/c"],
                        env=env)
    assert res.exit_code == 0 and "published a/b/c" in res.stdout, res.output
    res = runner.invoke(app, ["publish", "local.example.org", str(src), "--name", "a/b"],
                        env=env)
    assert res.exit_code == 2 and "'a/b' is a namespace" in res.stderr, res.output
    from runtime.repository import Repository
    from runtime.settings import RepositoryConfig

    repo = Repository(tmp_path / "d", tmp_path / "k", RepositoryConfig(fqrn="local.example.org"))
    assert [a.name for a in repo.artifacts()] == ["a/b/c"]
    assert "/a/b/c/f" in repo.artifact_tree("a/b/c")
    repo.close()
