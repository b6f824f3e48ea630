"""End to end on a local Docker engine: build the runtime image, run the containers exactly as the
Docker target declares them (from the mocked resource inputs), then read the repository back
through the stratum-0 nginx with the test reader.

Needs a Docker engine (``scripts/ensure-docker.sh`` installs and starts Debian's docker.io and
makes the debootstrap base image). Takes minutes the first time (base image, pip install in the
image build); the base image and the build cache are reused afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import ADMIN_TOKEN, FQRN, UPLOAD_TOKEN
from docker_runner import (
    build_images, create_container, create_network, create_volume, docker, engine_available, state,
    wait_healthy,
)
from harness import REPO_ROOT, run_program
from nginx_runner import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]
NAME = "cvmfs-e2e"
ARTIFACT = {"hello.txt": b"hello from the e2e test\n", "sub/data.bin": bytes(range(256)) * 64}

if not engine_available():
    if os.environ.get("CI"):
        raise RuntimeError("no Docker engine in CI: run scripts/ensure-docker.sh first")
    pytest.skip("no Docker engine (scripts/ensure-docker.sh)", allow_module_level=True)


def _config() -> dict:
    ports = {"stratum0": free_port(), "upload": free_port(), "gateway": free_port()}
    while len(set(ports.values())) < 3:
        ports["gateway"] = free_port()
    return {
        "target": "docker",
        "name": NAME,
        "repositories": [{"fqrn": FQRN, "ttlS": 60, "compression": "zlib"}],
        "tokens": [{"token": UPLOAD_TOKEN}],
        "maintenanceToken": ADMIN_TOKEN,
        "ports": ports,
        "verify": {"timeoutS": 60},
    }


def _teardown(program) -> None:
    """Remove everything the program declares (containers, then volumes and the network)."""
    for c in program.of_type("docker:index/container:Container"):
        docker("rm", "-f", c.inputs["name"], check=False)
    for v in program.of_type("docker:index/volume:Volume"):
        docker("volume", "rm", "-f", v.inputs["name"], check=False)
    for n in program.of_type("docker:index/network:Network"):
        docker("network", "rm", n.inputs["name"], check=False)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "make-base-image.sh")], check=True,
                   timeout=1200)
    config = _config()
    # As the engine: the images are built first, then the containers run their image ids.
    program = run_program(config, image_ids=build_images(run_program(config)))
    containers = {
        c.name.removeprefix(f"{NAME}-"): c.inputs
        for c in program.of_type("docker:index/container:Container")
    }
    loaders = [c for role, c in containers.items() if role.endswith("-files")]
    containers = {role: c for role, c in containers.items() if not role.endswith("-files")}
    _teardown(program)

    for n in program.of_type("docker:index/network:Network"):
        create_network(n.inputs)
    for v in program.of_type("docker:index/volume:Volume"):
        create_volume(v.inputs)
    try:
        # File loaders: created (receiving the key and token files), never started.
        for loader in loaders:
            assert loader.get("start") is False
            create_container(loader)
        for role in ("stratum0", "gateway"):
            create_container(containers[role])
            docker("start", containers[role]["name"])
        # Before the upload service starts, a one-off container with its exact options publishes
        # an artifact through the runtime CLI (the repository writer), as the upload API will
        # once it lands.
        create_container(containers["upload"])
        artifact = tmp_path_factory.mktemp("artifact")
        for rel, data in ARTIFACT.items():
            (artifact / rel).parent.mkdir(parents=True, exist_ok=True)
            (artifact / rel).write_bytes(data)
        subprocess.run(["chmod", "-R", "a+rX", str(artifact)], check=True)
        publisher = {**containers["upload"], "name": f"{NAME}-publish", "ports": [],
                     "restart": "no", "networksAdvanced": []}
        for command in (
            ["python", "-m", "runtime", "init", FQRN],
            ["python", "-m", "runtime", "publish", FQRN, "/artifact", "--as", "build-1"],
        ):
            create_container(
                publisher, command=command,
                extra=["-v", f"{artifact}:/artifact:ro",
                       "--volumes-from", containers["upload"]["name"]],
            )
            out = docker("start", "-a", publisher["name"], check=False, timeout=300)
            docker("rm", "-f", publisher["name"], check=False)
            assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
        docker("start", containers["upload"]["name"])
        create_container(containers["maintenance"])
        docker("start", containers["maintenance"]["name"])
        for role in ("stratum0", "gateway", "upload"):
            wait_healthy(containers[role]["name"])
        yield program, containers
    finally:
        if not os.environ.get("CVMFS_E2E_KEEP"):
            _teardown(program)


def test_containers_run_hardened(deployed):
    _, containers = deployed
    for role, inputs in containers.items():
        info = state(inputs["name"])
        assert info["State"]["Running"], role
        assert info["Config"]["User"] == "10001:10001"
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["HostConfig"]["CapDrop"] == ["ALL"]
        uid = docker("exec", inputs["name"], "id", "-u").stdout.decode().strip()
        assert uid == "10001", role
        write = docker("exec", inputs["name"], "touch", "/opt/x", check=False)
        assert write.returncode != 0, role  # read-only root filesystem


def test_secret_files_mounted_not_in_env(deployed):
    _, containers = deployed
    upload = containers["upload"]["name"]
    listing = docker("exec", upload, "ls", "-ln", "/etc/cvmfs-ephemeral/keys").stdout.decode()
    # Mounted read-only in the service.
    assert docker("exec", upload, "touch", "/etc/cvmfs-ephemeral/keys/x", check=False).returncode
    assert f"{FQRN}.key" in listing and f"{FQRN}.masterkey" in listing
    for line in listing.splitlines()[1:]:
        assert line.startswith("-r--------") and " 10001 10001 " in line, line
    env = docker("exec", upload, "env").stdout.decode()
    assert ADMIN_TOKEN not in env and UPLOAD_TOKEN not in env
    inspect = docker("inspect", upload).stdout.decode()
    assert ADMIN_TOKEN not in inspect and "PRIVATE KEY" not in inspect


def test_post_deploy_check_passes(deployed):
    program, _ = deployed
    check = program.get("command:local:Command", f"{NAME}-verify-{FQRN}").inputs
    result = subprocess.run(
        ["/bin/sh", "-c", check["create"]], input=check["stdin"], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120, env={**os.environ, **check["environment"]},
    )
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout


def test_artifact_reads_back_through_nginx(deployed):
    from tests.cvmfs_reader import RepoReader

    program, _ = deployed
    base = program.outputs["endpoints"]["stratum0"].replace("localhost", "127.0.0.1")
    reader = RepoReader(f"{base}/cvmfs/{FQRN}", FQRN, program.outputs["publicKeys"][FQRN].encode())
    reader.check()
    for rel, data in ARTIFACT.items():
        assert reader.read_file(f"build-1/{rel}") == data


def test_services_answer(deployed):
    import httpx

    program, _ = deployed
    endpoints = program.outputs["endpoints"]
    for url in (endpoints["stratum0"], endpoints["upload"],
                endpoints["notifications"].removesuffix("/api/v1")):
        response = httpx.get(url.replace("localhost", "127.0.0.1") + "/healthz", timeout=10)
        assert response.status_code == 200, url


def test_maintenance_scheduler_keeps_running(deployed):
    _, containers = deployed
    name = containers["maintenance"]["name"]
    time.sleep(3)
    info = state(name)
    assert info["State"]["Running"] and info["RestartCount"] == 0, docker(
        "logs", name, check=False
    ).stderr.decode()


def test_upload_through_the_api_and_read_back(deployed, tmp_path):
    """CI's path: `runtime upload` with a bearer token to the upload service, then a client
    read through nginx, and the gateway holding the new manifest for subscribers."""
    import base64
    import json as _json

    import httpx

    from tests.cvmfs_reader import RepoReader

    program, _ = deployed
    endpoints = {k: v.replace("localhost", "127.0.0.1") for k, v in program.outputs["endpoints"].items()}
    src = tmp_path / "build-2"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (src / "README").write_bytes(b"uploaded through the API\n")
    token = program.outputs["uploadTokens"][0]
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "upload", str(src), "--url", endpoints["upload"],
         "--repo", FQRN, "--name", "build-2", "--wait-visible",
         "--public-url", f"{endpoints['stratum0']}/cvmfs/{FQRN}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CVMFS_EPHEMERAL_TOKEN": token},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reader = RepoReader(f"{endpoints['stratum0']}/cvmfs/{FQRN}", FQRN,
                        program.outputs["publicKeys"][FQRN].encode())
    reader.check()
    assert reader.read_file("build-2/README") == b"uploaded through the API\n"
    assert reader.read_file("build-1/hello.txt") == ARTIFACT["hello.txt"]

    # Without a token the upload service refuses.
    refused = subprocess.run(
        [sys.executable, "-m", "runtime", "upload", str(src), "--url", endpoints["upload"],
         "--repo", FQRN, "--name", "build-3", "--retries", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "CVMFS_EPHEMERAL_TOKEN": "not-a-configured-token"},
    )
    assert refused.returncode != 0

    # The gateway replays the last published manifest to a new subscriber (docs/cvmfs-format.md, "Notifications").
    subscribe = endpoints["notifications"] + "/notifications/subscribe"
    body = _json.dumps({"version": 1, "repository": FQRN})
    with httpx.stream("GET", subscribe, content=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                message = _json.loads(line[len("data: "):])
                break
    assert message["repository"] == FQRN and message["type"] == "activity"
    manifest = base64.b64decode(message["manifest"])
    assert f"S{reader.revision}".encode() in manifest.split(b"--\n")[0]


def test_zz_stratum0_stops_gracefully_with_the_declared_signal(deployed):
    """Last (it stops stratum 0): nginx exits cleanly on the signal the targets declare (Docker
    stop signal; the Kubernetes preStop hook's command), well within the stop grace."""
    from conftest import kubernetes_config

    _, containers = deployed
    inputs = containers["stratum0"]
    assert state(inputs["name"])["Config"]["StopSignal"] == "SIGQUIT"
    # The Kubernetes hook's command, in a one-off container with the same options (no restart
    # policy: a pod being deleted is not restarted either).
    program = run_program(kubernetes_config())
    (nginx,) = [c for d in program.of_type("kubernetes:apps/v1:Deployment")
                if d.name.endswith("-stratum0")
                for c in d.inputs["spec"]["template"]["spec"]["containers"]]
    hook = nginx["lifecycle"]["preStop"]["exec"]["command"]
    one_off = {**inputs, "name": f"{NAME}-prestop", "ports": [], "restart": "no"}
    create_container(one_off)
    try:
        docker("start", one_off["name"])
        wait_healthy(one_off["name"])
        started = time.monotonic()
        docker("exec", one_off["name"], *hook, check=False, timeout=120)
        deadline = started + 30
        while state(one_off["name"])["State"]["Running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        final = state(one_off["name"])["State"]
        assert not final["Running"] and final["ExitCode"] == 0, final
        assert time.monotonic() - started < 30
    finally:
        docker("rm", "-f", one_off["name"], check=False)
    # docker stop (as on a replace or destroy) with the declared signal and grace.
    started = time.monotonic()
    docker("stop", "--time", str(inputs["stopTimeout"]), inputs["name"], timeout=200)
    assert time.monotonic() - started < 30
    assert state(inputs["name"])["State"]["ExitCode"] == 0
