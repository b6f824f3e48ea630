"""Secrets stay secret: in resource inputs, in stack outputs, and never in env or labels."""

from __future__ import annotations

import json

import pytest

from conftest import ADMIN_TOKEN, FQRN, SCOPED_TOKEN, UPLOAD_TOKEN, docker_config, kubernetes_config
from harness import is_secret, redacted, rsa_key_pems, run_program, self_signed_pem


def imported_keys() -> dict:
    master, _ = rsa_key_pems("imported-master")
    repo, _ = rsa_key_pems("imported-repository")
    cert = self_signed_pem(repo, f"{FQRN} CernVM-FS Release Managers", 24)
    return {FQRN: {"masterKey": master, "repositoryKey": repo, "certificate": cert}}


def private_values(program) -> list[str]:
    """Every credential value the program handled: tokens and private key PEMs."""
    values = [UPLOAD_TOKEN, SCOPED_TOKEN, ADMIN_TOKEN]
    for r in program:
        if r.type == "random:index/randomPassword:RandomPassword":
            import hashlib

            values.append(hashlib.sha256(r.name.encode()).hexdigest()[:48])
        if r.type == "tls:index/privateKey:PrivateKey":
            values.append(rsa_key_pems(r.name)[0])
    for spec in imported_keys().values():
        values += [spec["masterKey"], spec["repositoryKey"]]
    # Match on a distinctive inner line of each PEM, so re-wrapped text is caught too.
    return [v.splitlines()[1] if v.startswith("-----") else v for v in values]


PROGRAMS = {
    "docker": lambda: run_program(docker_config(importedKeys=imported_keys())),
    "kubernetes": lambda: run_program(kubernetes_config(importedKeys=imported_keys())),
    "docker-generated": lambda: run_program(
        {k: v for k, v in docker_config().items() if k not in ("tokens", "maintenanceToken")}
    ),
}


@pytest.fixture(scope="module", params=sorted(PROGRAMS))
def program(request):
    return PROGRAMS[request.param]()


def test_no_credential_in_any_plain_input_or_output(program):
    """Redact every secret-marked value; no credential may remain anywhere in the plain rest."""
    plain_text = json.dumps([redacted(r.raw) for r in program] + [redacted(program.outputs_raw)])
    leaks = [v[:12] for v in private_values(program) if v in plain_text]
    assert not leaks, f"credentials readable outside secrets: {leaks}"
    # And they really were used somewhere (secret): the check above is not vacuous.
    secret_text = json.dumps([r.inputs for r in program])
    assert any(v in secret_text for v in private_values(program))


def test_env_and_labels_hold_no_secret(program):
    for r in program:
        inputs = r.raw
        if r.type == "docker:index/container:Container":
            for item in inputs.get("envs", []) + inputs.get("labels", []):
                assert not is_secret(item), r.name
            for item in inputs.get("envs", []):
                assert "TOKEN=" not in item, item  # CVMFS_EPHEMERAL_TOKEN never as a value
        if r.type.startswith("kubernetes:"):
            text = json.dumps(inputs.get("metadata", {}).get("labels", {}))
            assert "[secret]" not in text
            spec = json.dumps(r.inputs.get("spec", {}))
            for value in private_values(program):
                assert value not in spec, r.name  # no credential inline in a pod spec
            for c in _containers(r.inputs):
                for e in c.get("env", []):
                    if e["name"] == "CVMFS_EPHEMERAL_TOKEN":
                        assert "value" not in e and "secretKeyRef" in e["valueFrom"]


def _containers(inputs: dict) -> list[dict]:
    spec = inputs.get("spec") or {}
    if "jobTemplate" in spec:
        spec = spec["jobTemplate"]["spec"]
    pod = (spec.get("template") or {}).get("spec") or {}
    return pod.get("containers", [])


def test_secret_inputs_are_marked(program):
    """Private files are secret inputs; public ones (.pub, .crt) may be plain."""
    checked = 0
    for r in program:
        if r.type == "docker:index/container:Container":
            for upload in r.raw.get("uploads", []):
                if upload["file"].endswith((".key", ".masterkey", "/tokens", "/token")):
                    assert is_secret(upload["content"]), upload["file"]
                    checked += 1
        if r.type == "kubernetes:core/v1:Secret":
            data = r.raw["stringData"]
            assert is_secret(data) or all(is_secret(v) for v in data.values()), r.name
            checked += 1
    assert checked >= 3


def test_outputs_secret_and_plain(program):
    raw = program.outputs_raw
    assert is_secret(raw["uploadTokens"])
    assert not is_secret(raw["publicKeys"]) and not is_secret(raw["publicKeys"][FQRN])
    assert not is_secret(raw["clientConfigs"][FQRN])
    assert not is_secret(raw["endpoints"])


def test_imported_keys_are_used():
    program = run_program(docker_config(importedKeys=imported_keys()))
    assert not [r for r in program if r.type.startswith("tls:") and FQRN in r.name]
    # The other repository still gets generated keys.
    assert [r for r in program if r.type.startswith("tls:") and "nightly" in r.name]
    from cryptography.hazmat.primitives import serialization

    master = serialization.load_pem_private_key(
        imported_keys()[FQRN]["masterKey"].encode(), password=None
    )
    expected = master.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assert program.outputs["publicKeys"][FQRN] == expected
