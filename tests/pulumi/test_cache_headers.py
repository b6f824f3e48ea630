"""The stratum 0's cache headers, exactly, from both servers that serve it: nginx with
deploy/nginx/stratum0.conf (Docker, Kubernetes) and the embedded server (``runtime serve``).

They are what makes a site cache right (see components/squid_config.py): the signed files
``no-cache`` (squid keeps them but asks the stratum 0 before each use, so a new revision is seen
at once and never replaced by a cached older manifest), content-addressed objects cached for
3 days and ``immutable``, no validators (ETag, Last-Modified) and no Expires.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from harness import REPO_ROOT
from nginx_runner import free_port, nginx_binary, running_nginx

FQRN = "ci.example.org"
SIGNED = "no-cache"
IMMUTABLE = "public, max-age=259200, immutable"

if nginx_binary() is None:
    if os.environ.get("CI"):
        raise RuntimeError("nginx missing in CI: .ci/run must install nginx-light")
    pytest.skip("nginx not installed (apt-get install nginx-light)", allow_module_level=True)


@pytest.fixture(scope="module")
def servers():
    # Outside pytest's per-user temp root: another pytest session resets it to mode 0700,
    # which would lock the unprivileged nginx out mid-test.
    work = Path(tempfile.mkdtemp(prefix="cvmfs-headers-test-"))
    try:
        yield from _servers(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _servers(work: Path):
    data, keys = work / "data", work / "keys"
    env = {**os.environ, "CVMFS_EPHEMERAL_DATA_DIR": str(data),
           "CVMFS_EPHEMERAL_KEYS_DIR": str(keys), "CVMFS_EPHEMERAL_REPOSITORIES": FQRN,
           "CVMFS_EPHEMERAL_TOKENS": "header-test-token-0123456789"}
    subprocess.run([sys.executable, "-m", "runtime", "init", FQRN], cwd=REPO_ROOT, env=env,
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--port", str(port)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    embedded = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{embedded}/healthz", trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {proc.stderr.read().decode()}")
            time.sleep(0.1)
        with running_nginx(data, work) as nginx:
            yield {"nginx": nginx, "embedded": embedded}, data
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _paths(data: Path) -> dict[str, str]:
    public = data / "public" / FQRN
    root = (public / ".cvmfspublished").read_bytes().split(b"\n", 1)[0][1:].decode()
    return {
        f"/cvmfs/{FQRN}/.cvmfspublished": SIGNED,
        f"/cvmfs/{FQRN}/.cvmfswhitelist": SIGNED,
        f"/cvmfs/{FQRN}/.cvmfs_master_replica": SIGNED,
        f"/cvmfs/{FQRN}/data/{root[:2]}/{root[2:]}C": IMMUTABLE,
        f"/cvmfs-meta/{FQRN}.pub": SIGNED,
    }


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_both_servers_send_exactly_the_intended_cache_headers(servers, method):
    urls, data = servers
    for path, expected in _paths(data).items():
        seen = {}
        for name, base in urls.items():
            r = httpx.request(method, base + path, trust_env=False,
                              headers={"Accept-Encoding": "gzip"})
            assert r.status_code == 200, (name, path)
            assert r.headers.get_list("cache-control") == [expected], (name, path)
            for header in ("etag", "last-modified", "expires", "content-encoding", "vary"):
                assert header not in r.headers, (name, path, header)
            seen[name] = (r.headers["content-type"], r.headers["content-length"])
        assert seen["nginx"] == seen["embedded"], path


def test_a_missing_object_is_never_marked_cacheable(servers):
    urls, _ = servers
    for name, base in urls.items():
        r = httpx.get(f"{base}/cvmfs/{FQRN}/data/00/{'0' * 38}", trust_env=False)
        assert r.status_code == 404, name
        assert "immutable" not in r.headers.get("cache-control", ""), name
        assert "max-age=259200" not in r.headers.get("cache-control", ""), name


def test_squid_in_front_of_the_embedded_server_caches_objects_and_revalidates_the_manifest(
        servers):
    """The same headers make squid right in front of ``runtime serve`` too."""
    from components.squid_config import SquidSettings
    from squid_runner import running_squid, squid_binary

    if squid_binary() is None:
        pytest.skip("squid not installed (apt-get install squid)")
    urls, data = servers
    port = int(urls["embedded"].rsplit(":", 1)[1])
    settings = SquidSettings(origin_host="127.0.0.1", origin_port=port,
                             allowed_hosts=["embedded.cvmfs-test.example"],
                             allowed_ports=[port], disk_cache_mb=0)
    paths = _paths(data)
    with running_squid(data.parent / "squid-embedded", settings) as squid:
        with httpx.Client(proxy=squid.url, trust_env=False, timeout=30) as client:
            for _ in range(2):
                for path in paths:
                    r = client.get(f"http://embedded.cvmfs-test.example:{port}{path}")
                    assert r.status_code == 200, path
        for path, policy in paths.items():
            first, second = (code.split("/")[0] for code in squid.results(path))
            if policy == IMMUTABLE:
                assert second in ("TCP_HIT", "TCP_MEM_HIT"), (path, first, second)
            else:
                assert second not in ("TCP_HIT", "TCP_MEM_HIT"), (path, first, second)
