"""The stratum-0 nginx configuration, run for real against a repository made by ``runtime init``.

Checks the CernVM-FS serving rules (docs/cvmfs-format.md: HTTP rules): content types, cache headers, no
validators or transfer compression, HEAD, 404 without redirects or listings, and that nothing
outside the public tree (private area, keys) is reachable.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO_ROOT
from nginx_runner import nginx_binary, running_nginx

FQRN = "ci.example.org"

if nginx_binary() is None:
    if os.environ.get("CI"):
        raise RuntimeError("nginx missing in CI: .ci/run must install nginx-light")
    pytest.skip("nginx not installed (apt-get install nginx-light)", allow_module_level=True)


def request(base: str, method: str, path: str, headers: dict | None = None):
    """A raw request: the path is sent as written (no client-side '..' normalisation)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("stratum0")
    data, keys = work / "data", work / "keys"
    subprocess.run(
        [sys.executable, "-m", "runtime", "init", FQRN, "--data-dir", str(data),
         "--keys-dir", str(keys)],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=120,
    )
    # Bait: a key file inside the served tree and the private area next to it.
    (data / "public" / FQRN / "leak.key").write_text("secret")
    (data / "public" / FQRN / "leak.masterkey").write_text("secret")
    (data / "private" / "bait").write_text("secret")
    with running_nginx(data, work) as base:
        yield base, data, keys


def test_healthz(served):
    response, body = request(served[0], "GET", "/healthz")
    assert response.status == 200 and body == b"ok\n"


@pytest.mark.parametrize("name", [".cvmfspublished", ".cvmfswhitelist", ".cvmfs_master_replica"])
def test_signed_files(served, name):
    base, data, _ = served
    expected = (data / "public" / FQRN / name).read_bytes()
    response, body = request(base, "GET", f"/cvmfs/{FQRN}/{name}", {"Accept-Encoding": "gzip"})
    assert response.status == 200
    assert body == expected
    assert response.getheader("Content-Type") == "application/x-cvmfs"
    assert response.getheader("Cache-Control") == "no-cache"
    for header in ("Last-Modified", "ETag", "Content-Encoding", "Location"):
        assert response.getheader(header) is None, header
    head, head_body = request(base, "HEAD", f"/cvmfs/{FQRN}/{name}")
    assert head.status == 200 and head_body == b""
    assert int(head.getheader("Content-Length")) == len(expected)
    assert head.getheader("Content-Type") == "application/x-cvmfs"


def test_data_objects_are_immutable(served):
    base, data, _ = served
    objects = sorted(p for p in (data / "public" / FQRN / "data").rglob("*") if p.is_file())
    assert objects, "init wrote no objects"
    for path in objects[:5]:
        rel = path.relative_to(data / "public").as_posix()
        response, body = request(base, "GET", f"/cvmfs/{rel}", {"Accept-Encoding": "gzip"})
        assert response.status == 200 and body == path.read_bytes()
        assert response.getheader("Content-Type") == "application/octet-stream"
        assert response.getheader("Cache-Control") == "public, max-age=259200, immutable"
        for header in ("Last-Modified", "ETag", "Content-Encoding"):
            assert response.getheader(header) is None, header
        head, _ = request(base, "HEAD", f"/cvmfs/{rel}")
        assert head.status == 200 and int(head.getheader("Content-Length")) == path.stat().st_size


def test_meta(served):
    base, data, _ = served
    response, body = request(base, "GET", f"/cvmfs-meta/{FQRN}.pub")
    assert response.status == 200 and body == (data / "meta" / f"{FQRN}.pub").read_bytes()
    assert body.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert response.getheader("Last-Modified") is None


@pytest.mark.parametrize(
    "path",
    [
        f"/cvmfs/{FQRN}/data/00/missingC",
        f"/cvmfs/{FQRN}/nothing-here",
        "/cvmfs/other.example.org/.cvmfspublished",
        # Directories: no listing and no redirect to add a slash.
        f"/cvmfs/{FQRN}/data",
        f"/cvmfs/{FQRN}/data/",
        f"/cvmfs/{FQRN}",
        f"/cvmfs/{FQRN}/",
        "/cvmfs/",
        "/cvmfs-meta/",
        # Outside the public tree.
        f"/cvmfs/{FQRN}/../private/bait",
        f"/cvmfs/{FQRN}/../../private/bait",
        f"/cvmfs/{FQRN}/%2e%2e/%2e%2e/private/bait",
        "/cvmfs/../private/bait",
        "/private/bait",
        "/cvmfs-meta/../private/bait",
        f"/cvmfs-meta/../public/{FQRN}/leak.key",
        # Key files, even inside the served tree.
        f"/cvmfs/{FQRN}/leak.key",
        f"/cvmfs/{FQRN}/leak.masterkey",
        f"/cvmfs-meta/{FQRN}.key",
        "/",
    ],
)
def test_not_found(served, path):
    response, body = request(served[0], "GET", path)
    assert response.status == 404, (path, response.status)
    assert response.getheader("Location") is None
    assert b"secret" not in body
    # A negative answer must not be cached as if it were an immutable object.
    assert "immutable" not in (response.getheader("Cache-Control") or "")


def test_only_get_and_head(served):
    response, _ = request(served[0], "POST", f"/cvmfs/{FQRN}/.cvmfspublished")
    assert response.status in (403, 405)


def test_runtime_verify_accepts_what_nginx_serves(served):
    """The post-deploy check's command passes against this nginx (and fails with a wrong key)."""
    base, data, keys = served
    url = f"{base}/cvmfs/{FQRN}"
    ok = subprocess.run(
        [sys.executable, "-m", "runtime", "verify", "--url", url, "--fqrn", FQRN,
         "--public-key", str(keys / f"{FQRN}.pub")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    other = Path(data).parent / "other.pub"
    from harness import rsa_key_pems

    other.write_text(rsa_key_pems("not-the-master")[1])
    bad = subprocess.run(
        [sys.executable, "-m", "runtime", "verify", "--url", url, "--fqrn", FQRN,
         "--public-key", str(other)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode != 0


def _run_check_script(url: str, public_key: str, timeout_s: int):
    """Run the post-deploy check exactly as pulumi-command would: /bin/sh -c, key on stdin."""
    from components.verify import PYTHON_ENV, verify_script

    # As the Command declares it: the program's interpreter in the environment, no PATH help.
    env = {**os.environ, PYTHON_ENV: sys.executable}
    return subprocess.run(
        ["/bin/sh", "-c", verify_script(url, FQRN, timeout_s)], input=public_key, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120, env=env,
    )


def test_post_deploy_check_script(served):
    base, _, keys = served
    url = f"{base}/cvmfs/{FQRN}"
    ok = _run_check_script(url, (keys / f"{FQRN}.pub").read_text(), 30)
    assert ok.returncode == 0, ok.stderr
    assert "verified" in ok.stdout
    from harness import rsa_key_pems

    bad = _run_check_script(url, rsa_key_pems("not-the-master")[1], 1)
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"post-deploy check of {FQRN} failed: ")
    missing = _run_check_script(f"{base}/cvmfs/none.example.org", "x", 1)
    assert missing.returncode == 1
