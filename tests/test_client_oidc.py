"""``upload --oidc``: the CI client gets the job's identity token from the environment the
GitHub runner (or GitLab) sets up, and publishes with it; no stored secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live_server import live_server
from tests.oidc_issuer import AUDIENCE, REQUEST_TOKEN, gitlab_claims, running_issuer
from tests.uploadkit import FQRN, settings

ROOT = Path(__file__).resolve().parents[1]


def trust(github_url: str, gitlab_url: str) -> str:
    return json.dumps([
        {"issuer": github_url, "audience": AUDIENCE, "policies": [
            {"claims": {"repository": "octo-org/app", "ref": "refs/heads/main"},
             "repository": FQRN, "prefix": "gh+{repository_id}+"}]},
        {"issuer": gitlab_url, "audience": AUDIENCE, "policies": [
            {"claims": {"project_path": "group/sub/app"}, "repository": FQRN,
             "prefix": "gl+{project_id}+"}]},
    ])


@pytest.fixture
def world(tmp_path):
    with running_issuer() as gh, running_issuer() as gl, \
            live_server(settings(tmp_path / "srv", tokens="", oidc=trust(gh.url, gl.url))) as srv:
        artifact = tmp_path / "report.html"
        artifact.write_text("<h1>ok</h1>\n")
        yield gh, gl, srv, artifact


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("CVMFS_EPHEMERAL_", "ACTIONS_ID_TOKEN", "GITLAB"))}
    return subprocess.run([sys.executable, "-m", "runtime", "upload", *args], cwd=ROOT,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_oidc_github_uses_the_runner_token_endpoint_with_the_audience(world):
    gh, _gl, srv, artifact = world
    runner = {"ACTIONS_ID_TOKEN_REQUEST_URL": f"{gh.url}/token?api-version=2.0",
              "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN}
    res = cli(str(artifact), "--url", srv.url, "--repo", FQRN, "--name", "gh+123456+report",
              "--oidc", "github", "--audience", AUDIENCE, "--wait-visible", env=runner)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"/cvmfs/{FQRN}/gh+123456+report  revision ")
    assert gh.token_requests == [{"api-version": "2.0", "audience": AUDIENCE}]
    assert srv.repositories[FQRN].artifact("gh+123456+report").size == artifact.stat().st_size
    # outside the namespace the policy grants: refused, and the token is not printed
    out = cli(str(artifact), "--url", srv.url, "--repo", FQRN, "--name", "elsewhere",
              "--oidc", "auto", "--audience", AUDIENCE, env=runner)
    assert out.returncode == 1 and "403" in out.stderr and "eyJ" not in out.stderr + out.stdout


def test_the_default_audience_is_the_server_url(world):
    gh, _gl, srv, artifact = world
    runner = {"ACTIONS_ID_TOKEN_REQUEST_URL": f"{gh.url}/token?api-version=2.0",
              "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN}
    res = cli(str(artifact), "--url", srv.url + "/", "--repo", FQRN, "--name", "gh+123456+x",
              "--oidc", "github", env=runner)
    assert gh.token_requests[-1]["audience"] == srv.url
    assert res.returncode == 1 and "401" in res.stderr and "audience" in res.stderr


def test_oidc_gitlab_reads_the_id_tokens_variable(world):
    _gh, gl, srv, artifact = world
    token = gl.sign(gitlab_claims(gl.url))
    res = cli(str(artifact), "--url", srv.url, "--repo", FQRN, "--name", "gl+4242+report",
              "--oidc", "gitlab", env={"CVMFS_EPHEMERAL_ID_TOKEN": token})
    assert res.returncode == 0, res.stderr
    assert f"/cvmfs/{FQRN}/gl+4242+report" in res.stdout
    other = cli(str(artifact), "--url", srv.url, "--repo", FQRN, "--name", "gl+4242+b",
                "--oidc", "auto", "--id-token-var", "MY_TOKEN", env={"MY_TOKEN": token})
    assert other.returncode == 0, other.stderr


def test_a_job_without_an_identity_token_gets_a_usage_error(world):
    _gh, _gl, srv, artifact = world
    for provider, hint in (("github", "id-token: write"), ("gitlab", "id_tokens:"),
                           ("auto", "no identity token found")):
        res = cli(str(artifact), "--url", srv.url, "--repo", FQRN, "--oidc", provider, env={})
        assert res.returncode == 2 and hint in res.stderr, (provider, res.stderr)
    bad = cli(str(artifact), "--url", srv.url, "--repo", FQRN, "--oidc", "github",
              env={"ACTIONS_ID_TOKEN_REQUEST_URL": f"{_gh.url}/token",
                   "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"})
    assert bad.returncode == 2 and "answered 401" in bad.stderr
