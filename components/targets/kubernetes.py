"""Kubernetes target: a namespace with Deployments, Services, Secrets and CronJobs.

What it creates (``<name>`` is the stack's ``name``, all in the namespace ``kubernetes.namespace``,
default ``<name>``):

- Namespace (unless ``kubernetes.createNamespace`` is false);
- PersistentVolumeClaim ``<name>-data`` (``storage.kind: persistent``), else an emptyDir;
- Deployment ``<name>-upload`` (one replica, ``Recreate``: one writer per repository): the
  ``upload`` container and, as a sidecar sharing the data volume read-only, the ``stratum0``
  nginx container; Services ``<name>-upload`` and ``<name>-stratum0``;
- Deployment ``<name>-gateway`` and Service ``<name>-gateway``: its own rollout, so an upload
  service update never drops client subscriptions;
- Secret ``<name>-keys`` (the repository keys), Secret ``<name>-tokens`` (the upload tokens file),
  ConfigMap ``<name>-public-keys`` (what the gateway verifies with), Secret
  ``<name>-maintenance-token``; mounted read-only, or read with ``secretKeyRef``;
- CronJobs ``<name>-clean``, ``<name>-gc``, ``<name>-resign`` (``concurrencyPolicy: Forbid``);
- optionally an Ingress routing ``/cvmfs``, ``/cvmfs-meta`` to stratum 0,
  ``/api/v1/notifications`` to the gateway and everything else to the upload API.

Every container: non-root (10001), read-only root filesystem, no privilege escalation, all
capabilities dropped, RuntimeDefault seccomp, an emptyDir on /tmp, no service account token.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import pulumi
import pulumi_kubernetes as k8s

from .. import contract
from ..config import ResourceSpec, StackConfig
from ..spec import ContainerSpec, Endpoint, FileSet, MaintenanceSpec
from .base import ServiceRole, configured_public_url

core = k8s.core.v1
apps = k8s.apps.v1
batch = k8s.batch.v1
meta = k8s.meta.v1
networking = k8s.networking.v1

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
        seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault"),
    )


def resources(spec: ResourceSpec) -> core.ResourceRequirementsArgs:
    limits = {"memory": spec.memory_limit}
    if spec.cpu_limit:
        limits["cpu"] = spec.cpu_limit
    return core.ResourceRequirementsArgs(
        requests={"cpu": spec.cpu_request, "memory": spec.memory_request}, limits=limits
    )


class KubernetesTarget:
    """Deploys the specs to the cluster of the default Kubernetes provider."""

    kind = "kubernetes"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.name = config.name
        self.namespace: pulumi.Input[str] = config.namespace
        self.namespace_resource: Optional[core.Namespace] = None
        self.pvc: Optional[core.PersistentVolumeClaim] = None
        self._sidecar: Optional[ContainerSpec] = None
        self._config_objects: dict[str, pulumi.Resource] = {}
        self._workloads: list[pulumi.Resource] = []
        self._services: dict[str, core.Service] = {}

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
        return f"{self.name}-{role}.{self.config.namespace}.svc.cluster.local"

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
                opts=pulumi.ResourceOptions.merge(opts, self._durable()),
            )

    def deployable_image(
        self, ref: pulumi.Output[str], parent: pulumi.Resource
    ) -> pulumi.Output[str]:
        """The pushed digest (``RuntimeImage.ref``) as is: nodes resolve it themselves."""
        return ref

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

    def _fileset_object(self, fileset: FileSet, parent: pulumi.Resource) -> str:
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
        return name

    def _fileset_volume(self, fileset: FileSet, parent: pulumi.Resource) -> core.VolumeArgs:
        name = self._fileset_object(fileset, parent)
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
        probe = None
        ports = None
        if spec.port is not None:
            ports = [core.ContainerPortArgs(name="http", container_port=spec.port, protocol="TCP")]
        if spec.port is not None and spec.health_path:
            probe = core.ProbeArgs(
                http_get=core.HTTPGetActionArgs(path=spec.health_path, port="http"),
                period_seconds=10,
                timeout_seconds=5,
                failure_threshold=3,
            )
        return core.ContainerArgs(
            name=spec.role,
            image=spec.image,
            image_pull_policy=self.config.image.pull_policy,
            command=spec.command,
            env=[core.EnvVarArgs(name=k, value=v) for k, v in sorted(spec.env.items())],
            ports=ports,
            readiness_probe=probe,
            liveness_probe=probe,
            startup_probe=(
                core.ProbeArgs(
                    http_get=core.HTTPGetActionArgs(path=spec.health_path, port="http"),
                    period_seconds=2,
                    failure_threshold=60,
                )
                if probe is not None
                else None
            ),
            resources=resources(spec.resources),
            security_context=container_security_context(),
            volume_mounts=mounts,
        )

    def _pod_spec(
        self,
        containers: list[ContainerSpec],
        parent: pulumi.Resource,
        restart_policy: str = "Always",
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
        pull_secrets = [
            core.LocalObjectReferenceArgs(name=n) for n in self.config.kubernetes.image_pull_secrets
        ] or None
        return core.PodSpecArgs(
            containers=[self._container(c) for c in containers],
            volumes=volumes,
            security_context=pod_security_context(),
            automount_service_account_token=False,
            enable_service_links=False,
            restart_policy=restart_policy,
            image_pull_secrets=pull_secrets,
        )

    def _deployment(
        self,
        component: str,
        containers: list[ContainerSpec],
        strategy: str,
        parent: pulumi.Resource,
    ) -> apps.Deployment:
        name = f"{self.name}-{component}"
        deployment = apps.Deployment(
            name,
            metadata=self._meta(name, component),
            spec=apps.DeploymentSpecArgs(
                replicas=1,
                strategy=apps.DeploymentStrategyArgs(type=strategy),
                selector=meta.LabelSelectorArgs(match_labels=self._selector(component)),
                template=core.PodTemplateSpecArgs(
                    metadata=meta.ObjectMetaArgs(
                        labels=self._labels(component),
                        annotations={CONFIG_HASH_ANNOTATION: files_hash(containers)},
                    ),
                    spec=self._pod_spec(containers, parent),
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
        container_port = {
            "stratum0": contract.STRATUM0_PORT,
            "upload": contract.UPLOAD_PORT,
            "gateway": contract.GATEWAY_PORT,
        }[role]
        service = core.Service(
            name,
            metadata=self._meta(name, role),
            spec=core.ServiceSpecArgs(
                type=self.config.kubernetes.service_type,
                selector=self._selector(component),
                ports=[
                    core.ServicePortArgs(
                        name="http",
                        port=getattr(self.config.ports, role),
                        target_port=container_port,
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
        """nginx becomes a sidecar of the upload pod (same data volume); here only its Service."""
        self._sidecar = spec
        self._service("stratum0", "upload", parent)
        return Endpoint(self.internal_url("stratum0"), self._public_url("stratum0"))

    def gateway(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        self._deployment("gateway", [spec], "RollingUpdate", parent)
        self._service("gateway", "gateway", parent)
        return Endpoint(self.internal_url("gateway"), self._public_url("gateway"))

    def upload(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        if self._sidecar is None:
            raise RuntimeError("KubernetesTarget.stratum0 must be called before upload")
        # Recreate: the data volume is ReadWriteOnce and each repository has one writer.
        self._deployment("upload", [spec, self._sidecar], "Recreate", parent)
        self._service("upload", "upload", parent)
        self._ingress(parent)
        return Endpoint(self.internal_url("upload"), self._public_url("upload"))

    def _ingress(self, parent: pulumi.Resource) -> None:
        ingress = self.config.kubernetes.ingress
        if ingress is None:
            return

        def path(prefix: str, role: ServiceRole) -> networking.HTTPIngressPathArgs:
            return networking.HTTPIngressPathArgs(
                path=prefix,
                path_type="Prefix",
                backend=networking.IngressBackendArgs(
                    service=networking.IngressServiceBackendArgs(
                        name=f"{self.name}-{role}",
                        port=networking.ServiceBackendPortArgs(name="http"),
                    )
                ),
            )

        name = self.name
        networking.Ingress(
            name,
            metadata=self._meta(name, "ingress", annotations=dict(sorted(ingress.annotations.items())) or None),
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
                        http=networking.HTTPIngressRuleValueArgs(
                            paths=[
                                path("/cvmfs", "stratum0"),
                                path("/cvmfs-meta", "stratum0"),
                                path("/api/v1/notifications", "gateway"),
                                path("/", "upload"),
                            ]
                        ),
                    )
                ],
            ),
            opts=pulumi.ResourceOptions(parent=parent),
        )

    def maintenance(self, spec: MaintenanceSpec, parent: pulumi.Resource) -> None:
        """One CronJob per job; the token comes from a Secret through ``secretKeyRef``."""
        opts = pulumi.ResourceOptions(parent=parent)
        token_name = f"{self.name}-maintenance-token"
        core.Secret(
            token_name,
            metadata=self._meta(token_name, "maintenance"),
            type="Opaque",
            string_data={"token": pulumi.Output.secret(spec.token)},
            opts=opts,
        )
        for job, (command, schedule) in spec.jobs.items():
            name = f"{self.name}-{job}"
            container = core.ContainerArgs(
                name=job,
                image=spec.image,
                image_pull_policy=self.config.image.pull_policy,
                command=command,
                env=[
                    *(core.EnvVarArgs(name=k, value=v) for k, v in sorted(spec.env.items())),
                    core.EnvVarArgs(
                        name=contract.TOKEN_ENV,
                        value_from=core.EnvVarSourceArgs(
                            secret_key_ref=core.SecretKeySelectorArgs(
                                name=token_name, key="token"
                            )
                        ),
                    ),
                ],
                resources=resources(spec.resources),
                security_context=container_security_context(),
                volume_mounts=[core.VolumeMountArgs(name="tmp", mount_path=contract.TMP_DIR)],
            )
            pull_secrets = [
                core.LocalObjectReferenceArgs(name=n)
                for n in self.config.kubernetes.image_pull_secrets
            ] or None
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
                                    image_pull_secrets=pull_secrets,
                                ),
                            ),
                        ),
                    ),
                ),
                opts=opts,
            )
            self._workloads.append(cron)
