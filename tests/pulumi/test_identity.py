"""Identity in the Pulumi program: separate maintenance and upload tokens with roles and
scopes, a tokens file holding hashes only (read back by the runtime's own loader), the scopes
as plain stack outputs, and the OIDC trust configuration passed to the upload service."""

from __future__ import annotations

import hashlib
import json

import pytest

from components.config import ConfigError, parse_stack_config
from conftest import ADMIN_TOKEN, FQRN, SCOPED_TOKEN, UPLOAD_TOKEN, docker_config
from harness import is_secret, run_program

NIGHTLY = "nightly.example.org"


def _line(label: str, role: str, secret: str, **scope: str) -> str:
    return json.dumps({"label": label, "role": role, **scope,
                       "sha256": hashlib.sha256(secret.encode()).hexdigest()}, sort_keys=True)


#: What the program writes for conftest's tokens (docker_config / kubernetes_config).
EXPECTED_TOKENS_FILE = "\n".join([
    _line("maintenance", "admin", ADMIN_TOKEN),
    _line("upload-1", "upload", UPLOAD_TOKEN),
    _line("upload-2", "upload", SCOPED_TOKEN, repository=NIGHTLY),
]) + "\n"

GITHUB = {
    "issuer": "https://token.actions.githubusercontent.com", "audience": "https://cvmfs.example.org",
    "policies": [{"name": "app", "claims": {"repository": "octo-org/app", "ref": "refs/heads/*"},
                  "repository": FQRN, "prefix": "gh+{repository_id}+", "maxTtlS": 86400}],
}
GITLAB = {
    "issuer": "https://gitlab.example.org", "audience": "https://cvmfs.example.org",
    "name": "gitlab",
    "policies": [{"claims": {"project_path": "group/app", "ref_protected": "true"},
                  "repository": NIGHTLY, "prefix": "gl+{project_id}+", "quotaBytes": 10**10}],
}


def upload_env(program) -> dict[str, str]:  # type: ignore[no-untyped-def]
    container = program.get("docker:index/container:Container", "cvmfs-test-upload")
    return dict(item.split("=", 1) for item in container.inputs["envs"])


def test_the_runtime_reads_the_tokens_file_the_program_writes(docker_program, tmp_path):
    from runtime.auth.tokens import load_tokens, match
    from runtime.settings import Settings

    loader = docker_program.get("docker:index/container:Container", "cvmfs-test-upload-files")
    content = next(u["content"] for u in loader.inputs["uploads"] if u["file"].endswith("/tokens"))
    for secret in (ADMIN_TOKEN, UPLOAD_TOKEN, SCOPED_TOKEN):
        assert secret not in content
    path = tmp_path / "tokens"
    path.write_text(content)
    tokens = load_tokens(Settings(tokens_file=path))
    scopes = {s: (t.label, t.role, t.repository) for s in (ADMIN_TOKEN, UPLOAD_TOKEN, SCOPED_TOKEN)
              for t in [match(tokens, s)]}
    assert scopes == {ADMIN_TOKEN: ("maintenance", "admin", None),
                      UPLOAD_TOKEN: ("upload-1", "upload", None),
                      SCOPED_TOKEN: ("upload-2", "upload", NIGHTLY)}


def test_token_scopes_are_plain_outputs_and_secrets_stay_secret(docker_program):
    raw = docker_program.outputs_raw
    assert is_secret(raw["uploadTokens"])
    assert docker_program.outputs["tokenScopes"] == [
        {"label": "upload-1", "role": "upload"},
        {"label": "upload-2", "role": "upload", "repository": NIGHTLY},
    ]
    assert docker_program.outputs["maintenanceTokenScope"] == {"label": "maintenance", "role": "admin"}
    assert not is_secret(raw["tokenScopes"])


def test_labels_roles_and_prefixes_of_configured_tokens(tmp_path):
    p = run_program(docker_config(tokens=[
        {"token": UPLOAD_TOKEN, "label": "team-a", "repository": FQRN, "prefix": "team-a-"},
        {"token": SCOPED_TOKEN, "label": "nightly-ops", "role": "admin", "repository": NIGHTLY},
    ]))
    assert p.outputs["tokenScopes"] == [
        {"label": "team-a", "role": "upload", "repository": FQRN, "prefix": "team-a-"},
        {"label": "nightly-ops", "role": "admin", "repository": NIGHTLY},
    ]


def test_oidc_configuration_reaches_the_upload_service_and_the_runtime_accepts_it():
    from runtime.auth.policy import load_config

    p = run_program(docker_config(oidc={"issuers": [GITHUB, GITLAB]}))
    env = upload_env(p)
    config = load_config(env["CVMFS_EPHEMERAL_OIDC"])  # the runtime's own parser
    assert [i.issuer for i in config.issuers] == [GITHUB["issuer"], GITLAB["issuer"]]
    github = config.issuers[0].policies[0]
    assert (github.repository, github.prefix, github.max_ttl_s) == (FQRN, "gh+{repository_id}+", 86400)
    assert config.issuers[1].policies[0].quota_bytes == 10**10
    assert p.outputs["oidcIssuers"][1] == {
        "issuer": GITLAB["issuer"], "audience": GITLAB["audience"],
        "policies": [{"name": "", "repository": NIGHTLY, "prefix": "gl+{project_id}+"}]}
    assert "CVMFS_EPHEMERAL_OIDC" not in upload_env(run_program(docker_config()))


@pytest.mark.parametrize("oidc, message", [
    ({"issuers": [{**GITHUB, "issuer": "http://gitlab.example.org"}]}, "must be an https URL"),
    ({"issuers": [{**GITHUB, "policies": []}]}, "policies"),
    ({"issuers": [{**GITHUB, "policies": [{**GITHUB["policies"][0], "repository": "x.org"}]}]},
     "oidc.issuers[0].policies[0].repository 'x.org' is not in repositories"),
    ({"issuers": [{**GITHUB, "policies": [{**GITHUB["policies"][0], "role": "admin"}]}]}, "role"),
])
def test_bad_oidc_configuration_fails_preview_naming_the_key(oidc, message):
    raw = docker_config(oidc=oidc)
    with pytest.raises(ConfigError) as info:
        parse_stack_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()},
                           {"tokens", "maintenanceToken"})
    assert message in str(info.value)


def test_an_admin_token_cannot_have_a_prefix():
    raw = docker_config(tokens=[{"token": UPLOAD_TOKEN, "role": "admin", "prefix": "a-"}])
    with pytest.raises(ConfigError, match="admin token cannot have a prefix"):
        parse_stack_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()},
                           {"tokens", "maintenanceToken"})


def test_kubernetes_passes_the_oidc_configuration_too():
    from conftest import kubernetes_config

    p = run_program(kubernetes_config(oidc={"issuers": [GITLAB]}))
    deployment = p.get("kubernetes:apps/v1:Deployment", "cvmfs-test-upload")
    containers = deployment.inputs["spec"]["template"]["spec"]["containers"]
    upload = next(c for c in containers if c["name"] == "upload")
    env = {e["name"]: e.get("value") for e in upload.get("env", [])}
    assert json.loads(env["CVMFS_EPHEMERAL_OIDC"])["issuers"][0]["issuer"] == GITLAB["issuer"]
