"""``repositories[].compressionLevel``: typed, range-checked at preview, and handed to every
runtime container through ``CVMFS_EPHEMERAL_REPOSITORIES`` on both targets, where the runtime's
own settings model reads it back."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from components.config import ConfigError
from conftest import FQRN, docker_config, kubernetes_config
from harness import Program, run_program

NIGHTLY = "nightly.example.org"
REPOSITORIES = [
    {"fqrn": FQRN, "compression": "zlib", "compressionLevel": 9},
    {"fqrn": NIGHTLY, "compression": "zlib"},
]


def repositories_values(value: Any) -> Iterator[str]:
    """Every ``CVMFS_EPHEMERAL_REPOSITORIES`` value in a resource's inputs: Docker's ``K=V``
    strings and Kubernetes' ``{name, value}`` env entries alike."""
    if isinstance(value, dict):
        if value.get("name") == "CVMFS_EPHEMERAL_REPOSITORIES" and "value" in value:
            yield value["value"]
        for item in value.values():
            yield from repositories_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from repositories_values(item)
    elif isinstance(value, str) and value.startswith("CVMFS_EPHEMERAL_REPOSITORIES="):
        yield value.split("=", 1)[1]


def runtime_repositories(program: Program) -> list[dict[str, dict]]:
    """The repositories JSON of each resource that carries one, keyed by fqrn."""
    found = []
    for resource in program:
        for text in repositories_values(resource.inputs):
            found.append({r["fqrn"]: r for r in json.loads(text)})
    return found


@pytest.mark.parametrize("make_config", [docker_config, kubernetes_config], ids=["docker", "k8s"])
def test_the_level_reaches_every_runtime_container(make_config):
    program = run_program(make_config(repositories=REPOSITORIES))
    found = runtime_repositories(program)
    assert found, "no resource carries CVMFS_EPHEMERAL_REPOSITORIES"
    for repos in found:
        assert repos[FQRN]["compression_level"] == 9
        # Unset stays unset: the runtime applies its default and the environment of a stack
        # that never set the key is unchanged.
        assert "compression_level" not in repos[NIGHTLY]


def test_the_runtime_reads_the_level_the_program_writes():
    from runtime.settings import Settings

    program = run_program(docker_config(repositories=REPOSITORIES))
    text = next(t for r in program for t in repositories_values(r.inputs))
    settings = Settings(repositories=text)
    levels = {r.fqrn: r.compression_level for r in settings.repositories}
    assert levels == {FQRN: 9, NIGHTLY: 4}


def test_a_stack_without_the_key_keeps_its_environment(docker_program):
    for repos in runtime_repositories(docker_program):
        assert all("compression_level" not in r for r in repos.values())


@pytest.mark.parametrize("level, phrase", [
    (0, "greater than or equal to 1"),
    (10, "less than or equal to 9"),
    ("fast", "valid integer"),
])
def test_an_out_of_range_level_fails_the_preview_naming_the_key(level, phrase):
    config = docker_config(repositories=[{"fqrn": FQRN, "compression": "zlib"},
                                         {"fqrn": NIGHTLY, "compressionLevel": level}])
    with pytest.raises(ConfigError) as err:
        run_program(config)
    message = str(err.value)
    assert "cvmfs-ephemeral:repositories[1].compressionLevel" in message
    assert phrase in message
