"""An upgrade on a real Docker engine, applied exactly as the Docker target declares it.

Deploy (images built from the declared docker.Image inputs, containers from the declared
container inputs), upload an artifact through the upload API, then change the configuration and
the image (a new runtime revision: a new tag) and apply the new program over the running one
with the engine's rules for the declared options (``docker_runner.apply_update``: unchanged
resources kept, changed fixed-name ones deleted before replaced, the data volume never replaced).

Shown: the artifact is still served and verifies with the same public key; the data volume and
keys are the same; the stratum-0 container kept serving throughout (polled every 100 ms: zero
failed reads); an upload in flight when the upload service is replaced completes (the runtime
drains within the declared stop grace) or is refused and retried by the CI client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import ADMIN_TOKEN, FQRN, UPLOAD_TOKEN
from docker_runner import (
    apply_update, build_images, create_container, create_network, create_volume, docker,
    engine_available, state, wait_healthy,
)
from harness import REPO_ROOT, run_program
from nginx_runner import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]
NAME = "cvmfs-upgrade"
#: The in-flight upload: large enough to still be streaming when the upload service is stopped.
BIG = 160 * 1024 * 1024

if not engine_available():
    if os.environ.get("CI"):
        raise RuntimeError("no Docker engine in CI: run scripts/ensure-docker.sh first")
    pytest.skip("no Docker engine (scripts/ensure-docker.sh)", allow_module_level=True)


def _ports() -> dict[str, int]:
    ports = {"stratum0": free_port(), "upload": free_port(), "gateway": free_port()}
    while len(set(ports.values())) < 3:
        ports["gateway"] = free_port()
    return ports


def _config(ports, **overrides) -> dict:
    config = {
        "target": "docker",
        "name": NAME,
        "repositories": [{"fqrn": FQRN, "ttlS": 60, "compression": "zlib"}],
        "tokens": [{"token": UPLOAD_TOKEN}],
        "maintenanceToken": ADMIN_TOKEN,
        "ports": ports,
    }
    config.update(overrides)
    return config


def _program(config):
    """The program as the engine would run it: images built first, containers on their ids."""
    first = run_program(config)
    return run_program(config, image_ids=build_images(first))


def _teardown(program) -> None:
    for c in program.of_type("docker:index/container:Container"):
        docker("rm", "-f", c.inputs["name"], check=False)
    for v in program.of_type("docker:index/volume:Volume"):
        docker("volume", "rm", "-f", v.inputs["name"], check=False)
    for n in program.of_type("docker:index/network:Network"):
        docker("network", "rm", n.inputs["name"], check=False)
    docker("volume", "prune", "-f", "--filter", f"label=io.cvmfs-ephemeral.instance={NAME}",
           check=False)


def _deploy(program) -> None:
    for n in program.of_type("docker:index/network:Network"):
        create_network(n.inputs)
    for v in program.of_type("docker:index/volume:Volume"):
        create_volume(v.inputs)
    containers = {c.inputs["name"]: c.inputs for c in program.of_type("docker:index/container:Container")}
    for name, inputs in sorted(containers.items(), key=lambda kv: not kv[0].endswith("-files")):
        create_container(inputs)
        if inputs.get("start") is not False:
            docker("start", name)
    for role in ("stratum0", "gateway", "upload"):
        wait_healthy(f"{NAME}-{role}")


def _upload(endpoints, src, name, timeout=600) -> subprocess.CompletedProcess:
    """The CI client, with its default retries."""
    return subprocess.run(
        [sys.executable, "-m", "runtime", "upload", str(src), "--url", endpoints["upload"],
         "--repo", FQRN, "--name", name, "--wait-visible",
         "--public-url", f"{endpoints['stratum0']}/cvmfs/{FQRN}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "CVMFS_EPHEMERAL_TOKEN": UPLOAD_TOKEN},
    )


class Poller(threading.Thread):
    """GET stratum 0's .cvmfspublished every 100 ms; every failure is kept."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.reads = 0
        self.failures: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop_event.is_set():
                try:
                    response = client.get(self.url)
                    if response.status_code != 200 or not response.content.startswith(b"C"):
                        self.failures.append(f"{time.time():.1f} status {response.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{time.time():.1f} {type(exc).__name__}: {exc}")
                self.reads += 1
                self._stop_event.wait(0.1)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def _local(endpoints: dict) -> dict:
    return {k: v.replace("localhost", "127.0.0.1") for k, v in endpoints.items()}


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory):
    from tests.cvmfs_reader import RepoReader

    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "make-base-image.sh")], check=True,
                   timeout=1200)
    ports = _ports()
    v1 = _program(_config(ports))
    _teardown(v1)
    report: dict = {"v1": v1}
    try:
        _deploy(v1)
        endpoints = _local(v1.outputs["endpoints"])
        artifact = tmp_path_factory.mktemp("artifact")
        (artifact / "hello.txt").write_bytes(b"uploaded before the upgrade\n")
        first = _upload(endpoints, artifact, "before-upgrade")
        assert first.returncode == 0, first.stdout + first.stderr
        report["volume_created"] = docker(
            "volume", "inspect", "--format", "{{.CreatedAt}}", f"{NAME}-data").stdout
        report["ids_before"] = {
            role: state(f"{NAME}-{role}")["Id"] for role in ("stratum0", "gateway", "upload")
        }

        # The upgrade: a configuration change and a new runtime image (new revision, new tag).
        v2 = _program(_config(ports, logLevel="debug", limits={"defaultTtlS": 3600},
                              image={"revision": "upgrade-2"}))
        report["v2"] = v2
        big = tmp_path_factory.mktemp("inflight")
        (big / "blob.bin").write_bytes(os.urandom(BIG))
        inflight: dict = {}

        def start_inflight(name: str) -> None:
            # Just before the upload service is stopped: a CI upload is running.
            if name != f"{NAME}-upload":
                return
            def run() -> None:
                inflight["result"] = _upload(endpoints, big, "in-flight")
                inflight["finished"] = time.monotonic()

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            inflight["thread"] = thread
            # Long enough for the client to start and stream part of the body.
            time.sleep(2.0)
            inflight["stopping"] = time.monotonic()

        poller = Poller(f"{endpoints['stratum0']}/cvmfs/{FQRN}/.cvmfspublished")
        poller.start()
        time.sleep(1)
        try:
            report["actions"] = apply_update(v1, v2, before_replace=start_inflight)
            for role in ("stratum0", "gateway", "upload"):
                wait_healthy(f"{NAME}-{role}")
            inflight["thread"].join(600)
            time.sleep(1)
        finally:
            poller.stop()
        report["poller"] = poller
        report["inflight"] = inflight
        report["ids_after"] = {
            role: state(f"{NAME}-{role}")["Id"] for role in ("stratum0", "gateway", "upload")
        }
        report["reader"] = lambda key: RepoReader(
            f"{endpoints['stratum0']}/cvmfs/{FQRN}", FQRN, key.encode())
        yield report
    finally:
        if not os.environ.get("CVMFS_E2E_KEEP"):
            _teardown(report.get("v2") or v1)
            _teardown(v1)


def test_the_upgrade_is_a_new_image_and_replaced_containers(upgraded):
    v1, v2 = upgraded["v1"], upgraded["v2"]
    tag = lambda p: p.get("docker:index/image:Image", f"{NAME}-image").inputs["imageName"]  # noqa: E731
    assert tag(v1) != tag(v2)
    actions = upgraded["actions"]
    assert actions[f"{NAME}-upload"] == "replaced" and actions[f"{NAME}-gateway"] == "replaced"
    assert actions[f"{NAME}-maintenance"] == "replaced"
    # The read path runs the stratum0 stage, untouched by a runtime change: kept as it was.
    assert actions[f"{NAME}-stratum0"] == "kept"
    before, after = upgraded["ids_before"], upgraded["ids_after"]
    assert before["upload"] != after["upload"] and before["gateway"] != after["gateway"]
    assert before["stratum0"] == after["stratum0"]
    env = dict(e.split("=", 1) for e in state(f"{NAME}-upload")["Config"]["Env"])
    assert env["CVMFS_EPHEMERAL_LOG_LEVEL"] == "debug"


def test_same_data_volume_and_same_keys(upgraded):
    v1, v2 = upgraded["v1"], upgraded["v2"]
    created = docker("volume", "inspect", "--format", "{{.CreatedAt}}", f"{NAME}-data").stdout
    assert created == upgraded["volume_created"]
    assert v1.outputs["publicKeys"] == v2.outputs["publicKeys"]
    assert v1.outputs["repositories"] == v2.outputs["repositories"]


def test_the_artifact_is_still_served_and_verifies_with_the_same_key(upgraded):
    reader = upgraded["reader"](upgraded["v1"].outputs["publicKeys"][FQRN])
    reader.check()
    assert reader.read_file("before-upgrade/hello.txt") == b"uploaded before the upgrade\n"


def test_stratum0_served_every_read_during_the_upgrade(upgraded):
    poller = upgraded["poller"]
    assert poller.reads > 50  # polled across the whole upgrade, every 100 ms
    assert poller.failures == []


def test_the_upload_in_flight_completed_or_was_retried(upgraded):
    inflight = upgraded["inflight"]
    result = inflight["result"]
    assert result.returncode == 0, result.stdout + result.stderr
    # Either the drain let it finish, or the client was refused and retried: say which.
    if "retrying" in result.stderr:
        outcome = "refused, then retried by the client"
    elif inflight["finished"] > inflight["stopping"]:
        outcome = "completed while the old upload service drained"
    else:
        outcome = "completed before the stop"
    print(f"in-flight upload: {outcome}")
    reader = upgraded["reader"](upgraded["v1"].outputs["publicKeys"][FQRN])
    reader.check()
    assert len(reader.read_file("in-flight/blob.bin")) == BIG
