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
    if inputs.get("stopSignal"):
        args += ["--stop-signal", inputs["stopSignal"]]
    if inputs.get("stopTimeout") is not None:
        args += ["--stop-timeout", str(inputs["stopTimeout"])]
    if inputs.get("logDriver"):
        args += ["--log-driver", inputs["logDriver"]]
    for key, value in sorted((inputs.get("logOpts") or {}).items()):
        args += ["--log-opt", f"{key}={value}"]
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


def build_images(program, timeout: int = 1800) -> dict[str, str]:
    """``docker build`` every declared docker.Image as the provider would (context, Dockerfile,
    build args, target stage, tag); returns tag → image id, what the engine then holds."""
    import os

    ids = {}
    for image in program.of_type("docker:index/image:Image"):
        inputs = image.inputs
        build = inputs["build"]
        args = [f"--build-arg={k}={v}" for k, v in sorted(build.get("args", {}).items())]
        if build.get("target"):
            args += ["--target", build["target"]]
        subprocess.run(
            ["docker", "build", "-q", *args, "-f", build["dockerfile"], "-t", inputs["imageName"],
             build["context"]],
            cwd=program_root(), check=True, timeout=timeout, capture_output=True,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
        ids[inputs["imageName"]] = image_id(inputs["imageName"])
    return ids


def program_root():
    from harness import REPO_ROOT

    return REPO_ROOT


def image_id(reference: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.decode().strip()


def remove_container(inputs: dict) -> None:
    """Delete as the provider does with ``destroy_grace_seconds``: stop (SIGTERM, then SIGKILL
    after the grace), then remove."""
    grace = inputs.get("destroyGraceSeconds")
    if grace:
        docker("stop", "--time", str(grace), inputs["name"], check=False, timeout=grace + 60)
    docker("rm", "-f", inputs["name"], check=False)


SERVICE_ORDER = ("stratum0", "gateway", "upload", "maintenance")


def apply_update(old, new, before_replace=None) -> dict[str, str]:
    """Apply ``new`` over the running ``old`` deployment the way the engine would with the
    options the Docker target declares: unchanged resources are kept; a changed fixed-name
    resource is deleted before its replacement is created (``delete_before_replace``); a
    retained volume is never deleted. Returns container name → "kept" | "replaced" | "created".

    ``before_replace(name)`` is called just before a running container is stopped.
    """
    def by_name(program, typ):
        return {r.inputs["name"]: r for r in program.of_type(typ)}

    actions: dict[str, str] = {}
    old_volumes = by_name(old, "docker:index/volume:Volume")
    for name, volume in by_name(new, "docker:index/volume:Volume").items():
        if name in old_volumes and old_volumes[name].inputs == volume.inputs:
            continue
        assert not (old_volumes.get(name) and old_volumes[name].opts.protect), (
            f"{name}: a protected volume would be replaced (the engine refuses)")
        create_volume(volume.inputs)
    old_containers = by_name(old, "docker:index/container:Container")
    new_containers = by_name(new, "docker:index/container:Container")

    def order(name: str) -> tuple[int, str]:
        loader = name.endswith("-files")
        role = name.split("-")[-2 if loader else -1]
        return (0 if loader else 1 + SERVICE_ORDER.index(role), name)

    for name in sorted(new_containers, key=order):
        inputs = new_containers[name].inputs
        before = old_containers.get(name)
        if before is not None and before.inputs == inputs:
            actions[name] = "kept"
            continue
        if before is not None:
            assert new_containers[name].opts.delete_before_replace, name
            if before_replace is not None and before.inputs.get("start") is not False:
                before_replace(name)
            remove_container(before.inputs)
        create_container(inputs)
        if inputs.get("start") is not False:
            docker("start", name)
        actions[name] = "replaced" if before is not None else "created"
    # Volumes the new program no longer declares (a loader's old file list) go, unless retained.
    for name, volume in old_volumes.items():
        if name not in by_name(new, "docker:index/volume:Volume") and not volume.opts.retain_on_delete:
            docker("volume", "rm", "-f", name, check=False)
    return actions
