"""Kubernetes ordering and rollout: Secrets before pods (through the Output graph), a read path
that stays up, probes and grace periods that let uploads finish, and the network edges.

Every object still validates strictly against the Kubernetes schema (kubernetes-validate); the
Gateway API HTTPRoute, a CRD, is checked for its shape.
"""

from __future__ import annotations

import kubernetes_validate
import pytest

from conftest import kubernetes_config
from harness import run_program

K8S_VERSION = "1.30.0"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SECRET = "kubernetes:core/v1:Secret"
CONFIGMAP = "kubernetes:core/v1:ConfigMap"
CRONJOB = "kubernetes:batch/v1:CronJob"
SERVICE = "kubernetes:core/v1:Service"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
HTTPROUTE = "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"
COMMAND = "command:local:Command"


def urn_names(resource) -> set[str]:
    return {u.split("::")[-1] for u in resource.depends_on}


def pod_of(resource) -> dict:
    spec = resource.inputs["spec"]
    if "jobTemplate" in spec:
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def containers_of(resource) -> dict[str, dict]:
    return {c["name"]: c for c in pod_of(resource)["containers"]}


def validate_all(program) -> int:
    count = 0
    for r in program:
        if r.type.startswith("kubernetes:") and r.type != HTTPROUTE:
            body = {k: v for k, v in r.inputs.items() if not k.startswith("__")}
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
            count += 1
    return count


def test_workloads_wait_for_their_secrets_and_configmaps(kubernetes_program):
    """The pods name their Secrets/ConfigMaps through the objects' outputs: Pulumi creates the
    objects first (no FailedMount on the first `up`) and updates them before a rollout."""
    p = kubernetes_program
    assert {"cvmfs-test-keys", "cvmfs-test-tokens"} <= urn_names(p.get(DEPLOYMENT, "cvmfs-test-upload"))
    assert "cvmfs-test-public-keys" in urn_names(p.get(DEPLOYMENT, "cvmfs-test-gateway"))
    assert "cvmfs-test-data" in urn_names(p.get(DEPLOYMENT, "cvmfs-test-stratum0"))
    for cron in p.of_type(CRONJOB):
        assert "cvmfs-test-maintenance-token" in urn_names(cron), cron.name
    # Ingress backends follow the Services.
    ingress = p.get("kubernetes:networking.k8s.io/v1:Ingress", "cvmfs-test")
    assert {"cvmfs-test-stratum0", "cvmfs-test-upload"} <= urn_names(ingress)


def test_read_path_is_its_own_rolling_deployment(kubernetes_program):
    d = kubernetes_program.get(DEPLOYMENT, "cvmfs-test-stratum0").inputs["spec"]
    assert d["replicas"] == 2
    assert d["strategy"] == {"type": "RollingUpdate",
                             "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    # ReadWriteOnce (default): on the writer's node.
    (term,) = d["template"]["spec"]["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "upload"
    # The writer stays single and prefers the readers' node (where the volume is attached).
    upload = kubernetes_program.get(DEPLOYMENT, "cvmfs-test-upload").inputs["spec"]
    assert upload["replicas"] == 1 and upload["strategy"] == {"type": "Recreate"}
    (preferred,) = upload["template"]["spec"]["affinity"]["podAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["labelSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "stratum0"
    pdb = kubernetes_program.get(PDB, "cvmfs-test-stratum0").inputs["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == "stratum0"


def test_read_write_many_spreads_the_read_path():
    p = run_program(kubernetes_config(
        storage={"kind": "persistent", "accessMode": "ReadWriteMany", "storageClass": "nfs"},
        kubernetes={"namespace": "cvmfs", "stratum0Replicas": 3},
    ))
    pvc = p.get("kubernetes:core/v1:PersistentVolumeClaim", "cvmfs-test-data").inputs["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"]
    d = p.get(DEPLOYMENT, "cvmfs-test-stratum0").inputs["spec"]
    assert d["replicas"] == 3
    affinity = d["template"]["spec"]["affinity"]
    assert "podAffinity" not in affinity
    (spread,) = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread["podAffinityTerm"]["labelSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "stratum0"
    assert "affinity" not in p.get(DEPLOYMENT, "cvmfs-test-upload").inputs["spec"]["template"]["spec"]
    validate_all(p)


def test_one_reader_is_refused():
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="kubernetes.stratum0Replicas"):
        run_program(kubernetes_config(kubernetes={"stratum0Replicas": 1}))


def test_probes_are_separate_and_liveness_is_lenient(kubernetes_program):
    for d in kubernetes_program.of_type(DEPLOYMENT):
        for name, c in containers_of(d).items():
            ready, live = c["readinessProbe"], c["livenessProbe"]
            assert ready != live, name
            budget = lambda p: p["periodSeconds"] * p["failureThreshold"]  # noqa: E731
            assert budget(live) >= 120 and live["timeoutSeconds"] >= 10, name
            assert budget(ready) <= 15, name
            assert c["startupProbe"]["httpGet"] == ready["httpGet"]


def test_grace_period_outlasts_the_drain(kubernetes_program):
    for r in [*kubernetes_program.of_type(DEPLOYMENT), *kubernetes_program.of_type(CRONJOB)]:
        assert pod_of(r)["terminationGracePeriodSeconds"] > 60, r.name  # runtime drains 60 s


def test_clean_runs_in_the_upload_scheduler(kubernetes_program):
    env = {e["name"]: e.get("value") for e in
           containers_of(kubernetes_program.get(DEPLOYMENT, "cvmfs-test-upload"))["upload"]["env"]}
    assert env["CVMFS_EPHEMERAL_SCHEDULER"] == "true"
    assert env["CVMFS_EPHEMERAL_CLEAN_INTERVAL_S"] == "60"
    assert env["CVMFS_EPHEMERAL_GC_INTERVAL_S"] == "0"  # 0 disables: gc stays a CronJob
    assert env["CVMFS_EPHEMERAL_RESIGN_INTERVAL_S"] == "0"
    assert kubernetes_program.names(CRONJOB) == ["cvmfs-test-gc", "cvmfs-test-resign"]
    slower = run_program(kubernetes_config(schedules={"clean": "*/5 * * * *"}))
    env = {e["name"]: e.get("value") for e in
           containers_of(slower.get(DEPLOYMENT, "cvmfs-test-upload"))["upload"]["env"]}
    assert env["CVMFS_EPHEMERAL_CLEAN_INTERVAL_S"] == "300"


def test_network_policies(kubernetes_program):
    policies = {r.name: r.inputs["spec"] for r in kubernetes_program.of_type(NETPOL)}
    assert sorted(policies) == ["cvmfs-test-gateway", "cvmfs-test-upload"]

    def peers(spec) -> list[str]:
        (rule,) = spec["ingress"]
        out = []
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                out.append("ns:" + peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
            else:
                out.append("pods:" + peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"])
        return out

    upload = policies["cvmfs-test-upload"]
    assert upload["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "upload"
    assert upload["policyTypes"] == ["Ingress"]
    assert peers(upload) == ["ns:ingress-nginx", "pods:maintenance"]
    assert upload["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    gateway = policies["cvmfs-test-gateway"]
    assert peers(gateway) == ["ns:ingress-nginx", "pods:upload"]
    # The maintenance pods carry the label the policy admits.
    for cron in kubernetes_program.of_type(CRONJOB):
        labels = cron.inputs["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "maintenance"
    off = run_program(kubernetes_config(kubernetes={"networkPolicy": {"enabled": False}}))
    assert not off.of_type(NETPOL)


def test_cluster_domain_service_annotations_and_port_names():
    p = run_program(kubernetes_config(kubernetes={
        "namespace": "cvmfs", "clusterDomain": "corp.internal",
        "serviceAnnotations": {"stratum0": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}},
    }))
    env = {e["name"]: e.get("value") for e in
           containers_of(p.get(DEPLOYMENT, "cvmfs-test-upload"))["upload"]["env"]}
    assert env["CVMFS_EPHEMERAL_GATEWAY_URL"] == "http://cvmfs-test-gateway.cvmfs.svc.corp.internal:4929/api/v1"
    services = {s.name: s.inputs["metadata"] for s in p.of_type(SERVICE)}
    assert services["cvmfs-test-stratum0"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}
    assert "annotations" not in services["cvmfs-test-upload"]
    for d in p.of_type(DEPLOYMENT):
        names = [port["name"] for c in containers_of(d).values() for port in c.get("ports", [])]
        assert len(names) == len(set(names)), d.name
    validate_all(p)


def test_admin_routes_only_when_asked():
    config = kubernetes_config()
    config["kubernetes"]["ingress"]["exposeAdmin"] = True
    p = run_program(config)
    ing = p.get("kubernetes:networking.k8s.io/v1:Ingress", "cvmfs-test").inputs
    paths = [x["path"] for x in ing["spec"]["rules"][0]["http"]["paths"]]
    assert "/" in paths


def test_user_annotations_override_the_ingress_defaults():
    config = kubernetes_config()
    config["kubernetes"]["ingress"]["annotations"] = {
        "nginx.ingress.kubernetes.io/proxy-body-size": "8g"}
    p = run_program(config)
    ing = p.get("kubernetes:networking.k8s.io/v1:Ingress", "cvmfs-test").inputs
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "8g"
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"


def test_http_route():
    config = kubernetes_config()
    config["kubernetes"] = {
        "namespace": "cvmfs",
        "httpRoute": {"parentRefs": [{"name": "public", "namespace": "gateways",
                                      "sectionName": "https"}],
                      "hostnames": ["cvmfs.example.org"]},
    }
    p = run_program(config)
    (route,) = p.of_type(HTTPROUTE)
    body = route.inputs
    assert body["apiVersion"] == "gateway.networking.k8s.io/v1" and body["kind"] == "HTTPRoute"
    assert body["metadata"]["namespace"] == "cvmfs"
    spec = body["spec"]
    assert spec["parentRefs"] == [{"name": "public", "namespace": "gateways", "sectionName": "https"}]
    assert spec["hostnames"] == ["cvmfs.example.org"]
    routes = {r["matches"][0]["path"]["value"]: (r["matches"][0]["path"]["type"], r["backendRefs"])
              for r in spec["rules"]}
    assert routes == {
        "/cvmfs": ("PathPrefix", [{"name": "cvmfs-test-stratum0", "port": 8000}]),
        "/cvmfs-meta": ("PathPrefix", [{"name": "cvmfs-test-stratum0", "port": 8000}]),
        "/repos": ("PathPrefix", [{"name": "cvmfs-test-upload", "port": 8080}]),
        "/api/v1/notifications/subscribe": ("Exact", [{"name": "cvmfs-test-gateway", "port": 4929}]),
    }
    (stream,) = [r for r in spec["rules"] if r["matches"][0]["path"]["type"] == "Exact"]
    assert stream["timeouts"] == {"request": "0s", "backendRequest": "0s"}
    assert "cvmfs-test-gateway" in urn_names(route)
    assert not p.of_type("kubernetes:networking.k8s.io/v1:Ingress")
    validate_all(p)


# -- a local kind cluster ------------------------------------------------------------------------


def kind_config() -> dict:
    config = kubernetes_config(image={"repository": "cvmfs-ephemeral", "pullPolicy": "Never"})
    config["kubernetes"] = {"namespace": "cvmfs", "kindCluster": "cvmfs"}
    return config


def test_kind_loads_the_image_between_build_and_workloads():
    p = run_program(kind_config())
    image = p.get("docker:index/image:Image", "cvmfs-test-image")
    assert image.inputs["skipPush"] is True
    load = p.get(COMMAND, "cvmfs-test-kind-load")
    tag = image.inputs["imageName"]
    assert load.inputs["create"] == f"kind load docker-image --name cvmfs {tag}"
    assert load.inputs["triggers"] == [tag]
    assert "cvmfs-test-image" in urn_names(load)
    s0_tag = p.get("docker:index/image:Image", "cvmfs-test-image-stratum0").inputs["imageName"]
    assert p.get(COMMAND, "cvmfs-test-kind-load-stratum0").inputs["create"].endswith(s0_tag)
    # Every workload is ordered after the load (its output feeds the image reference).
    for r in [*p.of_type(DEPLOYMENT), *p.of_type(CRONJOB)]:
        stratum0 = r.name == "cvmfs-test-stratum0"
        assert ("cvmfs-test-kind-load-stratum0" if stratum0 else "cvmfs-test-kind-load") in urn_names(r), r.name
        assert {c["image"] for c in containers_of(r).values()} == {s0_tag if stratum0 else tag}
        assert {c["imagePullPolicy"] for c in containers_of(r).values()} == {"Never"}
    validate_all(p)


def test_kind_stack_file_is_a_valid_configuration():
    import yaml  # PyYAML ships with pulumi's dependencies

    from components.config import NAMESPACE, parse_stack_config
    from harness import REPO_ROOT

    raw = yaml.safe_load((REPO_ROOT / "Pulumi.kind.yaml").read_text())["config"]
    config = parse_stack_config({k.split(":", 1)[1]: v for k, v in raw.items()
                                 if k.startswith(NAMESPACE + ":")})
    assert config.kubernetes.kind_cluster and config.image.push is False
    assert config.image.pull_policy in ("Never", "IfNotPresent")


def test_kind_and_push_exclude_each_other():
    from components.config import ConfigError

    config = kind_config()
    config["image"]["push"] = True
    with pytest.raises(ConfigError, match="kindCluster"):
        run_program(config)


def test_example_stack_files_are_valid_configurations():
    import yaml

    from components.config import NAMESPACE, parse_stack_config
    from harness import REPO_ROOT

    for name in ("Pulumi.k8s-example.yaml", "Pulumi.dev.yaml", "Pulumi.kind.yaml"):
        raw = yaml.safe_load((REPO_ROOT / name).read_text())["config"]
        parse_stack_config({k.split(":", 1)[1]: v for k, v in raw.items()
                            if k.startswith(NAMESPACE + ":")})


def test_read_path_pods_stop_gracefully(kubernetes_program):
    """nginx takes SIGTERM as a fast shutdown: a stopping reader first leaves the Services,
    then gets SIGQUIT (graceful) and is waited for, within the grace period."""
    (nginx,) = containers_of(kubernetes_program.get(DEPLOYMENT, "cvmfs-test-stratum0")).values()
    command = nginx["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    assert command[2] == "sleep 5; kill -QUIT 1; while kill -0 1 2>/dev/null; do sleep 1; done"
    # The runtime drains on SIGTERM itself: no hook there.
    for name in ("cvmfs-test-upload", "cvmfs-test-gateway"):
        for c in containers_of(kubernetes_program.get(DEPLOYMENT, name)).values():
            assert "lifecycle" not in c, name
