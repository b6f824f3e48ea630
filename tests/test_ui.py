"""The browser at /ui/ over loopback: what a person sees of the repositories and artifacts.

A real server, real uploads; the pages are read without a token (reads are public) and parsed
back table by table.
"""

from __future__ import annotations

import html
import re
import time

import httpx
import pytest

from runtime.server import ui
from tests.live_server import live_server
from tests.uikit import HOSTILE, HOSTILE_MEMBER, publish_examples, rows_by_name, tables
from tests.uploadkit import FQRN, OTHER, auth, make_tar, settings

CSP = "default-src 'self'"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with live_server(settings(tmp_path_factory.mktemp("ui"))) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            publish_examples(client)
            yield srv, client


@pytest.fixture
def client(served):
    return served[1]


def page(client: httpx.Client, path: str, status: int = 200) -> str:
    r = client.get(path)
    assert r.status_code == status, (path, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CSP
    return r.text


def test_index_lists_each_repository_with_revision_and_whitelist_expiry(served, client):
    srv, _ = served
    rows = rows_by_name(page(client, "/ui/"), "Repositories")
    assert set(rows) == {FQRN, OTHER}
    repo = srv.repositories[FQRN]
    name, revision, artifacts, _published, whitelist = rows[FQRN]
    assert (revision, artifacts) == (str(repo.revision()), "3")
    expires = repo.whitelist().expires.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert whitelist.startswith("in ") and expires in whitelist


def test_repository_page_lists_artifacts_with_size_files_and_expiry(served, client):
    srv, _ = served
    text = page(client, f"/ui/repos/{FQRN}/")
    rows = rows_by_name(text, f"Artifacts in {FQRN}")
    assert set(rows) == {"hello.txt", "build-42", HOSTILE}
    arts = {a.name: a for a in srv.repositories[FQRN].artifacts()}
    name, kind, size, files, created, expires, revision, provenance = rows["build-42"]
    assert (kind, files, revision) == ("dir", "3", str(arts["build-42"].revision))  # regular files
    assert size == ui.human_size(arts["build-42"].size)
    absolute = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(arts["build-42"].expires_at))
    assert re.match(r"in 6 d 23 h|in 7 d", expires) and absolute in expires
    assert provenance == "env-1 (token)"  # the uploading token's label, never its secret
    assert rows["hello.txt"][1:4] == ["file", "6 B", "1"]
    assert rows["hello.txt"][5].startswith(("in 59 min", "in 1 h"))
    assert "just now" in created or "ago" in created
    # the repository's own facts and its recent publishes
    assert f"<dd>{srv.repositories[FQRN].revision()}</dd>" in text
    publishes = rows_by_name(text, "The latest")
    assert str(srv.repositories[FQRN].revision()) in publishes


def test_artifact_page_shows_files_download_mount_path_and_client_config(served, client):
    srv, _ = served
    text = page(client, f"/ui/repos/{FQRN}/artifacts/build-42")
    files = rows_by_name(text, "Entries of build-42")
    assert set(files) == {".", "bin/", "bin/app", "README.md", "latest → bin/app",
                          HOSTILE_MEMBER}
    assert files["bin/app"][1:3] == ["file", "4.9 KiB"]
    assert files["latest → bin/app"][1] == "symlink"
    assert 'value="/cvmfs/ci.example.org/build-42"' in text
    conf = html.unescape(re.search(r"<textarea id=\"client-config\"[^>]*>(.*?)</textarea>",
                                   text, re.S).group(1))
    assert conf.splitlines() == [f"CVMFS_SERVER_URL={srv.url}/cvmfs/@fqrn@",
                                 f"CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/{FQRN}.pub",
                                 "CVMFS_HTTP_PROXY=DIRECT",
                                 f"CVMFS_NOTIFICATION_SERVER={srv.url}/api/v1"]
    key_url = f"{srv.url}/cvmfs-meta/{FQRN}.pub"
    assert f'href="{key_url}"' in text
    assert client.get(key_url).text.startswith("-----BEGIN PUBLIC KEY-----")
    # the download link is the existing route and gives the tree back as tar
    href = re.search(r'<a class="button" href="([^"]+)"', text).group(1)
    assert href == f"/repos/{FQRN}/build-42"
    download = client.get(href)
    assert download.status_code == 200 and download.headers["content-type"] == "application/x-tar"


def test_file_artifact_page_links_its_bytes(client):
    text = page(client, f"/ui/repos/{FQRN}/artifacts/hello.txt")
    href = re.search(r'<a class="button" href="([^"]+)"', text).group(1)
    assert client.get(href).content == b"hello\n"
    assert rows_by_name(text, "Entries of hello.txt")["."][1:3] == ["file", "6 B"]


def test_names_a_stranger_chose_are_text_never_markup(client):
    listing = page(client, f"/ui/repos/{FQRN}/")
    art = page(client, f"/ui/repos/{FQRN}/artifacts/{HOSTILE}")
    tree = page(client, f"/ui/repos/{FQRN}/artifacts/build-42")
    for text in (listing, art, tree):
        assert "<svg" not in text and "<img" not in text and "<script" not in text
    # ... but shown as the same characters, once parsed back
    assert HOSTILE in rows_by_name(listing, "Artifacts in")
    assert "&lt;svg onload=alert(1)&gt;" in art and "<h1 class=\"name\">&lt;svg" in art
    assert HOSTILE_MEMBER in rows_by_name(tree, "Entries of build-42")
    # the link to the hostile artifact is percent-encoded and leads to its page
    href = re.search(r'<a href="(/ui/repos/[^"]+/artifacts/%3Csvg[^"]*)"', listing).group(1)
    assert rows_by_name(page(client, html.unescape(href)), "Entries of")["."][1] == "file"


def test_pages_are_accessible_markup_that_fits_a_phone(client):
    for path in ("/ui/", f"/ui/repos/{FQRN}/", f"/ui/repos/{FQRN}/artifacts/build-42"):
        text = page(client, path)
        assert '<html lang="en">' in text
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
        assert all(t["caption"].strip() for t in tables(text))
        assert '<th scope="col"' in text and '<th scope="row"' in text
        assert "<script" not in text and "http://" not in text.split("</head>")[0]
    text = page(client, f"/ui/repos/{FQRN}/artifacts/build-42")
    for field in ("mount-path", "client-config", "key-fetch"):
        assert f'<label for="{field}">' in text and f'id="{field}"' in text
    css = client.get("/ui/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.headers["content-security-policy"] == CSP and "@media (max-width" in css.text


def test_unknown_repository_artifact_or_page_is_a_404_page(client):
    for path in ("/ui/repos/nope.example.org/", f"/ui/repos/{FQRN}/artifacts/missing",
                 f"/ui/repos/{FQRN}/artifacts/..", "/ui/elsewhere"):
        text = page(client, path, status=404)
        assert "<h1>Not found</h1>" in text
    assert client.get("/ui").headers["location"] == "/ui/"


def test_the_browser_has_no_write_action(client):
    for path in ("/ui/", f"/ui/repos/{FQRN}/", f"/ui/repos/{FQRN}/artifacts/build-42"):
        assert "<form" not in page(client, path)
        assert client.post(path, headers=auth()).status_code == 405
        assert client.delete(path, headers=auth()).status_code == 405


def test_a_large_tree_is_listed_up_to_the_bound_with_a_note(tmp_path):
    many = [(f"f{i:05d}", "file", b"") for i in range(ui.MAX_FILES + 5)]
    with live_server(settings(tmp_path)) as srv, httpx.Client(base_url=srv.url) as client:
        r = client.put(f"/repos/{FQRN}/big", content=make_tar(many), headers=auth(),
                       params={"unpack": "true"})
        assert r.status_code == 200, r.text
        text = page(client, f"/ui/repos/{FQRN}/artifacts/big")
    rows = rows_by_name(text, "Entries of big")
    assert len(rows) == ui.MAX_FILES
    assert f"Only the first {ui.MAX_FILES} of {ui.MAX_FILES + 6} entries are listed" in text


def test_relative_times_name_two_units():
    assert ui.relative(1000 + 2 * 3600 + 5 * 60 + 7, 1000) == "in 2 h 5 min"
    assert ui.relative(1000 - 3 * 86400 - 60, 1000) == "3 d 1 min ago"
    assert ui.relative(1001, 1000) == "just now"
    assert ui.human_size(1536) == "1.5 KiB" and ui.human_size(12) == "12 B"


def test_the_templates_and_the_stylesheet_are_package_data():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["runtime.server"]
    shipped = {p for pattern in patterns for p in (root / "runtime/server").glob(pattern)}
    needed = {p for d in ("templates", "static") for p in (ui.HERE / d).iterdir()}
    assert needed and needed <= shipped


def test_the_namespace_tree_links_each_namespace_to_its_subtree(tmp_path):
    """Top level: namespaces (with how many artifacts and bytes lie below) and top-level
    artifacts; a namespace page: its own sub-namespaces and artifacts, with breadcrumbs."""
    with live_server(settings(tmp_path)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        tar = make_tar([("bin/tool", "file", b"#!/bin/sh\n")])
        for name, body, params in (("team-a/app/pr-1", tar, {"unpack": "true"}),
                                   ("team-a/app/pr-2", b"22", {}),
                                   ("team-a/notes.txt", b"333", {}), ("top.txt", b"t", {})):
            r = c.put(f"/repos/{FQRN}/{name}", content=body, params=params, headers=auth())
            assert r.status_code == 200, r.text
        text = page(c, f"/ui/repos/{FQRN}/")
        namespaces = rows_by_name(text, f"Namespaces in {FQRN}")
        assert namespaces == {"team-a/": ["team-a/", "3", ui.human_size(10 + 2 + 3)]}
        assert f'href="/ui/repos/{FQRN}/ns/team-a/"' in text
        assert set(rows_by_name(text, f"Artifacts in {FQRN}")) == {"top.txt"}

        text = page(c, f"/ui/repos/{FQRN}/ns/team-a/")
        assert set(rows_by_name(text, f"Namespaces in {FQRN}/team-a")) == {"app/"}
        artifacts = rows_by_name(text, f"Artifacts in {FQRN}/team-a")
        assert set(artifacts) == {"notes.txt"} and artifacts["notes.txt"][1] == "file"
        assert f'href="/ui/repos/{FQRN}/artifacts/team-a/notes.txt"' in text

        text = page(c, f"/ui/repos/{FQRN}/ns/team-a/app/")
        assert set(rows_by_name(text, f"Artifacts in {FQRN}/team-a/app")) == {"pr-1", "pr-2"}
        assert f'href="/ui/repos/{FQRN}/ns/team-a/"' in text  # breadcrumb up

        text = page(c, f"/ui/repos/{FQRN}/artifacts/team-a/app/pr-1")
        assert "bin/tool" in rows_by_name(text, "Entries of team-a/app/pr-1")
        assert f"/cvmfs/{FQRN}/team-a/app/pr-1" in text
        assert f'href="/repos/{FQRN}/team-a/app/pr-1"' in text
        for missing in ("ns/nope/", "ns/team-a/app/pr-1/", "ns/a/../b/", "artifacts/team-a"):
            page(c, f"/ui/repos/{FQRN}/{missing}", status=404)
