"""The site cache for real: Debian's squid with the configuration SiteCache renders, in front of
the stratum 0's nginx (deploy/nginx/stratum0.conf), read through by the independent test reader.

What a CVMFS site needs from its squid, shown on real processes: objects come from the cache on a
second read; the signed manifest is revalidated, so a new revision is seen at once; a publish
that 200 clients read at the same moment costs the stratum 0 one request per object (collapsed
forwarding, counted in nginx's access log); and the cache proxies nothing but this stratum 0.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from components.squid_config import PROBE_PATH, SquidSettings
from conftest import docker_config, kubernetes_config
from harness import REPO_ROOT, run_program
from nginx_runner import as_nobody, nginx_binary, running_nginx
from squid_runner import origin_requests, running_squid, squid_binary
from tests.cvmfs_reader import RepoReader

FQRN = "ci.example.org"
#: The name clients use for the stratum 0 in their CVMFS_SERVER_URL. It need not resolve:
#: squid forwards to its cache_peer, never directly.
PUBLIC_HOST = "stratum0.cvmfs-test.example"
READERS = 200

for _binary, _package in ((nginx_binary(), "nginx-light"), (squid_binary(), "squid")):
    if _binary is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"{_package} missing in CI: scripts/ensure-docker.sh installs it")
        pytest.skip(f"{_package} not installed (apt-get install {_package})",
                    allow_module_level=True)


def runtime_cli(*args: str, data: Path, keys: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "runtime", *args, "--data-dir", str(data), "--keys-dir", str(keys)],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=120,
    )


class Stack:
    """A repository on disk, nginx serving it, squid in front: what a site sees."""

    def __init__(self, work: Path, nginx_url: str, squid, data: Path, keys: Path) -> None:
        self.work, self.squid, self.data, self.keys = work, squid, data, keys
        self.origin_port = int(nginx_url.rsplit(":", 1)[1])
        self.base = f"http://{PUBLIC_HOST}:{self.origin_port}/cvmfs/{FQRN}"
        self.public_key = (keys / f"{FQRN}.pub").read_bytes()

    def client(self) -> httpx.Client:
        return httpx.Client(proxy=self.squid.url, trust_env=False, timeout=60)

    def reader(self, client: httpx.Client) -> RepoReader:
        return RepoReader(self.base, FQRN, self.public_key, client=client)

    def origin(self):
        return origin_requests(self.work / "access.log")

    def publish(self, name: str, files: dict[str, bytes]) -> None:
        src = self.work / f"src-{name}"
        src.mkdir()
        for rel, content in files.items():
            (src / rel).write_bytes(content)
        runtime_cli("publish", FQRN, str(src), "--as", name, data=self.data, keys=self.keys)


@contextmanager
def service_dir(prefix: str) -> Iterator[Path]:
    """A work tree for the unprivileged nginx and squid, outside pytest's per-user temp root
    (another pytest session on the machine resets that root to mode 0700, which would lock the
    unprivileged servers out mid-test)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def stack():
    with service_dir("cvmfs-site-cache-test-") as work:
        data, keys = work / "data", work / "keys"
        runtime_cli("init", FQRN, data=data, keys=keys)
        with running_nginx(data, work) as nginx_url:
            port = int(nginx_url.rsplit(":", 1)[1])
            settings = SquidSettings(
                origin_host="127.0.0.1", origin_port=port,
                allowed_hosts=[PUBLIC_HOST], allowed_ports=[port],
                memory_cache_mb=64, disk_cache_mb=100,
            )
            with running_squid(work / "squid", settings) as squid:
                yield Stack(work, nginx_url, squid, data, keys)


def read_everything(reader: RepoReader) -> dict[str, bytes]:
    """Every regular file of the tree (not the hidden ``.cvmfscatalog`` markers), by path."""
    return {path: reader.read_file(path) for path, e in reader.walk().items()
            if e.type == "file" and not path.endswith("/.cvmfscatalog")}


def object_paths(counts, before=None) -> list[str]:
    return sorted(p for p in counts if "/data/" in p and (before is None or p not in before))


def test_second_read_is_served_from_the_cache(stack):
    stack.publish("first", {"a.txt": b"alpha\n" * 1000, "b.bin": os.urandom(200_000)})
    with stack.client() as client:
        first = read_everything(stack.reader(client))
    origin_after_first = stack.origin()
    with stack.client() as client:
        second = read_everything(stack.reader(client))
    assert first == second and set(first) == {"/first/a.txt", "/first/b.bin"}
    objects = object_paths(origin_after_first)
    assert len(objects) >= 4  # certificate, root and nested catalog, file content
    # The stratum 0 saw each object once; the second reader got every one from squid.
    for path in objects:
        assert stack.origin()[path] == 1, path
        results = stack.squid.results(path)
        assert len(results) == 2, (path, results)
        assert results[1].split("/")[0] in ("TCP_HIT", "TCP_MEM_HIT"), (path, results)


def test_whole_chunks_above_the_memory_object_limit_are_cached_on_disk(stack):
    """8 MiB chunks exceed maximum_object_size_in_memory (catalogs stay in memory): they must
    still be cached (maximum_object_size is above the chunk size), on the disk cache."""
    big = os.urandom(20 * 1024 * 1024)  # three chunks of the default 8 MiB
    before = stack.origin()
    stack.publish("big", {"big.bin": big})
    for _ in range(2):
        with stack.client() as client:
            assert stack.reader(client).read_file("/big/big.bin") == big
    after = stack.origin()
    chunks = [p for p in object_paths(after, before) if p.endswith("P")]
    assert len(chunks) == 3, object_paths(after, before)
    for path in chunks:
        assert after[path] == 1, path
        assert [r.split("/")[0] for r in stack.squid.results(path)][1] == "TCP_HIT", path


def test_manifest_is_revalidated_so_a_new_revision_is_seen_at_once(stack):
    with stack.client() as client:
        before = stack.reader(client).revision
        stack.publish("second", {"c.txt": b"gamma\n"})
        after = stack.reader(client)
        assert after.revision > before
        assert after.read_file("/second/c.txt") == b"gamma\n"
    # Squid never answered the signed files from its cache without asking the stratum 0.
    for name in (".cvmfspublished", ".cvmfswhitelist"):
        results = stack.squid.results(f"/{FQRN}/{name}")
        assert results, name
        assert not [r for r in results if r.split("/")[0] in ("TCP_HIT", "TCP_MEM_HIT")], results


def test_200_concurrent_readers_of_a_new_revision_cost_one_origin_fetch_per_object(stack):
    before = stack.origin()
    stack.publish("herd", {f"f{i}.bin": os.urandom(50_000 + i) for i in range(5)})
    start = threading.Barrier(READERS)
    results: list[object] = [None] * READERS

    def read(i: int) -> None:
        try:
            with stack.client() as client:
                start.wait(timeout=60)
                reader = stack.reader(client)
                results[i] = sorted((p, len(b)) for p, b in read_everything(reader).items()
                                    if p.startswith("/herd/"))
        except BaseException as exc:  # reported below, with the reader's index
            results[i] = exc

    threads = [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert not failures, (failures[:3], [l for l in stack.squid.log_lines() if "/200 " not in l][-5:],
                          [l for l in (stack.work / "access.log").read_text().splitlines()
                           if '" 200 ' not in l][-5:])
    expected = [(f"/herd/f{i}.bin", 50_000 + i) for i in range(5)]
    assert all(r == expected for r in results)
    after = stack.origin()
    new_objects = object_paths(after, before)
    # New root catalog, new nested catalog, 5 file objects: each fetched from nginx exactly once.
    assert len(new_objects) >= 7, new_objects
    assert {p: after[p] for p in new_objects} == {p: 1 for p in new_objects}
    manifest = f"/cvmfs/{FQRN}/.cvmfspublished"
    print(f"\n{READERS} readers: {len(new_objects)} new objects fetched once each; "
          f"manifest fetched {after[manifest] - before[manifest]} times from the stratum 0")


def raw_proxy_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def test_no_open_proxy(stack):
    port = stack.origin_port
    with stack.client() as client:
        # The stratum 0 itself, but under a name or port not configured for it.
        for url in (f"http://127.0.0.1:{port}/cvmfs/{FQRN}/.cvmfspublished",
                    f"http://localhost:{port}/cvmfs/{FQRN}/.cvmfspublished",
                    f"http://{PUBLIC_HOST}:{port + 1}/cvmfs/{FQRN}/.cvmfspublished",
                    "http://example.org/", "http://169.254.169.254/latest/meta-data/"):
            assert client.get(url).status_code == 403, url
        # Writes, even to the stratum 0.
        assert client.post(f"{stack.base}/.cvmfspublished", content=b"x").status_code == 403
        assert client.get(f"{stack.base}/.cvmfspublished").status_code == 200
    # Tunnels (CONNECT) to anywhere.
    for target in (b"example.org:443", f"{PUBLIC_HOST}:{port}".encode()):
        status = raw_proxy_request(
            stack.squid.port, b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
        assert status.split()[1] == b"403", status
    denied = [line for line in stack.squid.log_lines()
              if line.split()[6].startswith(("http://example.org/", "example.org:443"))]
    assert len(denied) == 2
    assert denied and all("TCP_DENIED/403" in line for line in denied), denied

def test_probe_is_answered_by_squid_itself(stack):
    """What the liveness and readiness probes ask: squid's own static icon, not the stratum 0."""
    origin_before = stack.origin()
    response = httpx.get(f"{stack.squid.url}{PROBE_PATH}", timeout=10, trust_env=False)
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    assert stack.origin() == origin_before
    with stack.client() as client:  # as a proxied URL on any other host it is refused
        assert client.get(f"http://example.org{PROBE_PATH}").status_code == 403
        assert client.get(f"{stack.base.rsplit('/cvmfs', 1)[0]}{PROBE_PATH}").status_code == 404


def test_clients_outside_the_configured_networks_are_refused(stack):
    settings = SquidSettings(
        origin_host="127.0.0.1", origin_port=stack.origin_port,
        allowed_hosts=[PUBLIC_HOST], allowed_ports=[stack.origin_port],
        client_networks=["10.0.0.0/8"], disk_cache_mb=0,
    )
    with service_dir("cvmfs-site-cache-test-") as work, running_squid(work, settings) as squid:
        with httpx.Client(proxy=squid.url, trust_env=False, timeout=30) as client:
            assert client.get(f"{stack.base}/.cvmfspublished").status_code == 403


@pytest.mark.parametrize("make_config", [docker_config, kubernetes_config])
@pytest.mark.parametrize("disk_cache_mb", [10_000, 0])
def test_the_shipped_configurations_parse_cleanly_on_real_squid(tmp_path, make_config,
                                                                disk_cache_mb):
    """What the component puts in the container, unchanged, checked by squid itself."""
    program = run_program(make_config(siteCache={"enabled": True, "diskCacheMb": disk_cache_mb}))
    if make_config is kubernetes_config:
        conf = program.get("kubernetes:core/v1:ConfigMap", "cvmfs-test-site-cache").inputs[
            "data"]["squid.conf"]
    else:
        (upload,) = program.get("docker:index/container:Container",
                                "cvmfs-test-site-cache-files").inputs["uploads"]
        conf = upload["content"]
    path = tmp_path / "squid.conf"
    path.write_text(conf)
    path.chmod(0o644)
    for folder in (tmp_path, *tmp_path.parents):  # squid runs unprivileged, as in the container
        if folder != Path("/"):
            folder.chmod(folder.stat().st_mode | 0o011)
    parsed = subprocess.run(
        as_nobody([squid_binary(), "-k", "parse", "-n", f"parse{os.getpid()}", "-f", str(path)]),
        capture_output=True, text=True, timeout=60,
    )
    output = parsed.stdout + parsed.stderr
    assert parsed.returncode == 0, output
    assert not [line for line in output.splitlines()
                if any(word in line for word in ("WARNING", "ERROR", "FATAL"))], output
