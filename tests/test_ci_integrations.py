"""The GitHub Action (``action.yml``) and the GitLab CI template (``ci/gitlab/``): linted
against their platforms' documented syntax (a strict schema, jsonschema), checked for script
injection and token leaks, and their scripts run for real against a live server and a local
issuer, in the environment each platform gives a job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.live_server import live_server
from tests.oidc_issuer import AUDIENCE, REQUEST_TOKEN, gitlab_claims, running_issuer
from tests.uploadkit import FQRN, settings

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
ACTION = ROOT / "action.yml"
GITLAB = ROOT / "ci" / "gitlab" / "cvmfs-ephemeral.yml"
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def schema_errors(document: dict, schema: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads((SCHEMAS / schema).read_text()))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def test_the_schemas_refuse_what_the_platforms_refuse():
    """The lint can fail: a run step without a shell, an unknown key, id_tokens without aud."""
    action = load(ACTION)
    no_shell = json.loads(json.dumps(action))
    del no_shell["runs"]["steps"][0]["shell"]
    assert schema_errors(no_shell, "github-action.schema.json")
    assert schema_errors({**action, "permissions": {}}, "github-action.schema.json")
    template = load(GITLAB)
    job = next(iter(template))
    assert schema_errors({job: {**template[job], "id_tokens": {"T": {}}}},
                         "gitlab-ci-template.schema.json")


def test_the_action_is_valid_composite_metadata_without_injection():
    action = load(ACTION)
    assert schema_errors(action, "github-action.schema.json") == []
    inputs = action["inputs"]
    assert {"url", "repo", "name", "path", "ttl", "unpack", "wait-visible", "token",
            "audience"} <= set(inputs)
    assert [k for k, v in inputs.items() if v.get("required")] == ["url", "repo", "path"]
    text = ACTION.read_text()
    for expr in EXPR.findall(json.dumps(action)):  # expressions in values, not in comments
        kind, _, name = expr.partition(".")
        assert kind in ("inputs", "steps"), expr
        if kind == "inputs":
            assert name in inputs, f"undeclared input {name}"
    for step in action["runs"]["steps"]:
        # an expression inside run: is spliced into the script text (script injection)
        assert "${{" not in step.get("run", ""), step["name"]
    assert "id-token: write" in text  # documents the permission the job needs


def test_the_gitlab_template_is_valid_and_asks_for_an_id_token():
    template = load(GITLAB)
    assert schema_errors(template, "gitlab-ci-template.schema.json") == []
    job = template[".cvmfs-ephemeral-upload"]
    assert job["id_tokens"] == {"CVMFS_EPHEMERAL_ID_TOKEN": {"aud": "$CVMFS_EPHEMERAL_AUDIENCE"}}
    script = "\n".join(job["script"])
    assert "CVMFS_EPHEMERAL_ID_TOKEN" in script
    for line in script.splitlines():  # the token is never printed nor on a command line
        assert not ("ID_TOKEN" in line and re.search(r"\b(echo|curl)\b", line)), line


@pytest.fixture
def world(tmp_path):
    with running_issuer() as gh, running_issuer() as gl:
        trust = json.dumps([
            {"issuer": gh.url, "audience": AUDIENCE, "policies": [
                {"claims": {"repository": "octo-org/app"}, "repository": FQRN,
                 "prefix": "gh+{repository_id}+"}]},
            {"issuer": gl.url, "audience": AUDIENCE, "policies": [
                {"claims": {"project_path": "group/sub/app", "ref_protected": "true"},
                 "repository": FQRN, "prefix": "gl+{project_id}+"}]}])
        with live_server(settings(tmp_path / "srv", tokens="", oidc=trust)) as srv:
            dist = tmp_path / "dist"
            (dist / "bin").mkdir(parents=True)
            (dist / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
            (dist / "README").write_text("hello\n")
            yield gh, gl, srv, dist


def expand(value: str, inputs: dict[str, str]) -> str:
    """GitHub's ``${{ inputs.x }}`` in the step's env (the only expressions used there)."""
    return EXPR.sub(lambda m: inputs[m.group(1).removeprefix("inputs.")], value)


def test_the_action_upload_step_publishes_with_the_runner_identity(world, tmp_path):
    gh, _gl, srv, dist = world
    action = load(ACTION)
    step = next(s for s in action["runs"]["steps"] if s.get("id") == "upload")
    inputs = {k: v.get("default", "") for k, v in action["inputs"].items()}
    inputs.update(url=srv.url, repo=FQRN, path=str(dist), name="gh+123456+dist",
                  ttl="3600", audience=AUDIENCE, **{"wait-visible": "true"})
    runner_temp = tmp_path / "runner"
    (runner_temp / "cvmfs-ephemeral-client" / "bin").mkdir(parents=True)
    # what the install step makes: a Python with the client installed (this checkout)
    python = runner_temp / "cvmfs-ephemeral-client" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    out, summary = tmp_path / "github_output", tmp_path / "summary"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_EPHEMERAL_")}
    env.update({k: expand(str(v), inputs) for k, v in step["env"].items()})
    env.update(RUNNER_TEMP=str(runner_temp), GITHUB_OUTPUT=str(out),
               GITHUB_STEP_SUMMARY=str(summary),
               ACTIONS_ID_TOKEN_REQUEST_URL=f"{gh.url}/token?api-version=2.0",
               ACTIONS_ID_TOKEN_REQUEST_TOKEN=REQUEST_TOKEN)
    res = subprocess.run([step["shell"], "-c", step["run"]], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert outputs["path"] == f"/cvmfs/{FQRN}/gh+123456+dist"
    assert int(outputs["revision"]) == srv.repositories[FQRN].revision()
    assert gh.token_requests[-1]["audience"] == AUDIENCE
    assert srv.repositories[FQRN].artifact("gh+123456+dist").files == 2
    assert "eyJ" not in res.stdout + res.stderr + summary.read_text()


def test_the_gitlab_template_script_publishes_with_the_job_id_token(world, tmp_path):
    _gh, gl, srv, dist = world
    job = load(GITLAB)[".cvmfs-ephemeral-upload"]
    token = gl.sign(gitlab_claims(gl.url))
    work = tmp_path / "job"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_EPHEMERAL_")}
    env.update({k: str(v) for k, v in job["variables"].items()})
    env.update(CVMFS_EPHEMERAL_URL=srv.url, CVMFS_EPHEMERAL_REPO=FQRN,
               CVMFS_EPHEMERAL_PATH=str(dist), CVMFS_EPHEMERAL_NAME="gl+4242+dist",
               CVMFS_EPHEMERAL_WAIT_VISIBLE="true", CVMFS_EPHEMERAL_ID_TOKEN=token,
               TMPDIR=str(tmp_path))
    res = subprocess.run(["sh", "-c", "\n".join(job["script"])], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"published /cvmfs/{FQRN}/gl+4242+dist (revision" in res.stdout
    assert (work / "cvmfs-ephemeral.env").read_text() == \
        f"CVMFS_EPHEMERAL_PUBLISHED_PATH=/cvmfs/{FQRN}/gl+4242+dist\n"
    assert srv.repositories[FQRN].artifact("gl+4242+dist").files == 2
    assert token not in res.stdout + res.stderr
    assert not list(tmp_path.glob("*.hdr"))  # the header file holding the token is removed
    # outside the namespace: curl fails the job with the server's one-line reason
    env["CVMFS_EPHEMERAL_NAME"] = "elsewhere"
    bad = subprocess.run(["sh", "-c", "\n".join(job["script"])], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "must start with 'gl+4242+'" in bad.stdout + bad.stderr
