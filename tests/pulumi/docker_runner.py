"""Create Docker resources exactly as the Docker target declares them, from the mocked inputs.

The Pulumi docker provider is not available on the test machines, so this module plays it: it
reads the recorded inputs of ``docker.Network``, ``docker.Volume`` and ``docker.Container`` and
turns each field into the equivalent ``docker`` command-line option, including the provider's
``uploads`` (a tar stream copied into the created container before it starts). Nothing about the
containers is restated here: a change in the target shows up in what runs.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from typing import Iterable

DOCKER = "docker"


def docker(*args: str, input: bytes | None = None, check: bool = True, timeout: int = 600):
    result = subprocess.run([DOCKER, *args], input=input, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args[:3])} failed: {result.stderr.decode(errors='replace').strip()}"
        )
    return result


def engine_available() -> bool:
    try:
        return docker("info", check=False, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def create_network(inputs: dict) -> None:
    docker("network", "rm", inputs["name"], check=False)
    docker("network", "create", "--driver", inputs.get("driver", "bridge"), inputs["name"])


def create_volume(inputs: dict) -> None:
    docker("volume", "rm", "-f", inputs["name"], check=False)
    args = ["volume", "create", "--driver", inputs.get("driver", "local")]
    for key, value in sorted((inputs.get("driverOpts") or {}).items()):
        args += ["--opt", f"{key}={value}"]
    for label in inputs.get("labels", []):
        args += ["--label", f"{label['label']}={label['value']}"]
    docker(*args, inputs["name"])


def container_options(inputs: dict) -> list[str]:
    """``docker create`` options for a docker.Container's inputs (image and command excluded)."""
    args = ["--name", inputs["name"]]
    if inputs.get("user"):
        args += ["--user", inputs["user"]]
    if inputs.get("readOnly"):
        args.append("--read-only")
    for path, options in sorted((inputs.get("tmpfs") or {}).items()):
        args += ["--tmpfs", f"{path}:{options}"]
    for cap in (inputs.get("capabilities") or {}).get("drops", []):
        args += ["--cap-drop", cap]
    for cap in (inputs.get("capabilities") or {}).get("adds", []):
        args += ["--cap-add", cap]
    for opt in inputs.get("securityOpts", []):
        args += ["--security-opt", opt]
    if inputs.get("privileged"):
        args.append("--privileged")
    if inputs.get("restart"):
        args += ["--restart", inputs["restart"]]
    networks = inputs.get("networksAdvanced", [])
    assert len(networks) <= 1, "one network per container"
    for network in networks:
        args += ["--network", network["name"]]
        for alias in network.get("aliases", []):
            args += ["--network-alias", alias]
    for port in inputs.get("ports", []):
        args += ["-p", f"{port['ip']}:{port['external']}:{port['internal']}/{port['protocol']}"]
    for volume in inputs.get("volumes", []):
        suffix = ":ro" if volume.get("readOnly") else ""
        args += ["-v", f"{volume['volumeName']}:{volume['containerPath']}{suffix}"]
    health = inputs.get("healthcheck") or {}
    tests = health.get("tests", [])
    if tests == ["NONE"]:
        args.append("--no-healthcheck")
    elif tests:
        assert tests[0] == "CMD"
        args += ["--health-cmd", " ".join(tests[1:])]
        for key, flag in (("interval", "--health-interval"), ("timeout", "--health-timeout"),
                          ("startPeriod", "--health-start-period")):
            if health.get(key):
                args += [flag, health[key]]
        if health.get("retries"):
            args += ["--health-retries", str(health["retries"])]
    if inputs.get("memory"):
        args += ["--memory", f"{inputs['memory']}m"]
    for label in inputs.get("labels", []):
        args += ["--label", f"{label['label']}={label['value']}"]
    for env in inputs.get("envs", []):
        args += ["-e", env]
    return args


def uploads_tar(uploads: Iterable[dict]) -> bytes:
    """The provider's ``uploads`` as one tar stream (content, owner, group, mode)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for upload in uploads:
            data = upload["content"].encode()
            info = tarfile.TarInfo(upload["file"].lstrip("/"))
            info.size = len(data)
            info.mode = int(upload.get("permissions") or ("0755" if upload.get("executable") else "0644"), 8)
            info.uid = int(upload.get("owner") or 0)
            info.gid = int(upload.get("group") or 0)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def create_container(inputs: dict, command: list[str] | None = None, extra: list[str] = ()) -> str:
    """``docker create`` + uploads; returns the name. ``command`` overrides the declared one."""
    docker("rm", "-f", inputs["name"], check=False)
    docker("create", *container_options(inputs), *extra, inputs["image"],
           *(command if command is not None else inputs.get("command", [])))
    if inputs.get("uploads"):
        # As the provider: the API copy without UID/GID archive mode (files go to the container user).
        docker("cp", "-", f"{inputs['name']}:/", input=uploads_tar(inputs["uploads"]))
    return inputs["name"]


def state(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


def wait_healthy(name: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        current = state(name)["State"]
        health = (current.get("Health") or {}).get("Status")
        if health == "healthy":
            return
        if not current["Running"] or time.monotonic() > deadline:
            logs = docker("logs", "--tail", "50", name, check=False)
            raise AssertionError(
                f"{name} not healthy ({current.get('Status')}, health {health}):\n"
                + logs.stdout.decode(errors="replace") + logs.stderr.decode(errors="replace")
            )
        time.sleep(1)
