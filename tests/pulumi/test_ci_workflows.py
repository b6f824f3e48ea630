"""The PR-review workflows (GitHub Actions, GitLab CI) are valid and do what README promises.

Syntax: each file is checked against the published JSON schema of its format, vendored in
check-jsonschema (offline). Meaning: preview on pull/merge requests with the diff posted for
review, `pulumi up` only on the main branch behind an approved environment, and a drift check
that fails on any change (``--expect-no-changes``).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from harness import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
PREVIEW = WORKFLOWS / "pulumi-preview.yml"
DEPLOY = WORKFLOWS / "pulumi-deploy.yml"
GITLAB = REPO_ROOT / ".gitlab-ci.yml"


def schema_check(schema: str, *paths) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )


def load(path) -> dict:
    data = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def pulumi_steps(job: dict) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions@")]


def test_github_workflows_match_the_schema():
    result = schema_check("vendor.github-workflows", PREVIEW, DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_ci_matches_the_schema():
    result = schema_check("vendor.gitlab-ci", GITLAB)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_mistake(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(PREVIEW.read_text().replace("runs-on:", "runs_on:", 1))
    assert schema_check("vendor.github-workflows", bad).returncode != 0


def test_preview_on_pull_requests_comments_the_diff():
    wf = load(PREVIEW)
    assert set(wf["on"]) == {"pull_request"}
    assert wf["permissions"] == {"contents": "read", "pull-requests": "write"}
    preview = wf["jobs"]["preview"]
    assert preview["needs"] == "test"
    (step,) = pulumi_steps(preview)
    assert step["with"]["command"] == "preview"
    assert step["with"]["comment-on-pr"] is True and step["with"]["diff"] is True
    # The program's tests gate the preview.
    test_steps = " ".join(s.get("run", "") for s in wf["jobs"]["test"]["steps"])
    assert "pytest" in test_steps and "tests/pulumi" in test_steps


def test_up_on_main_behind_an_environment_then_drift_check():
    wf = load(DEPLOY)
    assert wf["on"]["push"] == {"branches": ["main"]}
    assert "schedule" in wf["on"]
    assert wf["concurrency"]["cancel-in-progress"] is False
    up = wf["jobs"]["up"]
    assert up["environment"] == "production"
    (step,) = pulumi_steps(up)
    assert step["with"]["command"] == "up"
    drift = wf["jobs"]["drift"]
    assert drift["needs"] == "up"
    (step,) = pulumi_steps(drift)
    assert step["with"]["command"] == "preview" and step["with"]["expect-no-changes"] is True


@pytest.mark.parametrize("path", [PREVIEW, DEPLOY])
def test_actions_are_pinned_and_the_cli_version_matches_the_sdk(path):
    wf = load(path)
    for job in wf["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.search(r"@v[0-9]+$", step["uses"]), step["uses"]
    sdk = re.search(r"^pulumi==([0-9.]+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert wf["env"]["PULUMI_VERSION"] == sdk.group(1)


def test_gitlab_previews_merge_requests_and_gates_up():
    ci = yaml.safe_load(GITLAB.read_text())
    preview = ci["preview"]
    assert preview["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert any("pulumi preview --diff" in line for line in preview["script"])
    assert any("merge_requests/$CI_MERGE_REQUEST_IID/notes" in line for line in preview["script"])
    up = ci["up"]
    assert up["environment"] == {"name": "production"}
    assert {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"} in up["rules"]
    assert any("pulumi up --yes" in line for line in up["script"])
    assert any("--expect-no-changes" in line for line in ci["drift"]["script"])
    sdk = re.search(r"^pulumi==([0-9.]+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert ci["variables"]["PULUMI_VERSION"] == sdk.group(1)
