"""Docker target: every resource the program declares and its key properties."""

from __future__ import annotations

import json

import pytest

from components import contract
from components.image import image_tag
from conftest import ADMIN_TOKEN, FQRN, SCOPED_TOKEN, UPLOAD_TOKEN, docker_config
from harness import fake_digest, run_program
from test_identity import EXPECTED_TOKENS_FILE

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"


def files_volume(program, role: str) -> str:
    return program.get(VOLUME, f"cvmfs-test-{role}-files").inputs["name"]


def services(program):
    return [c for c in program.of_type(CONTAINER) if not c.name.endswith("-files")]


def loader_of(program, role: str):
    return program.get(CONTAINER, f"cvmfs-test-{role}-files")


def env_of(container) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.inputs["envs"])


def uploads_of(container) -> dict[str, dict]:
    return {u["file"]: u for u in container.raw.get("uploads", [])}


def test_resources(docker_program):
    p = docker_program
    assert p.names(CONTAINER) == [
        "cvmfs-test-gateway", "cvmfs-test-gateway-files", "cvmfs-test-maintenance",
        "cvmfs-test-maintenance-files", "cvmfs-test-stratum0", "cvmfs-test-upload",
        "cvmfs-test-upload-files",
    ]
    assert p.names(VOLUME) == [
        "cvmfs-test-data", "cvmfs-test-gateway-files", "cvmfs-test-maintenance-files",
        "cvmfs-test-upload-files",
    ]
    assert p.names("docker:index/network:Network") == ["cvmfs-test"]
    assert p.names("docker:index/image:Image") == ["cvmfs-test-image", "cvmfs-test-image-stratum0"]
    assert p.names("command:local:Command") == [
        "cvmfs-test-verify-ci.example.org", "cvmfs-test-verify-nightly.example.org",
    ]
    # No Kubernetes resource on the Docker target.
    assert not [r for r in p if r.type.startswith("kubernetes:")]


def test_component_types_and_parents(docker_program):
    p = docker_program
    components = {r.name: r for r in p if r.type.startswith("cvmfs-ephemeral:index:")}
    types = {r.type.split(":")[-1] for r in components.values()}
    assert types == {
        "Deployment", "RuntimeImage", "RepositoryKeys", "Stratum0", "Gateway", "UploadService",
        "MaintenanceJobs", "PostDeployCheck",
    }
    # Every custom resource hangs below the Deployment component.
    for r in p:
        if r.custom:
            assert "cvmfs-ephemeral:index:Deployment" in r.parent, (r.type, r.name, r.parent)
    container_parents = {r.name: r.parent.split("::")[-1] for r in services(p)}
    assert container_parents == {
        "cvmfs-test-stratum0": "cvmfs-test-stratum0",
        "cvmfs-test-gateway": "cvmfs-test-gateway",
        "cvmfs-test-upload": "cvmfs-test-upload",
        "cvmfs-test-maintenance": "cvmfs-test-maintenance",
    }


def test_image_build_is_content_tagged(docker_program):
    image = docker_program.get("docker:index/image:Image", "cvmfs-test-image").inputs
    assert image["imageName"] == f"cvmfs-ephemeral:{image_tag()}"
    assert image["build"]["context"] == "."
    assert image["build"]["dockerfile"] == "Dockerfile"
    assert image["build"]["args"] == {"BASE_IMAGE": "cvmfs-ephemeral-base:bookworm"}
    assert image["build"]["target"] == "runtime"
    assert image["skipPush"] is True
    stratum0 = docker_program.get("docker:index/image:Image", "cvmfs-test-image-stratum0").inputs
    assert stratum0["build"]["target"] == "stratum0"
    assert stratum0["imageName"] == f"cvmfs-ephemeral-stratum0:{image_tag(target='stratum0')}"
    # Containers run the image id the engine has for the built tag, not the (mutable) tag.
    pinned = docker_program.get(REMOTE_IMAGE, "cvmfs-test-runtime-image").inputs
    assert pinned["name"] == image["imageName"] and pinned["keepLocally"] is True
    pinned_s0 = docker_program.get(REMOTE_IMAGE, "cvmfs-test-stratum0-image").inputs
    assert pinned_s0["name"] == stratum0["imageName"]
    for c in docker_program.of_type(CONTAINER):
        expected = stratum0["imageName"] if c.name == "cvmfs-test-stratum0" else image["imageName"]
        assert c.inputs["image"] == fake_digest(expected), c.name


def test_common_hardening(docker_program):
    for c in services(docker_program):
        i = c.inputs
        assert i["user"] == "10001:10001", c.name
        assert i["readOnly"] is True
        assert i["tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}
        assert i["capabilities"] == {"drops": ["ALL"]}
        assert i["securityOpts"] == ["no-new-privileges:true"]
        assert i.get("privileged") is False
        assert i["restart"] == "unless-stopped"
        assert i["networksAdvanced"][0]["name"] == "cvmfs-test"
        assert i["mustRun"] is True
        assert not i.get("uploads")  # Docker refuses uploads into a read-only root filesystem


def test_file_loaders(docker_program):
    """Key and token files reach a volume through a created-but-never-started container."""
    for role in ("upload", "gateway", "maintenance"):
        loader = loader_of(docker_program, role)
        i = loader.inputs
        assert i["command"] == ["true"]
        assert i["start"] is False and i["mustRun"] is False
        assert i["networkMode"] == "none"
        assert i["user"] == "10001:10001"
        assert i["capabilities"] == {"drops": ["ALL"]}
        volume = files_volume(docker_program, role)
        assert volume.startswith(f"cvmfs-test-{role}-files-")
        assert i["volumes"] == [{"volumeName": volume,
                                 "containerPath": "/etc/cvmfs-ephemeral", "readOnly": False}]
        service = docker_program.get(CONTAINER, f"cvmfs-test-{role}")
        assert {"volumeName": volume, "containerPath": "/etc/cvmfs-ephemeral",
                "readOnly": True} in service.inputs["volumes"]
        assert {"label": "io.cvmfs-ephemeral.files", "value": f"cvmfs-test-{role}-files-id"} in (
            service.inputs["labels"]
        )
        assert any(d.endswith(f"::cvmfs-test-{role}-files") for d in service.depends_on)


def test_stratum0(docker_program):
    c = docker_program.get(CONTAINER, "cvmfs-test-stratum0").inputs
    assert c["command"] == ["nginx", "-c", "/etc/nginx/stratum0.conf"]
    assert c["networksAdvanced"][0]["aliases"] == ["stratum0"]
    assert c["ports"] == [{"internal": 8000, "external": 18000, "ip": "127.0.0.1", "protocol": "tcp"}]
    assert c["volumes"] == [
        {"volumeName": "cvmfs-test-data", "containerPath": "/var/lib/cvmfs-ephemeral", "readOnly": True}
    ]
    assert not c.get("uploads")
    assert c["healthcheck"]["tests"] == ["CMD", "cvmfs-ephemeral-healthcheck", "8000"]
    assert c["wait"] is True
    assert c.get("envs", []) == []
    assert c["memory"] == 128


def test_upload_service(docker_program):
    container = docker_program.get(CONTAINER, "cvmfs-test-upload")
    c = container.inputs
    assert c["command"] == [
        "python", "-m", "runtime", "serve", "--role", "upload", "--host", "0.0.0.0", "--port", "8080",
    ]
    assert c["ports"] == [{"internal": 8080, "external": 18080, "ip": "127.0.0.1", "protocol": "tcp"}]
    assert c["networksAdvanced"][0]["aliases"] == ["upload"]
    env = env_of(container)
    assert env == {
        "CVMFS_EPHEMERAL_DATA_DIR": "/var/lib/cvmfs-ephemeral",
        "CVMFS_EPHEMERAL_KEYS_DIR": "/etc/cvmfs-ephemeral/keys",
        "CVMFS_EPHEMERAL_REPOSITORIES": env["CVMFS_EPHEMERAL_REPOSITORIES"],
        "CVMFS_EPHEMERAL_TOKENS_FILE": "/etc/cvmfs-ephemeral/secrets/tokens",
        "CVMFS_EPHEMERAL_GATEWAY_URL": "http://gateway:4929/api/v1",
        "CVMFS_EPHEMERAL_PUBLIC_URL": "http://localhost:18000",
        "CVMFS_EPHEMERAL_MAX_ARTIFACT_BYTES": str(4 * 1024**3),
        "CVMFS_EPHEMERAL_DEFAULT_TTL_S": "7200",
        "CVMFS_EPHEMERAL_MAX_TTL_S": str(30 * 86400),
        "CVMFS_EPHEMERAL_WHITELIST_VALIDITY_DAYS": "30",
        "CVMFS_EPHEMERAL_RESIGN_BELOW_DAYS": "20",
        "CVMFS_EPHEMERAL_SCHEDULER": "false",
        "CVMFS_EPHEMERAL_LOG_LEVEL": "info",
    }
    assert json.loads(env["CVMFS_EPHEMERAL_REPOSITORIES"]) == [
        {"fqrn": FQRN, "ttl_s": 60, "compression": "zlib", "chunk_size": 8 * 1024 * 1024,
         "volatile": True, "garbage_collectable": True},
        {"fqrn": "nightly.example.org", "ttl_s": 300, "compression": "none",
         "chunk_size": 16 * 1024 * 1024, "volatile": True, "garbage_collectable": True},
    ]
    assert c["volumes"] == [
        {"volumeName": "cvmfs-test-data", "containerPath": "/var/lib/cvmfs-ephemeral", "readOnly": False},
        {"volumeName": files_volume(docker_program, "upload"), "containerPath": "/etc/cvmfs-ephemeral",
         "readOnly": True},
    ]
    loader = loader_of(docker_program, "upload")
    uploads = uploads_of(loader)
    expected = {
        f"/etc/cvmfs-ephemeral/keys/{fqrn}{suffix}"
        for fqrn in (FQRN, "nightly.example.org")
        for suffix in (".key", ".crt", ".masterkey", ".pub")
    } | {"/etc/cvmfs-ephemeral/secrets/tokens"}
    assert set(uploads) == expected
    for upload in uploads.values():
        assert upload["owner"] == "10001" and upload["group"] == "10001"
        assert upload["permissions"] == "0400"
    tokens = loader.inputs["uploads"]
    tokens_file = next(u["content"] for u in tokens if u["file"].endswith("/tokens"))
    assert tokens_file == EXPECTED_TOKENS_FILE  # hashes only (tests/pulumi/test_identity.py)
    key = next(u["content"] for u in tokens if u["file"].endswith(f"{FQRN}.key"))
    assert key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    pub = next(u["content"] for u in tokens if u["file"].endswith(f"{FQRN}.pub"))
    assert pub.startswith("-----BEGIN PUBLIC KEY-----")
    assert c["healthcheck"]["tests"] == ["CMD", "cvmfs-ephemeral-healthcheck", "8080"]
    assert c["memory"] == 1024


def test_gateway(docker_program):
    container = docker_program.get(CONTAINER, "cvmfs-test-gateway")
    c = container.inputs
    assert c["command"] == [
        "python", "-m", "runtime", "serve", "--role", "gateway", "--host", "0.0.0.0", "--port", "4929",
    ]
    assert c["ports"] == [{"internal": 4929, "external": 14929, "ip": "127.0.0.1", "protocol": "tcp"}]
    env = env_of(container)
    assert env["CVMFS_EPHEMERAL_STRATUM0_URL"] == "http://stratum0:8000/cvmfs"
    assert env["CVMFS_EPHEMERAL_KEYS_DIR"] == "/etc/cvmfs-ephemeral/keys"
    assert "CVMFS_EPHEMERAL_TOKENS_FILE" not in env
    # Only public material reaches the gateway; no data volume.
    uploads = uploads_of(loader_of(docker_program, "gateway"))
    assert set(uploads) == {
        f"/etc/cvmfs-ephemeral/keys/{fqrn}{suffix}"
        for fqrn in (FQRN, "nightly.example.org")
        for suffix in (".pub", ".crt")
    }
    assert all(u["permissions"] == "0444" for u in uploads.values())
    assert [v["volumeName"] for v in c["volumes"]] == [files_volume(docker_program, "gateway")]


def test_maintenance_scheduler(docker_program):
    container = docker_program.get(CONTAINER, "cvmfs-test-maintenance")
    c = container.inputs
    assert c["command"] == ["python", "-m", "runtime", "schedule", "--url", "http://upload:8080"]
    assert env_of(container) == {
        "CVMFS_EPHEMERAL_CLEAN_INTERVAL_S": "60",
        "CVMFS_EPHEMERAL_GC_INTERVAL_S": "3600",
        "CVMFS_EPHEMERAL_RESIGN_INTERVAL_S": "86400",
        "CVMFS_EPHEMERAL_LOG_LEVEL": "info",
        "CVMFS_EPHEMERAL_TOKEN_FILE": "/etc/cvmfs-ephemeral/secrets/token",
    }
    assert not c.get("ports")
    assert c["healthcheck"] == {"tests": ["NONE"]}
    loader = loader_of(docker_program, "maintenance")
    uploads = uploads_of(loader)
    assert set(uploads) == {"/etc/cvmfs-ephemeral/secrets/token"}
    token = next(u["content"] for u in loader.inputs["uploads"])
    assert token == ADMIN_TOKEN


def test_schedules_become_intervals():
    p = run_program(docker_config(schedules={"clean": "*/5 * * * *", "gc": "0 */6 * * *",
                                             "resign": "0 4 * * 1"}))
    env = env_of(p.get(CONTAINER, "cvmfs-test-maintenance"))
    assert env["CVMFS_EPHEMERAL_CLEAN_INTERVAL_S"] == "300"
    assert env["CVMFS_EPHEMERAL_GC_INTERVAL_S"] == "21600"
    assert env["CVMFS_EPHEMERAL_RESIGN_INTERVAL_S"] == str(7 * 86400)


def test_data_volume_persistent_and_ephemeral(docker_program):
    data = docker_program.get(VOLUME, "cvmfs-test-data").inputs
    assert data["name"] == "cvmfs-test-data" and data["driver"] == "local"
    assert not data.get("driverOpts")
    p = run_program(docker_config(storage={"kind": "ephemeral", "size": "1Gi"}))
    data = p.get(VOLUME, "cvmfs-test-data").inputs
    assert data["driverOpts"] == {
        "type": "tmpfs", "device": "tmpfs", "o": f"size={2**30},uid=10001,gid=10001,mode=0750",
    }


def test_post_deploy_check(docker_program):
    p = docker_program
    check = p.get("command:local:Command", f"cvmfs-test-verify-{FQRN}")
    script = check.inputs["create"]
    assert (
        "-m runtime verify --url http://127.0.0.1:18000/cvmfs/ci.example.org "
        "--fqrn ci.example.org --public-key \"$key\""
    ) in script
    public_key = p.outputs["publicKeys"][FQRN]
    assert check.inputs["stdin"] == public_key
    # The runtime CLI runs with the program's own interpreter, wherever its virtualenv is.
    import sys

    assert check.inputs["environment"] == {"CVMFS_EPHEMERAL_PYTHON": sys.executable}
    assert 'py="${CVMFS_EPHEMERAL_PYTHON:-python3}"' in script and '"$py" -m runtime verify' in script
    # It runs after every container exists, and again whenever one is replaced.
    containers = {r.name for r in services(p)}
    assert {d.split("::")[-1] for d in check.depends_on} >= containers
    image = p.get("docker:index/image:Image", "cvmfs-test-image").inputs["imageName"]
    s0 = p.get("docker:index/image:Image", "cvmfs-test-image-stratum0").inputs["imageName"]
    assert check.inputs["triggers"] == [fake_digest(image), fake_digest(s0)] + [f"{n}-id" for n in (
        "cvmfs-test-stratum0", "cvmfs-test-gateway", "cvmfs-test-upload", "cvmfs-test-maintenance")]


def test_outputs(docker_program):
    out = docker_program.outputs
    assert out["target"] == "docker"
    assert out["endpoints"] == {
        "stratum0": "http://localhost:18000",
        "notifications": "http://localhost:14929/api/v1",
        "upload": "http://localhost:18080",
    }
    config = out["clientConfigs"][FQRN]
    assert "CVMFS_SERVER_URL=http://localhost:18000/cvmfs/ci.example.org\n" in config
    assert "CVMFS_HTTP_PROXY=DIRECT\n" in config
    assert "CVMFS_NOTIFICATION_SERVER=http://localhost:14929/api/v1\n" in config
    assert "CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/ci.example.org.pub\n" in config
    assert out["publicKeys"][FQRN].startswith("-----BEGIN PUBLIC KEY-----")
    fingerprint = out["repositories"][FQRN]["certificateFingerprint"]
    assert len(fingerprint) == 59 and fingerprint.count(":") == 19
    assert out["uploadTokens"] == [UPLOAD_TOKEN, SCOPED_TOKEN]


def test_public_urls_and_bind_address():
    p = run_program(docker_config(
        publicUrl="https://cvmfs.example.org", notificationUrl="https://notify.example.org",
        uploadUrl="https://upload.example.org", docker={"bindAddress": "0.0.0.0"},
    ))
    assert p.outputs["endpoints"]["notifications"] == "https://notify.example.org/api/v1"
    assert "CVMFS_USE_SSL_SYSTEM_CA=true" in p.outputs["clientConfigs"][FQRN]
    upload = p.get(CONTAINER, "cvmfs-test-upload")
    assert env_of(upload)["CVMFS_EPHEMERAL_PUBLIC_URL"] == "https://cvmfs.example.org"
    assert upload.inputs["ports"][0]["ip"] == "0.0.0.0"
    check = p.get("command:local:Command", f"cvmfs-test-verify-{FQRN}")
    assert "http://127.0.0.1:18000/cvmfs/ci.example.org" in check.inputs["create"]


def test_prebuilt_image_builds_nothing():
    p = run_program(docker_config(image={"name": "registry.example.org/cvmfs-ephemeral:1.0"}))
    assert not p.of_type("docker:index/image:Image")
    assert p.get(REMOTE_IMAGE, "cvmfs-test-runtime-image").inputs["name"] == (
        "registry.example.org/cvmfs-ephemeral:1.0"
    )
    for c in p.of_type(CONTAINER):  # the loaders too: pinned to what the engine pulled
        assert c.inputs["image"] == fake_digest("registry.example.org/cvmfs-ephemeral:1.0")


def test_generated_tokens_when_none_configured():
    raw = docker_config()
    del raw["tokens"], raw["maintenanceToken"]
    p = run_program(raw)
    assert p.names("random:index/randomPassword:RandomPassword") == [
        "cvmfs-test-maintenance-token", "cvmfs-test-upload-token",
        "cvmfs-test-upload-token-nightly.example.org",
    ]
    generated = p.get("random:index/randomPassword:RandomPassword", "cvmfs-test-upload-token")
    assert generated.inputs["length"] >= 32 and generated.inputs["special"] is False
    # one upload token per repository, scoped to it; the maintenance token is separate
    assert len(p.outputs["uploadTokens"]) == 2
    assert p.outputs["tokenScopes"] == [
        {"label": f"upload-{FQRN}", "role": "upload", "repository": FQRN},
        {"label": "upload-nightly.example.org", "role": "upload",
         "repository": "nightly.example.org"},
    ]


def test_verify_can_be_disabled():
    p = run_program(docker_config(verify={"enabled": False}))
    assert not p.of_type("command:local:Command")


@pytest.mark.parametrize("field", ["uploads"])
def test_no_container_uploads_outside_config_dir(docker_program, field):
    for c in docker_program.of_type(CONTAINER):
        for u in c.inputs.get(field, []):
            assert u["file"].startswith(contract.CONFIG_DIR + "/")
