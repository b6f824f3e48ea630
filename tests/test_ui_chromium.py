"""The browser pages rendered by a real headless Chromium (Debian's ``chromium``).

Chromium loads the pages from a live server over loopback with the page's own CSP in force;
``--dump-dom`` gives the DOM after rendering, ``--screenshot`` writes what a person would see
at a desktop and a phone size. The screenshots land in the test's output directory (printed);
docs/screenshots/ holds copies of three of them.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.live_server import live_server
from tests.uikit import HOSTILE, publish_examples, rows_by_name
from tests.uploadkit import FQRN, auth, settings

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/ensure-chromium.sh "
                             "installs it; apt-get could not here)")

DESKTOP = (1200, 900)
PHONE = (390, 844)


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def dump_dom(profile: Path, url: str) -> str:
    return chromium(profile, "--dump-dom", url).stdout


def screenshot(profile: Path, url: str, path: Path, size: tuple[int, int]) -> tuple[int, int]:
    chromium(profile, f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", url)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with live_server(settings(tmp_path_factory.mktemp("ui-chromium"))) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            publish_examples(client)
        yield srv


@pytest.fixture
def profile(tmp_path):
    return tmp_path / "chromium-profile"


def test_the_rendered_repository_page_lists_the_artifacts_with_their_expiry(served, profile):
    dom = dump_dom(profile, f"{served.url}/ui/repos/{FQRN}/")
    rows = rows_by_name(dom, f"Artifacts in {FQRN}")
    assert {"hello.txt", "build-42", HOSTILE} <= set(rows)
    assert rows["build-42"][5].startswith(("in 6 d", "in 7 d"))
    assert rows["hello.txt"][5].startswith(("in 59 min", "in 1 h"))
    # the hostile name stayed text: no element was created from it
    assert "<svg" not in dom and "<img" not in dom


def test_the_rendered_artifact_page_shows_its_files_and_the_client_config(served, profile):
    dom = dump_dom(profile, f"{served.url}/ui/repos/{FQRN}/artifacts/build-42")
    files = rows_by_name(dom, "Entries of build-42")
    assert {"bin/app", "README.md", "bin/"} <= set(files)
    assert f"CVMFS_SERVER_URL={served.url}/cvmfs/@fqrn@" in dom
    assert f"CVMFS_NOTIFICATION_SERVER={served.url}/api/v1" in dom
    assert f"/cvmfs/{FQRN}/build-42" in dom


def test_screenshots_of_the_tree_and_the_artifact_page(served, profile, tmp_path):
    out = tmp_path / "screenshots"
    out.mkdir()
    with httpx.Client(base_url=served.url, headers=auth(), timeout=30) as c:
        for name in ("team-a/app/pr-123", "team-a/app/pr-124", "team-a/lib/main"):
            r = c.put(f"/repos/{FQRN}/{name}", content=b"built\n" * 100,
                      params={"expire_in": "1 week"},
                      headers={"X-Artifact-Meta-Branch": name.rpartition("/")[2]})
            assert r.status_code == 200, r.text
    pages = {"repository": f"{served.url}/ui/repos/{FQRN}/",
             "namespace": f"{served.url}/ui/repos/{FQRN}/ns/team-a/app/",
             "artifact": f"{served.url}/ui/repos/{FQRN}/artifacts/build-42"}
    for label, url in pages.items():
        for device, size in (("desktop", DESKTOP), ("phone", PHONE)):
            shot = out / f"{label}-{device}.png"
            assert screenshot(profile, url, shot, size) == size
            assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    print(f"\nbrowser screenshots: {out}")


def test_the_rendered_namespace_tree_links_down_to_deep_artifacts(tmp_path, profile):
    with live_server(settings(tmp_path / "ns")) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for name in ("team-a/app/pr-1", "team-a/app/pr-2"):
                r = c.put(f"/repos/{FQRN}/{name}", content=b"x", headers=auth())
                assert r.status_code == 200, r.text
        top = dump_dom(profile, f"{srv.url}/ui/repos/{FQRN}/")
        assert set(rows_by_name(top, f"Namespaces in {FQRN}")) == {"team-a/"}
        dom = dump_dom(profile, f"{srv.url}/ui/repos/{FQRN}/ns/team-a/app/")
        assert set(rows_by_name(dom, f"Artifacts in {FQRN}/team-a/app")) == {"pr-1", "pr-2"}
        assert f'href="/ui/repos/{FQRN}/artifacts/team-a/app/pr-2"' in dom
