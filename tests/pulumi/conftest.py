"""Fixtures for the Pulumi program tests: stack configs and mocked program runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REPO_ROOT = HERE.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from harness import Program, run_program  # noqa: E402

FQRN = "ci.example.org"
UPLOAD_TOKEN = "upload-token-0123456789abcdef"
SCOPED_TOKEN = "scoped-token-fedcba9876543210"
ADMIN_TOKEN = "admin-token-00112233445566778899"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs a Docker engine and builds images (minutes)"
    )


def docker_config(**overrides) -> dict:
    config = {
        "target": "docker",
        "name": "cvmfs-test",
        "repositories": [
            {"fqrn": FQRN, "ttlS": 60, "compression": "zlib"},
            {"fqrn": "nightly.example.org", "ttlS": 300, "chunkSize": 16 * 1024 * 1024},
        ],
        "tokens": [
            {"token": UPLOAD_TOKEN},
            {"token": SCOPED_TOKEN, "repository": "nightly.example.org"},
        ],
        "maintenanceToken": ADMIN_TOKEN,
        "ports": {"stratum0": 18000, "upload": 18080, "gateway": 14929},
    }
    config.update(overrides)
    return config


def kubernetes_config(**overrides) -> dict:
    config = docker_config(target="kubernetes")
    config.pop("ports")
    config["image"] = {"repository": "registry.example.org/cvmfs-ephemeral", "push": True}
    config["kubernetes"] = {
        "namespace": "cvmfs",
        "ingress": {
            "host": "cvmfs.example.org",
            "className": "nginx",
            "tlsSecretName": "cvmfs-tls",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "0"},
        },
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def docker_program() -> Program:
    return run_program(docker_config())


@pytest.fixture(scope="session")
def kubernetes_program() -> Program:
    return run_program(kubernetes_config())
