"""``limits.maxNameDepth``: typed and range-checked at preview, handed to the upload service as
``CVMFS_EPHEMERAL_MAX_NAME_DEPTH``, absent (the runtime's default) when unset."""

from __future__ import annotations

import pytest

from components.config import ConfigError
from conftest import docker_config, kubernetes_config
from harness import run_program

KEY = "CVMFS_EPHEMERAL_MAX_NAME_DEPTH"


def env_values(value, key: str = KEY) -> list[str]:  # type: ignore[no-untyped-def]
    """Every value of ``key`` in a resource's inputs: Docker ``K=V`` strings, Kubernetes
    ``{name, value}`` entries."""
    if isinstance(value, dict):
        found = [value["value"]] if value.get("name") == key and "value" in value else []
        return found + [v for item in value.values() for v in env_values(item, key)]
    if isinstance(value, list):
        return [v for item in value for v in env_values(item, key)]
    if isinstance(value, str) and value.startswith(key + "="):
        return [value.split("=", 1)[1]]
    return []


@pytest.mark.parametrize("make_config", [docker_config, kubernetes_config], ids=["docker", "k8s"])
def test_the_depth_reaches_the_upload_service_and_unset_stays_unset(make_config):
    deep = [v for r in run_program(make_config(limits={"maxNameDepth": 6}))
            for v in env_values(r.inputs)]
    assert deep and set(deep) == {"6"}
    assert [v for r in run_program(make_config()) for v in env_values(r.inputs)] == []


@pytest.mark.parametrize("depth", [0, 33, "four"])
def test_an_out_of_range_depth_fails_the_preview_naming_the_key(depth):
    with pytest.raises(ConfigError, match="maxNameDepth"):
        run_program(docker_config(limits={"maxNameDepth": depth}))


def test_the_runtime_reads_the_depth_the_program_writes(monkeypatch):
    from runtime.settings import Settings

    monkeypatch.setenv(KEY, "6")
    assert Settings().max_name_depth == 6
