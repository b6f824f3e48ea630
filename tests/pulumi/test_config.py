"""Stack configuration: valid configs load, bad ones fail with one message naming the key."""

from __future__ import annotations

import json

import pytest

from components.config import ConfigError, parse_stack_config
from components.schedule import parse_cron
from conftest import docker_config, kubernetes_config
from harness import run_program

SECRETS = {"tokens", "maintenanceToken", "importedKeys"}


def parse(raw: dict, secret: set[str] = SECRETS):
    return parse_stack_config(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, secret
    )


def test_example_configs_load():
    assert parse(docker_config()).target == "docker"
    k8s = parse(kubernetes_config())
    assert k8s.namespace == "cvmfs"
    assert k8s.kubernetes.ingress.host == "cvmfs.example.org"


def test_stack_files_in_repo_are_valid():
    """Pulumi.dev.yaml and the Kubernetes example must load as they are shipped."""
    import yaml

    from harness import REPO_ROOT

    for name in ("Pulumi.dev.yaml", "Pulumi.k8s-example.yaml"):
        stack = yaml.safe_load((REPO_ROOT / name).read_text())["config"]
        raw = {k.split(":", 1)[1]: v for k, v in stack.items() if k.startswith("cvmfs-ephemeral:")}
        config = parse(raw, set())
        assert config.repositories, name


def test_defaults():
    config = parse({"target": "docker", "repositories": [{"fqrn": "ci.example.org"}]})
    repo = config.repositories[0]
    assert (repo.ttl_s, repo.compression, repo.volatile, repo.garbage_collectable) == (
        60, "none", True, True,
    )
    assert config.ports.stratum0 == 8000 and config.ports.upload == 8080
    assert config.ports.gateway == 4929
    assert config.schedules.interval_s("clean") == 60
    assert config.schedules.interval_s("gc") == 3600
    assert config.schedules.interval_s("resign") == 86400
    assert config.docker.bind_address == "127.0.0.1"


@pytest.mark.parametrize(
    ("change", "key", "phrase"),
    [
        ({"target": "nomad"}, "cvmfs-ephemeral:target", "'docker' or 'kubernetes'"),
        ({"repositories": [{"fqrn": "nodot"}]}, "cvmfs-ephemeral:repositories[0].fqrn",
         "invalid repository name 'nodot'"),
        ({"repositories": [{"fqrn": "Upper.Example.org"}]},
         "cvmfs-ephemeral:repositories[0].fqrn", "invalid repository name"),
        ({"repositories": [{"fqrn": "a.example.org"}, {"fqrn": "b.example.org", "ttlS": 0}]},
         "cvmfs-ephemeral:repositories[1].ttlS", "greater than 0"),
        ({"repositories": [{"fqrn": "a.example.org", "ttlS": -5}]},
         "cvmfs-ephemeral:repositories[0].ttlS", "greater than 0"),
        ({"repositories": [{"fqrn": "a.example.org", "compression": "zstd"}]},
         "cvmfs-ephemeral:repositories[0].compression", "'none' or 'zlib'"),
        ({"repositories": [{"fqrn": "a.example.org", "ttl": 5}]},
         "cvmfs-ephemeral:repositories[0].ttl", "unknown key"),
        ({"repositories": []}, "cvmfs-ephemeral:repositories", "at least 1"),
        ({"repositories": [{"fqrn": "a.example.org"}, {"fqrn": "a.example.org"}]},
         "cvmfs-ephemeral", "repository configured twice: a.example.org"),
        ({"schedules": {"gc": "61 * * * *"}}, "cvmfs-ephemeral:schedules.gc",
         "minute: 61 is outside 0-59"),
        ({"schedules": {"clean": "every minute"}}, "cvmfs-ephemeral:schedules.clean",
         "must have 5 fields"),
        ({"schedules": {"resign": "0 0 31 2 *"}}, "cvmfs-ephemeral:schedules.resign",
         "never fires"),
        ({"schedules": {"gc": "*/0 * * * *"}}, "cvmfs-ephemeral:schedules.gc", "bad step"),
        ({"ports": {"upload": 70000}}, "cvmfs-ephemeral:ports.upload", "less than or equal"),
        ({"ports": {"upload": 4929}}, "cvmfs-ephemeral:ports", "must differ"),
        ({"storage": {"kind": "nfs"}}, "cvmfs-ephemeral:storage.kind",
         "'persistent' or 'ephemeral'"),
        ({"storage": {"size": "lots"}}, "cvmfs-ephemeral:storage.size", "not a size"),
        ({"resources": {"upload": {"memoryLimit": "1 GB"}}},
         "cvmfs-ephemeral:resources.upload.memoryLimit", "not a quantity"),
        ({"publicUrl": "cvmfs.example.org"}, "cvmfs-ephemeral:publicUrl", "not an http(s) URL"),
        ({"name": "Bad_Name"}, "cvmfs-ephemeral:name", "not a valid name"),
        ({"tokens": [{"token": "short"}]}, "cvmfs-ephemeral:tokens[0].token",
         "at least 16 characters"),
        ({"tokens": [{"token": "x" * 20, "repository": "other.example.org"}]},
         "cvmfs-ephemeral", "tokens[0].repository 'other.example.org' is not in repositories"),
        ({"limits": {"defaultTtlS": 10, "maxTtlS": 5}}, "cvmfs-ephemeral:limits",
         "defaultTtlS must not exceed maxTtlS"),
        ({"signing": {"whitelistValidityDays": 10, "resignBelowDays": 10}},
         "cvmfs-ephemeral:signing", "resignBelowDays must be less"),
        ({"kubernetes": {"namespace": "Not_OK"}}, "cvmfs-ephemeral:kubernetes.namespace",
         "not a namespace name"),
        ({"logLevel": "verbose"}, "cvmfs-ephemeral:logLevel", "'debug'"),
        ({"frobnicate": True}, "cvmfs-ephemeral:frobnicate", "unknown key"),
    ],
)
def test_bad_config_names_the_key(change, key, phrase):
    raw = docker_config(**change)
    with pytest.raises(ConfigError) as info:
        parse(raw)
    message = str(info.value)
    assert message.startswith("invalid stack configuration: ")
    assert f"{key}:" in message, message
    assert phrase in message, message
    assert "\n" not in message


def test_credentials_must_be_secret_config():
    raw = docker_config()
    with pytest.raises(ConfigError) as info:
        parse(raw, secret={"maintenanceToken"})
    assert "cvmfs-ephemeral:tokens: holds credentials" in str(info.value)
    assert "pulumi config set --secret" in str(info.value)
    # The message must not echo the credential back.
    assert "upload-token-0123456789abcdef" not in str(info.value)


def test_bad_config_fails_the_program_run():
    """Under Pulumi (mocked engine) a bad config stops the program before any resource."""
    import pulumi

    with pytest.raises(pulumi.RunError, match=r"cvmfs-ephemeral:repositories\[0\]\.ttlS"):
        run_program(docker_config(repositories=[{"fqrn": "ci.example.org", "ttlS": 0}]))


def test_imported_keys_must_match(tmp_path):
    from harness import rsa_key_pems, self_signed_pem

    master, _ = rsa_key_pems("import-master")
    repo_key, _ = rsa_key_pems("import-repo")
    other, _ = rsa_key_pems("import-other")
    cert = self_signed_pem(other, "x", 24)
    raw = docker_config(
        importedKeys={"ci.example.org": {
            "masterKey": master, "repositoryKey": repo_key, "certificate": cert,
        }}
    )
    import pulumi

    with pytest.raises(pulumi.RunError) as info:
        run_program(raw)
    assert "cvmfs-ephemeral:importedKeys.ci.example.org.certificate: does not belong" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("expression", "interval"),
    [
        ("* * * * *", 60),
        ("*/5 * * * *", 300),
        ("0 * * * *", 3600),
        ("17 */2 * * *", 7200),
        ("43 3 * * *", 86400),
        ("@hourly", 3600),
        ("@daily", 86400),
        ("0 0 * * 0", 7 * 86400),
        ("0 0 * * mon-fri", round(364 * 86400 / 260)),
    ],
)
def test_cron_interval_for_docker_scheduler(expression, interval):
    assert parse_cron(expression).average_interval_s() == interval


def test_cron_day_of_month_or_day_of_week():
    cron = parse_cron("0 0 1 * 1")  # the 1st of the month OR Mondays (cron's OR rule)
    import datetime as dt

    assert cron.fires_on(dt.date(2024, 1, 1))  # a Monday and the 1st
    assert cron.fires_on(dt.date(2024, 1, 8))  # a Monday
    assert cron.fires_on(dt.date(2024, 2, 1))  # a Thursday, the 1st
    assert not cron.fires_on(dt.date(2024, 1, 9))
