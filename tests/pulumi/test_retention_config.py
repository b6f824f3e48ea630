"""Retention settings of a repository in the stack file reach the runtime's environment.

``repositories[].defaultLifetimeS``, ``maxLifetimeS``, ``allowNever`` and ``quotaBytes`` are
the runtime's per-repository retention fields (``CVMFS_EPHEMERAL_REPOSITORIES``); the program
runs under Pulumi's mocks and the test reads the upload container's environment, on both
targets, and checks that bad values stop ``pulumi preview`` with the key named.
"""

from __future__ import annotations

import json

import pytest

from components.config import ConfigError, parse_stack_config
from conftest import FQRN, docker_config, kubernetes_config
from harness import run_program

CONTAINER = "docker:index/container:Container"
RETENTION = {"defaultLifetimeS": 3600, "maxLifetimeS": 14 * 86400, "allowNever": True,
             "quotaBytes": 10 * 1024**3}


def with_retention(make):  # type: ignore[no-untyped-def]
    return make(repositories=[{"fqrn": FQRN, **RETENTION}, {"fqrn": "nightly.example.org"}])


def runtime_repositories(env: dict[str, str]) -> dict[str, dict]:
    return {r["fqrn"]: r for r in json.loads(env["CVMFS_EPHEMERAL_REPOSITORIES"])}


def test_docker_upload_service_gets_the_retention_fields():
    p = run_program(with_retention(docker_config))
    upload = p.get(CONTAINER, "cvmfs-test-upload").inputs
    repos = runtime_repositories(dict(item.split("=", 1) for item in upload["envs"]))
    assert {k: repos[FQRN][k] for k in ("default_lifetime_s", "max_lifetime_s", "allow_never",
                                        "quota_bytes")} == {
        "default_lifetime_s": 3600, "max_lifetime_s": 14 * 86400, "allow_never": True,
        "quota_bytes": 10 * 1024**3}
    # unset: absent, so the runtime's defaults apply
    assert not {"default_lifetime_s", "max_lifetime_s", "allow_never",
                "quota_bytes"} & set(repos["nightly.example.org"])


def test_kubernetes_upload_service_gets_the_retention_fields():
    p = run_program(with_retention(kubernetes_config))
    envs = {}
    for r in p.of_type("kubernetes:apps/v1:Deployment"):
        for c in r.inputs["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if e.get("name") == "CVMFS_EPHEMERAL_REPOSITORIES" and "value" in e:
                    envs[r.name] = e["value"]
    upload = [v for k, v in envs.items() if k.endswith("upload")]
    assert upload, sorted(envs)
    repos = runtime_repositories({"CVMFS_EPHEMERAL_REPOSITORIES": upload[0]})
    assert repos[FQRN]["quota_bytes"] == 10 * 1024**3 and repos[FQRN]["allow_never"] is True


def test_the_runtime_accepts_what_the_program_sets():
    """The JSON the program writes is what the runtime's settings load (and validate)."""
    from runtime.settings import Settings

    p = run_program(with_retention(docker_config))
    upload = p.get(CONTAINER, "cvmfs-test-upload").inputs
    env = dict(item.split("=", 1) for item in upload["envs"])
    rules = Settings(repositories=env["CVMFS_EPHEMERAL_REPOSITORIES"]).lifetimes(FQRN)
    assert (rules.default_s, rules.max_s, rules.allow_never, rules.quota_bytes) == (
        3600, 14 * 86400, True, 10 * 1024**3)


@pytest.mark.parametrize("repo, key, phrase", [
    ({"quotaBytes": 0}, "cvmfs-ephemeral:repositories[0].quotaBytes", "greater than 0"),
    ({"maxLifetimeS": -1}, "cvmfs-ephemeral:repositories[0].maxLifetimeS", "greater than 0"),
    ({"allowNever": "sometimes"}, "cvmfs-ephemeral:repositories[0].allowNever", "boolean"),
    ({"defaultLifetimeS": 10, "maxLifetimeS": 5}, "cvmfs-ephemeral:repositories[0]",
     "defaultLifetimeS must not exceed maxLifetimeS"),
    ({"maxLifetimeS": 60}, "cvmfs-ephemeral",
     "repositories[0] (ci.example.org): default lifetime 7200 s exceeds the maximum lifetime 60 s"),
])
def test_bad_retention_values_name_the_key(repo, key, phrase):
    raw = docker_config(repositories=[{"fqrn": FQRN, **repo}, {"fqrn": "nightly.example.org"}])
    with pytest.raises(ConfigError) as info:
        parse_stack_config({k: v if isinstance(v, str) else json.dumps(v)
                            for k, v in raw.items()},
                           {"tokens", "maintenanceToken", "importedKeys"})
    message = str(info.value)
    assert key in message and phrase in message, message
