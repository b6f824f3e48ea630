"""Kubernetes target: every object, its key properties, and offline schema validation."""

from __future__ import annotations


import kubernetes_validate
import pytest

from components.image import image_tag
from conftest import ADMIN_TOKEN, FQRN, kubernetes_config
from harness import fake_digest, run_program
from test_identity import EXPECTED_TOKENS_FILE

K8S_VERSION = "1.30.0"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
SECRET = "kubernetes:core/v1:Secret"
CRONJOB = "kubernetes:batch/v1:CronJob"
IMAGE_REPOSITORY = "registry.example.org/cvmfs-ephemeral"


def manifest(resource) -> dict:
    """The object as the provider would send it to the API server."""
    body = {k: v for k, v in resource.inputs.items() if not k.startswith("__")}
    return body


def containers_of(resource) -> dict[str, dict]:
    spec = resource.inputs["spec"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"] if "jobTemplate" in spec else spec["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def pod_of(resource) -> dict:
    spec = resource.inputs["spec"]
    if "jobTemplate" in spec:
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_objects(kubernetes_program):
    p = kubernetes_program
    kinds = sorted((r.type.split(":")[-1], r.name) for r in p if r.type.startswith("kubernetes:"))
    assert kinds == sorted([
        ("Namespace", "cvmfs"),
        ("PersistentVolumeClaim", "cvmfs-test-data"),
        ("Deployment", "cvmfs-test-upload"),
        ("Deployment", "cvmfs-test-stratum0"),
        ("Deployment", "cvmfs-test-gateway"),
        ("PodDisruptionBudget", "cvmfs-test-stratum0"),
        ("NetworkPolicy", "cvmfs-test-upload"),
        ("NetworkPolicy", "cvmfs-test-gateway"),
        ("Service", "cvmfs-test-stratum0"),
        ("Service", "cvmfs-test-upload"),
        ("Service", "cvmfs-test-gateway"),
        ("Secret", "cvmfs-test-keys"),
        ("Secret", "cvmfs-test-tokens"),
        ("Secret", "cvmfs-test-maintenance-token"),
        ("ConfigMap", "cvmfs-test-public-keys"),
        ("CronJob", "cvmfs-test-gc"),
        ("CronJob", "cvmfs-test-resign"),
        ("Ingress", "cvmfs-test"),
        ("Ingress", "cvmfs-test-notifications"),
    ])
    assert not [r for r in p if r.type.startswith("docker:index/container")]
    image = p.get("docker:index/image:Image", "cvmfs-test-image").inputs
    assert image["imageName"].startswith(f"{IMAGE_REPOSITORY}:") and image["skipPush"] is False
    assert len(image["imageName"].rsplit(":", 1)[1]) == len(image_tag())


@pytest.mark.parametrize("strict", [True])
def test_every_object_validates_offline(kubernetes_program, strict):
    objects = [r for r in kubernetes_program if r.type.startswith("kubernetes:")]
    assert len(objects) == 19
    for r in objects:
        body = manifest(r)
        assert body["apiVersion"] and body["kind"], r.name
        kubernetes_validate.validate(body, K8S_VERSION, strict=strict)


def test_validation_would_catch_a_typo():
    """The validator is strict: an unknown field fails (so the test above can fail)."""
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dta": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_all_objects_in_namespace(kubernetes_program):
    for r in kubernetes_program:
        if r.type.startswith("kubernetes:") and not r.type.endswith(":Namespace"):
            assert r.inputs["metadata"]["namespace"] == "cvmfs", r.name
    ns = kubernetes_program.get("kubernetes:core/v1:Namespace", "cvmfs").inputs
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def assert_hardened(pod: dict, containers: dict[str, dict], image: str) -> None:
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, c in containers.items():
        assert c["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "privileged": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }, name
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], name
        assert c["image"] == image
        assert c["imagePullPolicy"] == "IfNotPresent"
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]


def built_image(program) -> str:
    """What pods run: the pushed image's repository digest (mocked as the registry would)."""
    name = program.get("docker:index/image:Image", "cvmfs-test-image").inputs["imageName"]
    return f"{IMAGE_REPOSITORY}@{fake_digest(name)}"


def test_upload_pod(kubernetes_program):
    d = kubernetes_program.get(DEPLOYMENT, "cvmfs-test-upload")
    spec = d.inputs["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = pod_of(d)
    containers = containers_of(d)
    # The read path is its own Deployment now (persistent storage).
    assert list(containers) == ["upload"]
    assert_hardened(pod, containers, built_image(kubernetes_program))
    upload = containers["upload"]
    assert upload["command"] == [
        "python", "-m", "runtime", "serve", "--role", "upload", "--host", "0.0.0.0", "--port", "8080",
    ]
    assert upload["ports"] == [{"name": "upload", "containerPort": 8080, "protocol": "TCP"}]
    assert upload["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "upload"}
    assert upload["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "upload"}
    env = env_of(upload)
    assert env["CVMFS_EPHEMERAL_GATEWAY_URL"] == (
        "http://cvmfs-test-gateway.cvmfs.svc.cluster.local:4929/api/v1"
    )
    assert env["CVMFS_EPHEMERAL_PUBLIC_URL"] == "https://cvmfs.example.org"
    assert env["CVMFS_EPHEMERAL_TOKENS_FILE"] == "/etc/cvmfs-ephemeral/secrets/tokens"
    mounts = {m["name"]: m for m in upload["volumeMounts"]}
    assert mounts["data"] == {"name": "data", "mountPath": "/var/lib/cvmfs-ephemeral", "readOnly": False}
    assert mounts["keys"] == {"name": "keys", "mountPath": "/etc/cvmfs-ephemeral/keys", "readOnly": True}
    assert mounts["tokens"] == {"name": "tokens", "mountPath": "/etc/cvmfs-ephemeral/secrets", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "cvmfs-test-data"}}
    assert volumes["keys"]["secret"] == {"secretName": "cvmfs-test-keys", "defaultMode": 0o440}
    assert volumes["tokens"]["secret"] == {"secretName": "cvmfs-test-tokens", "defaultMode": 0o440}
    annotations = d.inputs["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["cvmfs-ephemeral/files-sha256"]) == 64
    assert d.raw["spec"]["template"]["metadata"]["annotations"]  # still present


def test_stratum0_deployment(kubernetes_program):
    d = kubernetes_program.get(DEPLOYMENT, "cvmfs-test-stratum0")
    containers = containers_of(d)
    assert list(containers) == ["stratum0"]
    s0 = kubernetes_program.get("docker:index/image:Image", "cvmfs-test-image-stratum0").inputs
    assert_hardened(pod_of(d), containers,
                    f"{IMAGE_REPOSITORY}-stratum0@{fake_digest(s0['imageName'])}")
    nginx = containers["stratum0"]
    assert nginx["command"] == ["nginx", "-c", "/etc/nginx/stratum0.conf"]
    assert nginx["ports"] == [{"name": "stratum0", "containerPort": 8000, "protocol": "TCP"}]
    mounts = {m["name"]: m for m in nginx["volumeMounts"]}
    assert set(mounts) == {"data", "tmp-stratum0"} and mounts["data"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod_of(d)["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "cvmfs-test-data"}}


def test_gateway_deployment(kubernetes_program):
    d = kubernetes_program.get(DEPLOYMENT, "cvmfs-test-gateway")
    assert d.inputs["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    containers = containers_of(d)
    assert list(containers) == ["gateway"]
    assert_hardened(pod_of(d), containers, built_image(kubernetes_program))
    gw = containers["gateway"]
    assert gw["command"][-5:] == ["gateway", "--host", "0.0.0.0", "--port", "4929"]
    env = env_of(gw)
    assert env["CVMFS_EPHEMERAL_STRATUM0_URL"] == (
        "http://cvmfs-test-stratum0.cvmfs.svc.cluster.local:8000/cvmfs"
    )
    volumes = {v["name"]: v for v in pod_of(d)["volumes"]}
    assert volumes["public-keys"]["configMap"]["name"] == "cvmfs-test-public-keys"
    assert "data" not in volumes
    cm = kubernetes_program.get("kubernetes:core/v1:ConfigMap", "cvmfs-test-public-keys").inputs
    assert sorted(cm["data"]) == sorted(
        f"{f}{s}" for f in (FQRN, "nightly.example.org") for s in (".crt", ".pub")
    )


def test_services(kubernetes_program):
    got = {}
    for s in kubernetes_program.of_type(SERVICE):
        spec = s.inputs["spec"]
        got[s.name] = (spec["selector"]["app.kubernetes.io/component"], spec["ports"][0]["port"],
                       spec["ports"][0]["targetPort"], spec["type"])
    assert got == {
        "cvmfs-test-stratum0": ("stratum0", 8000, "stratum0", "ClusterIP"),
        "cvmfs-test-upload": ("upload", 8080, "upload", "ClusterIP"),
        "cvmfs-test-gateway": ("gateway", 4929, "gateway", "ClusterIP"),
    }


def test_cronjobs(kubernetes_program):
    schedules = {}
    for cron in kubernetes_program.of_type(CRONJOB):
        spec = cron.inputs["spec"]
        schedules[cron.name] = spec["schedule"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["successfulJobsHistoryLimit"] == 1 and spec["failedJobsHistoryLimit"] == 3
        pod = pod_of(cron)
        assert pod["restartPolicy"] == "Never"
        containers = containers_of(cron)
        assert_hardened(pod, containers, built_image(kubernetes_program))
        (job, c), = containers.items()
        assert c["command"] == ["python", "-m", "runtime", job, "--url",
                                "http://cvmfs-test-upload.cvmfs.svc.cluster.local:8080"]
        token = [e for e in c["env"] if e["name"] == "CVMFS_EPHEMERAL_TOKEN"]
        assert token == [{"name": "CVMFS_EPHEMERAL_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "cvmfs-test-maintenance-token", "key": "token"}}}]
    # clean runs in the upload service's scheduler (see test_kubernetes_rollout.py).
    assert schedules == {"cvmfs-test-gc": "17 * * * *", "cvmfs-test-resign": "43 3 * * *"}


def test_secrets_content(kubernetes_program):
    p = kubernetes_program
    keys = p.get(SECRET, "cvmfs-test-keys")
    assert sorted(keys.inputs["stringData"]) == sorted(
        f"{f}{s}" for f in (FQRN, "nightly.example.org") for s in (".crt", ".key", ".masterkey", ".pub")
    )
    tokens = p.get(SECRET, "cvmfs-test-tokens").inputs["stringData"]["tokens"]
    assert tokens == EXPECTED_TOKENS_FILE  # hashes only (tests/pulumi/test_identity.py)
    assert p.get(SECRET, "cvmfs-test-maintenance-token").inputs["stringData"] == {"token": ADMIN_TOKEN}


def test_ingress(kubernetes_program):
    ing = kubernetes_program.get("kubernetes:networking.k8s.io/v1:Ingress", "cvmfs-test").inputs
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["cvmfs.example.org"], "secretName": "cvmfs-tls"}]
    paths = {p["path"]: p["backend"]["service"]["name"] for p in ing["spec"]["rules"][0]["http"]["paths"]}
    # No "/": the admin routes and /metrics stay inside the cluster.
    assert paths == {
        "/cvmfs": "cvmfs-test-stratum0", "/cvmfs-meta": "cvmfs-test-stratum0",
        "/repos": "cvmfs-test-upload",
    }
    annotations = ing["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    notify = kubernetes_program.get(
        "kubernetes:networking.k8s.io/v1:Ingress", "cvmfs-test-notifications").inputs
    (rule,) = notify["spec"]["rules"]
    assert [(p["path"], p["pathType"], p["backend"]["service"]["name"]) for p in rule["http"]["paths"]] == [
        ("/api/v1/notifications/subscribe", "Exact", "cvmfs-test-gateway")
    ]
    annotations = notify["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_outputs_and_check(kubernetes_program):
    out = kubernetes_program.outputs
    assert out["endpoints"] == {
        "stratum0": "https://cvmfs.example.org",
        "notifications": "https://cvmfs.example.org/api/v1",
        "upload": "https://cvmfs.example.org",
    }
    assert "CVMFS_SERVER_URL=https://cvmfs.example.org/cvmfs/ci.example.org" in out["clientConfigs"][FQRN]
    check = kubernetes_program.get("command:local:Command", f"cvmfs-test-verify-{FQRN}")
    assert "--url https://cvmfs.example.org/cvmfs/ci.example.org" in check.inputs["create"]


def test_without_ingress_ephemeral_storage_existing_namespace():
    config = kubernetes_config(storage={"kind": "ephemeral", "size": "2Gi"})
    config["kubernetes"] = {"namespace": "ci", "createNamespace": False, "serviceType": "NodePort"}
    p = run_program(config)
    assert not p.of_type("kubernetes:core/v1:Namespace")
    assert not p.of_type("kubernetes:core/v1:PersistentVolumeClaim")
    assert not p.of_type("kubernetes:networking.k8s.io/v1:Ingress")
    # No URL reachable from the pulumi host is known: the check is skipped, not guessed.
    assert not p.of_type("command:local:Command")
    upload = p.get(DEPLOYMENT, "cvmfs-test-upload")
    volumes = {v["name"]: v for v in pod_of(upload)["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}}
    # An emptyDir cannot be shared between pods: nginx is the writer's sidecar, ports distinct.
    assert not [d for d in p.of_type(DEPLOYMENT) if d.name.endswith("-stratum0")]
    containers = containers_of(upload)
    assert list(containers) == ["upload", "stratum0"]
    names = [port["name"] for c in containers.values() for port in c["ports"]]
    assert names == ["upload", "stratum0"]
    assert containers["stratum0"]["volumeMounts"][1]["readOnly"] is True
    stratum0 = p.get(SERVICE, "cvmfs-test-stratum0").inputs["spec"]
    assert stratum0["selector"]["app.kubernetes.io/component"] == "upload"
    assert stratum0["ports"][0]["targetPort"] == "stratum0"
    assert p.outputs["endpoints"]["stratum0"] == "http://cvmfs-test-stratum0.ci.svc.cluster.local:8000"
    assert {s.inputs["spec"]["type"] for s in p.of_type(SERVICE)} == {"NodePort"}
    for r in p:
        if r.type.startswith("kubernetes:"):
            kubernetes_validate.validate(manifest(r), K8S_VERSION, strict=True)
