"""SiteCache under Pulumi's mocks: the squid resources on both targets, the client configs that
point at it, the stratum-1 outputs, and the configuration checks that fail a preview."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from components.config import ConfigError, parse_stack_config
from components.site_cache import squid_settings
from components.squid_config import CACHE_DIR, CONF_PATH, PROBE_PATH, render_squid_conf
from conftest import FQRN, docker_config, kubernetes_config
from harness import run_program

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
K8S_VERSION = "1.30.0"
SECRETS = {"tokens", "maintenanceToken", "importedKeys"}

SITE_CACHE = {
    "enabled": True,
    "replicas": 3,
    "memoryCacheMb": 512,
    "diskCacheMb": 20000,
    "resources": {"cpuRequest": "200m", "memoryRequest": "768Mi", "memoryLimit": "1536Mi"},
}


@pytest.fixture(scope="module")
def docker_cache():
    return run_program(docker_config(siteCache=SITE_CACHE))


@pytest.fixture(scope="module")
def k8s_cache():
    return run_program(kubernetes_config(siteCache=SITE_CACHE))


def parse(raw: dict):
    return parse_stack_config(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, SECRETS
    )


# -- disabled by default ------------------------------------------------------------------------


def test_no_cache_unless_enabled(docker_program, kubernetes_program):
    for program in (docker_program, kubernetes_program):
        assert not [r for r in program if "site-cache" in r.name]
        assert "siteCache" not in program.outputs["endpoints"]
        assert "CVMFS_HTTP_PROXY=DIRECT\n" in program.outputs["clientConfigs"][FQRN]


# -- Docker ---------------------------------------------------------------------------------------


def test_docker_container_is_hardened_with_probe_resources_and_volumes(docker_cache):
    squid = docker_cache.get(CONTAINER, "cvmfs-test-site-cache").inputs
    assert squid["user"] == "10001:10001"
    assert squid["readOnly"] is True
    assert squid["capabilities"] == {"drops": ["ALL"]}
    assert squid["securityOpts"] == ["no-new-privileges:true"]
    assert squid["privileged"] is False
    assert squid["tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}
    assert squid["memory"] == 1536
    assert squid["command"] == [
        "/bin/sh", "-c", f"squid -N -z -f {CONF_PATH} && exec squid -N -f {CONF_PATH}",
    ]
    test = squid["healthcheck"]["tests"]
    assert test[:3] == ["CMD", "python3", "-c"] and f"127.0.0.1:3128{PROBE_PATH}" in test[3]
    assert squid["ports"] == [{"internal": 3128, "external": 3128, "ip": "127.0.0.1",
                               "protocol": "tcp"}]
    assert squid["networksAdvanced"][0]["aliases"] == ["site-cache"]
    volumes = {v["containerPath"]: v for v in squid["volumes"]}
    assert volumes["/etc/cvmfs-ephemeral"]["readOnly"] is True
    assert volumes[CACHE_DIR] == {"containerPath": CACHE_DIR, "readOnly": False,
                                  "volumeName": "cvmfs-test-site-cache"}
    assert "cvmfs-test-site-cache" in docker_cache.names(VOLUME)


HARDENING = ("user", "readOnly", "tmpfs", "capabilities", "securityOpts", "privileged",
             "restart", "logDriver", "logOpts")


def test_docker_squid_shares_every_service_container_hardening(docker_cache):
    """The site cache is hardened by the same code as the runtime's containers: the same user,
    root, tmpfs, capabilities, restart policy and log rotation, on the same network."""
    squid = docker_cache.get(CONTAINER, "cvmfs-test-site-cache").inputs
    upload = docker_cache.get(CONTAINER, "cvmfs-test-upload").inputs
    assert {k: squid.get(k) for k in HARDENING} == {k: upload.get(k) for k in HARDENING}
    assert squid["logOpts"] == {"max-size": "10m", "max-file": "3"}
    assert squid["networksAdvanced"][0]["name"] == upload["networksAdvanced"][0]["name"]
    # squid stops within shutdown_lifetime (3 s): the engine's default 10 s grace, as on
    # Kubernetes; the runtime's containers wait out their drain instead
    assert "stopTimeout" not in squid and upload["stopTimeout"] == 90


def test_docker_squid_conf_is_the_rendered_one_and_only_reaches_stratum0(docker_cache):
    loader = docker_cache.get(CONTAINER, "cvmfs-test-site-cache-files")
    assert loader.inputs["start"] is False and loader.inputs["networkMode"] == "none"
    (upload,) = loader.raw["uploads"]
    assert upload["file"] == CONF_PATH and upload["permissions"] == "0444"
    conf = upload["content"]
    config = parse(docker_config(siteCache=SITE_CACHE))
    expected = squid_settings(config.site_cache, "http://stratum0:8000",
                              "http://localhost:18000", 16 * 1024 * 1024)
    assert conf == render_squid_conf(expected)
    for line in (
        "cache_peer stratum0 parent 8000 0 no-query no-digest originserver name=stratum0",
        "acl stratum0_host dstdomain stratum0 localhost",
        "acl stratum0_port port 8000 18000",
        "never_direct allow all",
        "collapsed_forwarding on",
        "minimum_expiry_time 0 seconds",
        "cache_mem 512 MB",
        f"cache_dir ufs {CACHE_DIR} 20000 16 256",
        "maximum_object_size 1024 MB",
        "http_access deny CONNECT",
        "http_access deny all",
        "access_log stdio:/dev/stdout squid",
        "logfile_rotate 0",
    ):
        assert line in conf.splitlines(), line
    assert "refresh_pattern" not in conf  # the stratum 0's Cache-Control decides


def test_docker_outputs_point_clients_at_the_cache(docker_cache):
    out = docker_cache.outputs
    assert out["endpoints"]["siteCache"] == "http://localhost:3128"
    config = out["clientConfigs"][FQRN]
    assert 'CVMFS_HTTP_PROXY="http://localhost:3128"\n' in config
    assert "CVMFS_SERVER_URL=http://localhost:18000/cvmfs/ci.example.org\n" in config
    assert "DIRECT" not in config


def test_direct_fallback_only_when_configured():
    p = run_program(docker_config(siteCache={
        "enabled": True, "allowDirectFallback": True, "publicUrl": "http://squid.example.org:3128",
        "diskCacheMb": 0,
    }))
    config = p.outputs["clientConfigs"][FQRN]
    assert 'CVMFS_HTTP_PROXY="http://squid.example.org:3128;DIRECT"\n' in config
    squid = p.get(CONTAINER, "cvmfs-test-site-cache").inputs
    assert squid["command"] == ["squid", "-N", "-f", CONF_PATH]  # memory only: no cache_dir
    assert [v["containerPath"] for v in squid["volumes"]] == ["/etc/cvmfs-ephemeral"]
    assert "cvmfs-test-site-cache" not in p.names(VOLUME)


# -- Kubernetes -----------------------------------------------------------------------------------


def k8s_objects(program):
    return [r for r in program if r.type.startswith("kubernetes:")]


def manifest(resource) -> dict:
    return {k: v for k, v in resource.inputs.items() if not k.startswith("__")}


def test_k8s_deployment(k8s_cache):
    d = k8s_cache.get("kubernetes:apps/v1:Deployment", "cvmfs-test-site-cache").inputs
    assert d["metadata"]["namespace"] == "cvmfs"
    spec = d["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"] == {"requests": {"cpu": "200m", "memory": "768Mi"},
                              "limits": {"memory": "1536Mi"}}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": PROBE_PATH, "port": "proxy"}, probe
    assert c["ports"] == [{"name": "proxy", "containerPort": 3128, "protocol": "TCP"}]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/etc/cvmfs-ephemeral/squid", CACHE_DIR}
    assert mounts["/etc/cvmfs-ephemeral/squid"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["emptyDir"]["sizeLimit"] == f"{20000 * 23 // 20 + 64}Mi"
    assert volumes["site-cache"]["configMap"]["name"] == "cvmfs-test-site-cache"
    assert spec["template"]["metadata"]["annotations"]["cvmfs-ephemeral/files-sha256"]


def test_k8s_configmap_service_and_conf(k8s_cache):
    cm = k8s_cache.get("kubernetes:core/v1:ConfigMap", "cvmfs-test-site-cache").inputs
    conf = cm["data"]["squid.conf"]
    internal = "cvmfs-test-stratum0.cvmfs.svc.cluster.local"
    assert (f"cache_peer {internal} parent 8000 0 no-query no-digest originserver "
            "name=stratum0") in conf
    # The ingress is https: squid cannot cache TLS, so only the internal name is accepted.
    assert f"acl stratum0_host dstdomain {internal}" in conf.splitlines()
    svc = k8s_cache.get("kubernetes:core/v1:Service", "cvmfs-test-site-cache").inputs
    assert svc["spec"]["ports"] == [{"name": "proxy", "port": 3128, "targetPort": 3128,
                                     "protocol": "TCP"}]
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "site-cache"
    out = k8s_cache.outputs
    proxy = "http://cvmfs-test-site-cache.cvmfs.svc.cluster.local:3128"
    assert out["endpoints"]["siteCache"] == proxy
    config = out["clientConfigs"][FQRN]
    assert f'CVMFS_HTTP_PROXY="{proxy}"\n' in config
    assert f"CVMFS_SERVER_URL=http://{internal}:8000/cvmfs/{FQRN}\n" in config


def test_k8s_every_object_validates_strictly(k8s_cache):
    objects = k8s_objects(k8s_cache)
    assert {r.name for r in objects if "site-cache" in r.name} == {"cvmfs-test-site-cache"}
    assert len([r for r in objects if "site-cache" in r.name]) == 3  # Deployment, Service, CM
    for r in objects:
        kubernetes_validate.validate(manifest(r), K8S_VERSION, strict=True)


def test_k8s_daemonset_keeps_traffic_on_the_node():
    p = run_program(kubernetes_config(siteCache={**SITE_CACHE, "kind": "DaemonSet"}))
    ds = p.get("kubernetes:apps/v1:DaemonSet", "cvmfs-test-site-cache").inputs
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["livenessProbe"]["httpGet"]["path"] == PROBE_PATH
    svc = p.get("kubernetes:core/v1:Service", "cvmfs-test-site-cache").inputs
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    assert not [r for r in p.of_type("kubernetes:apps/v1:Deployment") if "site-cache" in r.name]
    for r in k8s_objects(p):
        kubernetes_validate.validate(manifest(r), K8S_VERSION, strict=True)


# -- stratum 1 ------------------------------------------------------------------------------------


def test_stratum1_outputs(docker_program):
    s1 = docker_program.outputs["stratum1"]
    assert s1["recommendedSnapshotIntervalS"] == 60  # shortest TTL, whole minutes, < grace
    repo = s1["repositories"][FQRN]
    assert repo["url"] == "http://localhost:18000/cvmfs/ci.example.org"
    assert repo["publicKey"] == docker_program.outputs["publicKeys"][FQRN]
    assert repo["gcGraceS"] == 2 * 60 + 300 and repo["ttlS"] == 60
    assert repo["addReplica"] == (
        "cvmfs_server add-replica -o $USER http://localhost:18000/cvmfs/ci.example.org "
        "/etc/cvmfs/keys/ci.example.org.pub"
    )


def test_configured_snapshot_interval_and_per_repository_grace():
    p = run_program(docker_config(
        stratum1={"snapshotIntervalS": 900},
        signing={"gcGraceS": 3600},
        repositories=[{"fqrn": FQRN, "gcGraceS": 7200}, {"fqrn": "nightly.example.org"}],
    ))
    s1 = p.outputs["stratum1"]
    assert s1["recommendedSnapshotIntervalS"] == 900
    assert s1["repositories"][FQRN]["gcGraceS"] == 7200
    assert s1["repositories"]["nightly.example.org"]["gcGraceS"] == 3600
    upload = p.get(CONTAINER, "cvmfs-test-upload").inputs
    env = dict(item.split("=", 1) for item in upload["envs"])
    repos = {r["fqrn"]: r for r in json.loads(env["CVMFS_EPHEMERAL_REPOSITORIES"])}
    assert repos[FQRN]["gc_grace_s"] == 7200 and "gc_grace_s" not in repos["nightly.example.org"]


# -- configuration checks -------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"stratum1": {"snapshotIntervalS": 600}},
     "cvmfs-ephemeral: repositories[0] (ci.example.org): gc grace 420 s must exceed "
     "stratum1.snapshotIntervalS (600 s)"),
    ({"stratum1": {"snapshotIntervalS": 600}, "signing": {"gcGraceS": 3600},
      "repositories": [{"fqrn": FQRN, "gcGraceS": 300}, {"fqrn": "nightly.example.org"}]},
     "repositories[0] (ci.example.org): gc grace 300 s must exceed"),
    ({"siteCache": {"enabled": True, "memoryCacheMb": 1000}},
     "cvmfs-ephemeral:siteCache: memoryCacheMb (1000) plus squid's own ~128 MiB must fit in "
     "resources.memoryLimit (1Gi)"),
    ({"siteCache": {"enabled": True, "port": 18000}},
     "siteCache.port must differ from the stratum0, upload and gateway ports"),
    ({"siteCache": {"clientNetworks": ["everyone"]}}, "'everyone' is not an IP network"),
    ({"siteCache": {"publicUrl": "https://squid.example.org"}}, "a proxy URL is plain http"),
    ({"siteCache": {"kind": "StatefulSet"}}, "cvmfs-ephemeral:siteCache.kind"),
    ({"siteCache": {"replica": 2}}, "cvmfs-ephemeral:siteCache.replica: unknown key"),
])
def test_bad_configurations_fail_with_a_clear_message(overrides, message):
    with pytest.raises(ConfigError) as err:
        parse(docker_config(**overrides))
    assert message in str(err.value)
