"""Kubernetes target: a namespace with Deployments, Services, Secrets and CronJobs.

What it creates (``<name>`` is the stack's ``name``, all in the namespace ``kubernetes.namespace``,
default ``<name>``):

- Namespace (unless ``kubernetes.createNamespace`` is false);
- PersistentVolumeClaim ``<name>-data`` (``storage.kind: persistent``; protected and retained,
  like the namespace, unless ``storage.allowReplace``), else an emptyDir;
- Deployment ``<name>-upload`` (one replica, ``Recreate``: one writer per repository); its
  embedded scheduler runs ``clean`` (a CronJob every minute would make 1,440 pods a day);
- Deployment ``<name>-stratum0`` (the read path, persistent storage): ``kubernetes.
  stratum0Replicas`` nginx pods (>= 2) mounting the claim read-only, rolled one at a time, with a
  PodDisruptionBudget; on the writer's node (pod affinity) for ReadWriteOnce storage, spread
  over nodes for ReadWriteMany. So a writer rollout, a key or token change, never takes reads
  down. With ephemeral storage (an emptyDir cannot be shared between pods) nginx stays a
  sidecar of the writer;
- Deployment ``<name>-gateway``: its own rollout, so an upload service update never drops
  client subscriptions; Services ``<name>-stratum0``, ``<name>-upload``, ``<name>-gateway``;
- Secret ``<name>-keys`` (the repository keys), Secret ``<name>-tokens`` (the upload tokens file),
  ConfigMap ``<name>-public-keys`` (what the gateway verifies with), Secret
  ``<name>-maintenance-token``; referenced by the workloads through the objects' outputs, so
  Pulumi creates (and updates) them before the pods that mount them;
- CronJobs ``<name>-gc``, ``<name>-resign`` (``concurrencyPolicy: Forbid``);
- with ``siteCache.enabled``: Deployment or DaemonSet ``<name>-site-cache`` (squid), its ConfigMap
  and Service (see ``site_cache``);
- NetworkPolicies (``kubernetes.networkPolicy``);
- optionally Ingresses and a Gateway API HTTPRoute: ``/cvmfs``, ``/cvmfs-meta`` to stratum 0,
  ``/repos`` to the upload API, ``/api/v1/notifications/subscribe`` to the gateway; the admin
  routes, ``/metrics`` and the gateway's publish route are not routed by default.

Every pod: non-root (10001), read-only root filesystem, no privilege escalation, all
capabilities dropped, RuntimeDefault seccomp, an emptyDir on /tmp, no service account token,
``fsGroupChangePolicy: OnRootMismatch`` (no chown of every object at each start), a
termination grace longer than the runtime's drain, a readiness probe that takes a busy pod out
of its Service and a lenient liveness probe that restarts only a hung one.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Optional, Sequence

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from .. import contract
from ..config import ResourceSpec, StackConfig
from ..spec import CacheSpec, ContainerSpec, Endpoint, FileSet, MaintenanceSpec
from ..store_guard import DataStoreGuard, DataStoreGuardArgs
from .base import ServiceRole, configured_public_url

core = k8s.core.v1
apps = k8s.apps.v1
batch = k8s.batch.v1
meta = k8s.meta.v1
networking = k8s.networking.v1
policy = k8s.policy.v1

#: Secret files are readable by the pod's fsGroup (the runtime user's group) only.
SECRET_MODE = 0o440
CONFIG_HASH_ANNOTATION = "cvmfs-ephemeral/files-sha256"
PUBLIC_MODE = 0o444


def files_hash(containers: list[ContainerSpec]) -> pulumi.Output[str]:
    """SHA-256 over the mounted files: a changed key or token rolls the pods, which would
    otherwise keep running with the old files. A one-way hash of high-entropy secrets reveals
    nothing; it is still kept secret in the state."""

    entries = [
        (f"{fs.name}/{filename}", fs.files[filename])
        for c in containers
        for fs in c.files
        for filename in sorted(fs.files)
    ]

    def digest(values: list[str]) -> str:
        h = hashlib.sha256()
        for (path, _), value in zip(entries, values):
            h.update(path.encode() + b"\0" + hashlib.sha256(value.encode()).digest())
        return h.hexdigest()

    return pulumi.Output.secret(pulumi.Output.all(*(v for _, v in entries)).apply(digest))


def container_security_context() -> core.SecurityContextArgs:
    """The hardened security context of every container."""
    return core.SecurityContextArgs(
        run_as_non_root=True,
        run_as_user=contract.UID,
        run_as_group=contract.GID,
        read_only_root_filesystem=True,
        allow_privilege_escalation=False,
        privileged=False,
        capabilities=core.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault"),
    )


def pod_security_context() -> core.PodSecurityContextArgs:
    return core.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=contract.UID,
        run_as_group=contract.GID,
        fs_group=contract.GID,
        # Without it the kubelet chowns every file of the data volume at each pod start.
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault"),
    )


def resources(spec: ResourceSpec) -> core.ResourceRequirementsArgs:
    limits = {"memory": spec.memory_limit}
    if spec.cpu_limit:
        limits["cpu"] = spec.cpu_limit
    return core.ResourceRequirementsArgs(
        requests={"cpu": spec.cpu_request, "memory": spec.memory_request}, limits=limits
    )


#: Seconds a stopping read-path pod keeps serving while the Services drop it.
PRESTOP_DELAY_S = 5
#: The only gateway route the public host gets: subscriptions (publish stays in-cluster).
SUBSCRIBE_PATH = "/api/v1/notifications/subscribe"

CONTAINER_PORTS: dict[str, int] = {
    "stratum0": contract.STRATUM0_PORT,
    "upload": contract.UPLOAD_PORT,
    "gateway": contract.GATEWAY_PORT,
}


class KubernetesTarget:
    """Deploys the specs to the cluster of the default Kubernetes provider."""

    kind = "kubernetes"
    #: ``clean`` runs in the upload service's scheduler; gc and resign stay CronJobs.
    embedded_jobs: tuple[str, ...] = ("clean",)

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.name = config.name
        self.namespace: pulumi.Input[str] = config.namespace
        self.namespace_resource: Optional[core.Namespace] = None
        self.pvc: Optional[core.PersistentVolumeClaim] = None
        self._sidecar: Optional[ContainerSpec] = None
        self._config_objects: dict[str, pulumi.CustomResource] = {}
        self._workloads: list[pulumi.Resource] = []
        self._services: dict[str, core.Service] = {}
        self._image_loaded: list[pulumi.Resource] = []

    # -- names and URLs -----------------------------------------------------------------------
    def _labels(self, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "cvmfs-ephemeral",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "pulumi",
        }

    def _selector(self, component: str) -> dict[str, str]:
        labels = self._labels(component)
        labels.pop("app.kubernetes.io/managed-by")
        return labels

    def _meta(self, name: str, component: str, **extra) -> meta.ObjectMetaArgs:
        return meta.ObjectMetaArgs(
            name=name, namespace=self.namespace, labels=self._labels(component), **extra
        )

    def _service_host(self, role: ServiceRole) -> str:
        domain = self.config.kubernetes.cluster_domain
        return f"{self.name}-{role}.{self.config.namespace}.svc.{domain}"

    def internal_url(self, role: ServiceRole) -> str:
        return f"http://{self._service_host(role)}:{getattr(self.config.ports, role)}"

    def _public_url(self, role: ServiceRole) -> str:
        configured = configured_public_url(self.config, role)
        if configured:
            return configured
        ingress = self.config.kubernetes.ingress
        if ingress is not None:
            scheme = "https" if ingress.tls_secret_name else "http"
            return f"{scheme}://{ingress.host}"
        return self.internal_url(role)

    def check_url(self) -> Optional[str]:
        if self.config.verify.url:
            return self.config.verify.url
        if self.config.public_url or self.config.kubernetes.ingress is not None:
            return self._public_url("stratum0") + "/cvmfs"
        return None

    def ready(self) -> Sequence[pulumi.Resource]:
        return [*self._workloads, *self._services.values()]

    @property
    def _split_read_path(self) -> bool:
        """nginx in its own Deployment: only when the data can be shared between pods."""
        return self.config.storage.kind == "persistent"

    # -- shared infrastructure ----------------------------------------------------------------
    def _durable(self) -> pulumi.ResourceOptions:
        """Options of what holds the repository data: protected (a replace fails preview) and
        retained by ``pulumi destroy``, unless ``storage.allowReplace``."""
        storage = self.config.storage
        durable = storage.kind == "persistent" and not storage.allow_replace
        return pulumi.ResourceOptions(protect=durable, retain_on_delete=durable)

    def prepare(self, parent: pulumi.Resource) -> None:
        opts = pulumi.ResourceOptions(parent=parent)
        if self.config.kubernetes.create_namespace:
            self.namespace_resource = core.Namespace(
                self.config.namespace,
                metadata=meta.ObjectMetaArgs(
                    name=self.config.namespace,
                    labels={
                        **self._labels("namespace"),
                        # Nothing here needs more than the restricted Pod Security Standard.
                        "pod-security.kubernetes.io/enforce": "restricted",
                    },
                ),
                # Deleting the namespace deletes the claim in it: it is as durable as the data.
                opts=pulumi.ResourceOptions.merge(opts, self._durable()),
            )
            # Objects take the namespace from the resource, so they depend on it.
            self.namespace = self.namespace_resource.metadata.name
        storage = self.config.storage
        name = f"{self.name}-data"
        # Says which configuration change would replace the claim, before the engine refuses.
        guard = DataStoreGuard(
            f"{name}-guard",
            DataStoreGuardArgs(
                store=f"PersistentVolumeClaim {self.config.namespace}/{name}",
                identity={
                    "kind": storage.kind,
                    "namespace": self.config.namespace,
                    "name": name,
                    "storageClass": storage.storage_class,
                    "accessMode": storage.access_mode,
                },
                allow_replace=storage.allow_replace,
            ),
            opts=opts,
        )
        if storage.kind == "persistent":
            self.pvc = core.PersistentVolumeClaim(
                f"{self.name}-data",
                metadata=self._meta(f"{self.name}-data", "data"),
                spec=core.PersistentVolumeClaimSpecArgs(
                    access_modes=[storage.access_mode],
                    resources=core.VolumeResourceRequirementsArgs(
                        requests={"storage": storage.size}
                    ),
                    storage_class_name=storage.storage_class,
                ),
                opts=pulumi.ResourceOptions.merge(
                    opts,
                    pulumi.ResourceOptions.merge(
                        self._durable(), pulumi.ResourceOptions(depends_on=[guard])
                    ),
                ),
            )
        self._network_policies(parent)

    def deployable_image(
        self, stage: str, ref: pulumi.Output[str], parent: pulumi.Resource
    ) -> pulumi.Output[str]:
        """The pushed digest (``RuntimeImage.ref``) as is: nodes resolve it themselves. For a
        kind cluster, the image is first loaded into the nodes, and the workloads wait for it."""
        cluster = self.config.kubernetes.kind_cluster
        if cluster is None:
            return ref
        load = command.local.Command(
            f"{self.name}-kind-load" + ("" if stage == "runtime" else f"-{stage}"),
            create=ref.apply(
                lambda image: f"kind load docker-image --name {shlex.quote(cluster)} "
                f"{shlex.quote(image)}"
            ),
            # A new image (new tag) loads again; the same one does nothing.
            triggers=[ref],
            opts=pulumi.ResourceOptions(parent=parent),
        )
        self._image_loaded.append(load)
        # The reference as an output of the load: everything that runs the image is ordered
        # after it through the Output graph.
        return pulumi.Output.all(load.stdout, ref).apply(lambda values: values[1])

    def _data_volume(self) -> core.VolumeArgs:
        if self.pvc is not None:
            return core.VolumeArgs(
                name="data",
                persistent_volume_claim=core.PersistentVolumeClaimVolumeSourceArgs(
                    claim_name=self.pvc.metadata.name
                ),
            )
        return core.VolumeArgs(
            name="data",
            empty_dir=core.EmptyDirVolumeSourceArgs(size_limit=self.config.storage.size),
        )

    def _fileset_object(self, fileset: FileSet, parent: pulumi.Resource) -> pulumi.CustomResource:
        """The Secret (or ConfigMap, for public files) holding a file set; created once."""
        name = f"{self.name}-{fileset.name}"
        if name not in self._config_objects:
            opts = pulumi.ResourceOptions(parent=parent)
            data = {k: fileset.files[k] for k in sorted(fileset.files)}
            if fileset.secret:
                self._config_objects[name] = core.Secret(
                    name,
                    metadata=self._meta(name, fileset.name),
                    type="Opaque",
                    string_data={k: pulumi.Output.secret(v) for k, v in data.items()},
                    opts=opts,
                )
            else:
                self._config_objects[name] = core.ConfigMap(
                    name, metadata=self._meta(name, fileset.name), data=data, opts=opts
                )
        return self._config_objects[name]

    def _fileset_volume(self, fileset: FileSet, parent: pulumi.Resource) -> core.VolumeArgs:
        # The name comes from the object's output: the pod waits for the object (and a change of
        # its content is applied before the rollout that the files hash starts).
        obj = self._fileset_object(fileset, parent)
        name = obj.metadata.name
        if fileset.secret:
            return core.VolumeArgs(
                name=fileset.name,
                secret=core.SecretVolumeSourceArgs(secret_name=name, default_mode=SECRET_MODE),
            )
        return core.VolumeArgs(
            name=fileset.name,
            config_map=core.ConfigMapVolumeSourceArgs(name=name, default_mode=PUBLIC_MODE),
        )

    # -- pods -----------------------------------------------------------------------------------
    def _container(self, spec: ContainerSpec) -> core.ContainerArgs:
        mounts = [core.VolumeMountArgs(name=f"tmp-{spec.role}", mount_path=contract.TMP_DIR)]
        if spec.data is not None:
            mounts.append(
                core.VolumeMountArgs(
                    name="data", mount_path=spec.data.path, read_only=spec.data.read_only
                )
            )
        for fileset in spec.files:
            mounts.append(
                core.VolumeMountArgs(
                    name=fileset.name, mount_path=fileset.directory, read_only=True
                )
            )
        ports = None
        readiness = liveness = startup = None
        if spec.port is not None:
            # Named after the role: unique within a pod (the writer may carry the nginx sidecar).
            ports = [core.ContainerPortArgs(name=spec.role, container_port=spec.port, protocol="TCP")]
        if spec.port is not None and spec.health_path:
            check = core.HTTPGetActionArgs(path=spec.health_path, port=spec.role)
            # Readiness: out of the Service quickly while busy or draining.
            readiness = core.ProbeArgs(
                http_get=check, period_seconds=5, timeout_seconds=3, failure_threshold=2
            )
            # Liveness: restart only a process that has not answered for two minutes, never
            # one that is slow under a large upload.
            liveness = core.ProbeArgs(
                http_get=check, period_seconds=20, timeout_seconds=10, failure_threshold=6
            )
            startup = core.ProbeArgs(http_get=check, period_seconds=2, failure_threshold=60)
        lifecycle = None
        if spec.stop_signal is not None:
            # Kubernetes sends SIGTERM: first let the endpoints drop this pod, then send the
            # process its graceful signal and wait for it (within the grace period).
            signal = spec.stop_signal.removeprefix("SIG")
            lifecycle = core.LifecycleArgs(
                pre_stop=core.LifecycleHandlerArgs(
                    exec_=core.ExecActionArgs(
                        command=[
                            "/bin/sh", "-c",
                            f"sleep {PRESTOP_DELAY_S}; kill -{signal} 1; "
                            "while kill -0 1 2>/dev/null; do sleep 1; done",
                        ]
                    )
                )
            )
        return core.ContainerArgs(
            name=spec.role,
            image=spec.image,
            image_pull_policy=self.config.image.pull_policy,
            command=spec.command,
            lifecycle=lifecycle,
            env=[core.EnvVarArgs(name=k, value=v) for k, v in sorted(spec.env.items())],
            ports=ports,
            readiness_probe=readiness,
            liveness_probe=liveness,
            startup_probe=startup,
            resources=resources(spec.resources),
            security_context=container_security_context(),
            volume_mounts=mounts,
        )

    def _pull_secrets(self) -> Optional[list[core.LocalObjectReferenceArgs]]:
        return [
            core.LocalObjectReferenceArgs(name=n) for n in self.config.kubernetes.image_pull_secrets
        ] or None

    def _pod_spec(
        self,
        containers: list[ContainerSpec],
        parent: pulumi.Resource,
        affinity: Optional[core.AffinityArgs] = None,
    ) -> core.PodSpecArgs:
        volumes = [
            core.VolumeArgs(
                name=f"tmp-{c.role}",
                empty_dir=core.EmptyDirVolumeSourceArgs(size_limit="64Mi"),
            )
            for c in containers
        ]
        if any(c.data is not None for c in containers):
            volumes.append(self._data_volume())
        seen: set[str] = set()
        for c in containers:
            for fileset in c.files:
                if fileset.name not in seen:
                    seen.add(fileset.name)
                    volumes.append(self._fileset_volume(fileset, parent))
        return core.PodSpecArgs(
            containers=[self._container(c) for c in containers],
            volumes=volumes,
            security_context=pod_security_context(),
            automount_service_account_token=False,
            enable_service_links=False,
            restart_policy="Always",
            # Longer than the runtime's drain: a rollout lets in-flight uploads finish.
            termination_grace_period_seconds=contract.STOP_GRACE_S,
            image_pull_secrets=self._pull_secrets(),
            affinity=affinity,
        )

    def _deployment(
        self,
        component: str,
        containers: list[ContainerSpec],
        strategy: apps.DeploymentStrategyArgs,
        parent: pulumi.Resource,
        replicas: int = 1,
        affinity: Optional[core.AffinityArgs] = None,
    ) -> apps.Deployment:
        name = f"{self.name}-{component}"
        deployment = apps.Deployment(
            name,
            metadata=self._meta(name, component),
            spec=apps.DeploymentSpecArgs(
                replicas=replicas,
                strategy=strategy,
                selector=meta.LabelSelectorArgs(match_labels=self._selector(component)),
                template=core.PodTemplateSpecArgs(
                    metadata=meta.ObjectMetaArgs(
                        labels=self._labels(component),
                        annotations={CONFIG_HASH_ANNOTATION: files_hash(containers)},
                    ),
                    spec=self._pod_spec(containers, parent, affinity),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=parent),
        )
        self._workloads.append(deployment)
        return deployment

    def _service(
        self, role: ServiceRole, component: str, parent: pulumi.Resource
    ) -> core.Service:
        name = f"{self.name}-{role}"
        annotations = self.config.kubernetes.service_annotations.get(role) or None
        service = core.Service(
            name,
            metadata=self._meta(
                name, role, annotations=dict(sorted(annotations.items())) if annotations else None
            ),
            spec=core.ServiceSpecArgs(
                type=self.config.kubernetes.service_type,
                selector=self._selector(component),
                ports=[
                    core.ServicePortArgs(
                        name="http",
                        port=getattr(self.config.ports, role),
                        target_port=role,
                        protocol="TCP",
                    )
                ],
            ),
            opts=pulumi.ResourceOptions(parent=parent),
        )
        self._services[role] = service
        return service

    # -- roles ----------------------------------------------------------------------------------
    def stratum0(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        """The read path: its own Deployment on persistent storage, else the writer's sidecar."""
        if not self._split_read_path:
            self._sidecar = spec
            self._service("stratum0", "upload", parent)
            return Endpoint(self.internal_url("stratum0"), self._public_url("stratum0"))
        writer = meta.LabelSelectorArgs(match_labels=self._selector("upload"))
        readers = meta.LabelSelectorArgs(match_labels=self._selector("stratum0"))
        if self.config.storage.access_mode == "ReadWriteOnce":
            # A ReadWriteOnce volume is attached to one node: read where the writer writes.
            affinity = core.AffinityArgs(
                pod_affinity=core.PodAffinityArgs(
                    required_during_scheduling_ignored_during_execution=[
                        core.PodAffinityTermArgs(
                            label_selector=writer, topology_key="kubernetes.io/hostname"
                        )
                    ]
                )
            )
        else:
            affinity = core.AffinityArgs(
                pod_anti_affinity=core.PodAntiAffinityArgs(
                    preferred_during_scheduling_ignored_during_execution=[
                        core.WeightedPodAffinityTermArgs(
                            weight=100,
                            pod_affinity_term=core.PodAffinityTermArgs(
                                label_selector=readers, topology_key="kubernetes.io/hostname"
                            ),
                        )
                    ]
                )
            )
        self._deployment(
            "stratum0",
            [spec],
            apps.DeploymentStrategyArgs(
                type="RollingUpdate",
                rolling_update=apps.RollingUpdateDeploymentArgs(max_unavailable=0, max_surge=1),
            ),
            parent,
            replicas=self.config.kubernetes.stratum0_replicas,
            affinity=affinity,
        )
        name = f"{self.name}-stratum0"
        policy.PodDisruptionBudget(
            name,
            metadata=self._meta(name, "stratum0"),
            spec=policy.PodDisruptionBudgetSpecArgs(min_available=1, selector=readers),
            opts=pulumi.ResourceOptions(parent=parent),
        )
        self._service("stratum0", "stratum0", parent)
        return Endpoint(self.internal_url("stratum0"), self._public_url("stratum0"))

    def gateway(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        self._deployment(
            "gateway",
            [spec],
            apps.DeploymentStrategyArgs(
                type="RollingUpdate",
                rolling_update=apps.RollingUpdateDeploymentArgs(max_unavailable=0, max_surge=1),
            ),
            parent,
        )
        self._service("gateway", "gateway", parent)
        return Endpoint(self.internal_url("gateway"), self._public_url("gateway"))

    def upload(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        containers = [spec]
        affinity = None
        if self._sidecar is not None:
            containers.append(self._sidecar)
        elif self.config.storage.access_mode == "ReadWriteOnce":
            # Come back to the node where the readers hold the volume attached.
            affinity = core.AffinityArgs(
                pod_affinity=core.PodAffinityArgs(
                    preferred_during_scheduling_ignored_during_execution=[
                        core.WeightedPodAffinityTermArgs(
                            weight=100,
                            pod_affinity_term=core.PodAffinityTermArgs(
                                label_selector=meta.LabelSelectorArgs(
                                    match_labels=self._selector("stratum0")
                                ),
                                topology_key="kubernetes.io/hostname",
                            ),
                        )
                    ]
                )
            )
        # Recreate, one replica: each repository has exactly one writer.
        self._deployment(
            "upload", containers, apps.DeploymentStrategyArgs(type="Recreate"), parent,
            affinity=affinity,
        )
        self._service("upload", "upload", parent)
        self._ingress(parent)
        self._http_route(parent)
        return Endpoint(self.internal_url("upload"), self._public_url("upload"))

    # -- edges ----------------------------------------------------------------------------------
    def _routes(self, expose_admin: bool) -> list[tuple[str, str, ServiceRole]]:
        """(path, match, role) of the public host. Not routed unless asked: the admin routes and
        /metrics (upload service), the gateway's publish route (only the upload service
        publishes, inside the cluster)."""
        routes: list[tuple[str, str, ServiceRole]] = [
            ("/cvmfs", "Prefix", "stratum0"),
            ("/cvmfs-meta", "Prefix", "stratum0"),
            ("/repos", "Prefix", "upload"),
        ]
        if expose_admin:
            routes.append(("/", "Prefix", "upload"))
        return routes

    def _ingress(self, parent: pulumi.Resource) -> None:
        ingress = self.config.kubernetes.ingress
        if ingress is None:
            return

        def path(prefix: str, path_type: str, role: ServiceRole) -> networking.HTTPIngressPathArgs:
            return networking.HTTPIngressPathArgs(
                path=prefix,
                path_type=path_type,
                backend=networking.IngressBackendArgs(
                    service=networking.IngressServiceBackendArgs(
                        name=self._services[role].metadata.name,
                        port=networking.ServiceBackendPortArgs(name="http"),
                    )
                ),
            )

        def one(name: str, defaults: dict[str, str], paths: list) -> None:
            annotations = {**defaults, **ingress.annotations}
            networking.Ingress(
                name,
                metadata=self._meta(name, "ingress", annotations=dict(sorted(annotations.items()))),
                spec=networking.IngressSpecArgs(
                    ingress_class_name=ingress.class_name,
                    tls=(
                        [networking.IngressTLSArgs(hosts=[ingress.host], secret_name=ingress.tls_secret_name)]
                        if ingress.tls_secret_name
                        else None
                    ),
                    rules=[
                        networking.IngressRuleArgs(
                            host=ingress.host,
                            http=networking.HTTPIngressRuleValueArgs(paths=paths),
                        )
                    ],
                ),
                opts=pulumi.ResourceOptions(parent=parent),
            )

        # Uploads stream through: no request buffering (ingress-nginx would spool the whole
        # artifact to disk first) and no body size limit (the upload service enforces its own).
        one(
            self.name,
            {
                "nginx.ingress.kubernetes.io/proxy-body-size": "0",
                "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
            },
            [path(p, t, r) for p, t, r in self._routes(ingress.expose_admin)],
        )
        timeout = str(ingress.notifications_timeout_s)
        # Subscriptions are long-lived streams: no response buffering, long read/send timeouts.
        one(
            f"{self.name}-notifications",
            {
                "nginx.ingress.kubernetes.io/proxy-buffering": "off",
                "nginx.ingress.kubernetes.io/proxy-read-timeout": timeout,
                "nginx.ingress.kubernetes.io/proxy-send-timeout": timeout,
            },
            [path(SUBSCRIBE_PATH, "Exact", "gateway")],
        )

    def _http_route(self, parent: pulumi.Resource) -> None:
        """A Gateway API HTTPRoute (no typed class in pulumi-kubernetes: a CustomResource)."""
        route = self.config.kubernetes.http_route
        if route is None:
            return

        def backend(role: ServiceRole) -> dict:
            return {
                "name": self._services[role].metadata.name,
                "port": getattr(self.config.ports, role),
            }

        rules = [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": p}}],
                "backendRefs": [backend(r)],
            }
            for p, _, r in self._routes(route.expose_admin)
        ]
        rules.append(
            {
                "matches": [{"path": {"type": "Exact", "value": SUBSCRIBE_PATH}}],
                "backendRefs": [backend("gateway")],
                # "0s" disables the timeouts: the stream stays open as long as the client wants.
                "timeouts": {"request": "0s", "backendRequest": "0s"},
            }
        )
        parent_refs = [
            {
                k: v
                for k, v in {
                    "name": ref.name,
                    "namespace": ref.namespace,
                    "sectionName": ref.section_name,
                }.items()
                if v is not None
            }
            for ref in route.parent_refs
        ]
        name = self.name
        k8s.apiextensions.CustomResource(
            name,
            api_version="gateway.networking.k8s.io/v1",
            kind="HTTPRoute",
            metadata=self._meta(name, "http-route"),
            spec={
                "parentRefs": parent_refs,
                **({"hostnames": list(route.hostnames)} if route.hostnames else {}),
                "rules": rules,
            },
            opts=pulumi.ResourceOptions(parent=parent),
        )

    def _network_policies(self, parent: pulumi.Resource) -> None:
        """Upload API: from the ingress controller and the maintenance jobs only. Gateway: from
        the upload service (publish) and the ingress controller (subscriptions; the Ingress does
        not route publish). Stratum 0 is public and left open."""
        spec = self.config.kubernetes.network_policy
        if not spec.enabled:
            return
        controller = networking.NetworkPolicyPeerArgs(
            namespace_selector=meta.LabelSelectorArgs(
                match_labels={"kubernetes.io/metadata.name": spec.ingress_namespace}
            )
        )

        def pods(component: str) -> networking.NetworkPolicyPeerArgs:
            return networking.NetworkPolicyPeerArgs(
                pod_selector=meta.LabelSelectorArgs(match_labels=self._selector(component))
            )

        allowed = {
            "upload": [controller, pods("maintenance")],
            "gateway": [controller, pods("upload")],
        }
        for role, peers in allowed.items():
            name = f"{self.name}-{role}"
            networking.NetworkPolicy(
                name,
                metadata=self._meta(name, "network-policy"),
                spec=networking.NetworkPolicySpecArgs(
                    pod_selector=meta.LabelSelectorArgs(match_labels=self._selector(role)),
                    policy_types=["Ingress"],
                    ingress=[
                        networking.NetworkPolicyIngressRuleArgs(
                            from_=peers,
                            ports=[
                                networking.NetworkPolicyPortArgs(
                                    port=CONTAINER_PORTS[role], protocol="TCP"
                                )
                            ],
                        )
                    ],
                ),
                opts=pulumi.ResourceOptions(parent=parent),
            )

    def maintenance(self, spec: MaintenanceSpec, parent: pulumi.Resource) -> None:
        """One CronJob per job not embedded in the upload service; the token comes from a
        Secret through ``secretKeyRef`` (its name an output of the Secret: created first)."""
        opts = pulumi.ResourceOptions(parent=parent)
        token_name = f"{self.name}-maintenance-token"
        token_secret = core.Secret(
            token_name,
            metadata=self._meta(token_name, "maintenance"),
            type="Opaque",
            string_data={"token": pulumi.Output.secret(spec.token)},
            opts=opts,
        )
        for job, (command_line, schedule) in spec.jobs.items():
            if job in self.embedded_jobs:
                continue
            name = f"{self.name}-{job}"
            container = core.ContainerArgs(
                name=job,
                image=spec.image,
                image_pull_policy=self.config.image.pull_policy,
                command=command_line,
                env=[
                    *(core.EnvVarArgs(name=k, value=v) for k, v in sorted(spec.env.items())),
                    core.EnvVarArgs(
                        name=contract.TOKEN_ENV,
                        value_from=core.EnvVarSourceArgs(
                            secret_key_ref=core.SecretKeySelectorArgs(
                                name=token_secret.metadata.name, key="token"
                            )
                        ),
                    ),
                ],
                resources=resources(spec.resources),
                security_context=container_security_context(),
                volume_mounts=[core.VolumeMountArgs(name="tmp", mount_path=contract.TMP_DIR)],
            )
            cron = batch.CronJob(
                name,
                metadata=self._meta(name, "maintenance"),
                spec=batch.CronJobSpecArgs(
                    schedule=schedule,
                    concurrency_policy="Forbid",
                    successful_jobs_history_limit=1,
                    failed_jobs_history_limit=3,
                    starting_deadline_seconds=300,
                    job_template=batch.JobTemplateSpecArgs(
                        metadata=meta.ObjectMetaArgs(labels=self._labels("maintenance")),
                        spec=batch.JobSpecArgs(
                            backoff_limit=1,
                            active_deadline_seconds=3600,
                            ttl_seconds_after_finished=3600,
                            template=core.PodTemplateSpecArgs(
                                metadata=meta.ObjectMetaArgs(labels=self._labels("maintenance")),
                                spec=core.PodSpecArgs(
                                    containers=[container],
                                    volumes=[
                                        core.VolumeArgs(
                                            name="tmp",
                                            empty_dir=core.EmptyDirVolumeSourceArgs(
                                                size_limit="64Mi"
                                            ),
                                        )
                                    ],
                                    security_context=pod_security_context(),
                                    automount_service_account_token=False,
                                    enable_service_links=False,
                                    restart_policy="Never",
                                    termination_grace_period_seconds=contract.STOP_GRACE_S,
                                    image_pull_secrets=self._pull_secrets(),
                                ),
                            ),
                        ),
                    ),
                ),
                opts=opts,
            )
            self._workloads.append(cron)

    # -- site cache (squid) ---------------------------------------------------------------------
    def site_cache(self, spec: CacheSpec, parent: pulumi.Resource) -> Endpoint:
        """``<name>-site-cache``: a Deployment (``replicas``) or a DaemonSet (one per node, its
        Service keeps traffic on the node: ``internalTrafficPolicy: Local``) of squid, with
        ConfigMap ``<name>-site-cache`` (squid.conf), the disk cache on an emptyDir sized for
        it, HTTP probes on a file squid serves itself, and Service ``<name>-site-cache``."""
        component = "site-cache"
        name = f"{self.name}-{component}"
        opts = pulumi.ResourceOptions(parent=parent)
        config_volume = self._fileset_volume(spec.config, parent)
        volumes = [
            core.VolumeArgs(
                name="tmp", empty_dir=core.EmptyDirVolumeSourceArgs(size_limit="64Mi")
            ),
            config_volume,
        ]
        mounts = [
            core.VolumeMountArgs(name="tmp", mount_path=contract.TMP_DIR),
            core.VolumeMountArgs(
                name=config_volume.name, mount_path=spec.config.directory, read_only=True
            ),
        ]
        if spec.disk_cache_mb > 0:
            # squid's cache_dir size plus room for its swap.state and directory overhead.
            limit_mi = spec.disk_cache_mb * 23 // 20 + 64
            volumes.append(
                core.VolumeArgs(
                    name="cache",
                    empty_dir=core.EmptyDirVolumeSourceArgs(size_limit=f"{limit_mi}Mi"),
                )
            )
            mounts.append(core.VolumeMountArgs(name="cache", mount_path=spec.cache_dir))

        def probe(**extra) -> core.ProbeArgs:
            return core.ProbeArgs(
                http_get=core.HTTPGetActionArgs(path=spec.probe_path, port="proxy"),
                timeout_seconds=5,
                **extra,
            )

        container = core.ContainerArgs(
            name="squid",
            image=spec.image,
            image_pull_policy=self.config.image.pull_policy,
            command=spec.command,
            ports=[core.ContainerPortArgs(name="proxy", container_port=spec.port, protocol="TCP")],
            startup_probe=probe(period_seconds=2, failure_threshold=90),
            readiness_probe=probe(period_seconds=10, failure_threshold=3),
            liveness_probe=probe(period_seconds=20, failure_threshold=3),
            resources=resources(spec.resources),
            security_context=container_security_context(),
            volume_mounts=mounts,
        )
        pull_secrets = [
            core.LocalObjectReferenceArgs(name=n) for n in self.config.kubernetes.image_pull_secrets
        ] or None
        conf_digest = hashlib.sha256(
            "".join(f"{k}\0{v}" for k, v in sorted(spec.config.files.items())).encode()
        ).hexdigest()
        template = core.PodTemplateSpecArgs(
            metadata=meta.ObjectMetaArgs(
                labels=self._labels(component),
                annotations={CONFIG_HASH_ANNOTATION: conf_digest},
            ),
            spec=core.PodSpecArgs(
                containers=[container],
                volumes=volumes,
                security_context=pod_security_context(),
                automount_service_account_token=False,
                enable_service_links=False,
                restart_policy="Always",
                image_pull_secrets=pull_secrets,
                # squid finishes the answers in flight (shutdown_lifetime 3 s).
                termination_grace_period_seconds=10,
            ),
        )
        selector = meta.LabelSelectorArgs(match_labels=self._selector(component))
        if spec.kind == "DaemonSet":
            workload: pulumi.Resource = apps.DaemonSet(
                name,
                metadata=self._meta(name, component),
                spec=apps.DaemonSetSpecArgs(
                    selector=selector,
                    update_strategy=apps.DaemonSetUpdateStrategyArgs(type="RollingUpdate"),
                    template=template,
                ),
                opts=opts,
            )
        else:
            workload = apps.Deployment(
                name,
                metadata=self._meta(name, component),
                spec=apps.DeploymentSpecArgs(
                    replicas=spec.replicas,
                    strategy=apps.DeploymentStrategyArgs(
                        type="RollingUpdate",
                        rolling_update=apps.RollingUpdateDeploymentArgs(
                            max_unavailable=0, max_surge=1
                        ),
                    ),
                    selector=selector,
                    template=template,
                ),
                opts=opts,
            )
        self._workloads.append(workload)
        site = self.config.site_cache
        core.Service(
            name,
            metadata=self._meta(name, component),
            spec=core.ServiceSpecArgs(
                type=self.config.kubernetes.service_type,
                selector=self._selector(component),
                internal_traffic_policy="Local" if spec.kind == "DaemonSet" else None,
                ports=[
                    core.ServicePortArgs(
                        name="proxy", port=site.port, target_port=spec.port, protocol="TCP"
                    )
                ],
            ),
            opts=opts,
        )
        internal = f"http://{name}.{self.config.namespace}.svc.cluster.local:{site.port}"
        return Endpoint(internal_url=internal, public_url=site.public_url or internal)
