"""Docker target: one host, one bridge network, one container per role.

What it creates (``<name>`` is the stack's ``name``):

- ``docker.RemoteImage`` ``<name>-runtime-image`` and ``<name>-stratum0-image``: the image ids
  the engine holds for the built (or pulled) references; containers run those ids;
- network ``<name>``; each container joins it under its role as alias (``stratum0``, ``upload``,
  ``gateway``), which is how the containers find each other;
- volume ``<name>-data``: the repository data, read-write in ``upload`` and read-only in
  ``stratum0`` (a local volume, or a tmpfs volume for ``storage.kind: ephemeral``). A persistent
  one is protected and retained on delete unless ``storage.allowReplace``: its identity inputs
  (name, driver, driver options, labels) all force a replace, which would drop the data;
- per container with key or token files, a volume ``<name>-<role>-files-<digest>`` (the digest of
  the file names: a removed repository's keys leave with the old volume) mounted read-only on
  ``/etc/cvmfs-ephemeral``. The files get there through a loader container
  ``<name>-<role>-files`` (created, never started, no network) that receives them as the
  provider's ``uploads``, owned by the runtime user, mode 0400 (0444 for public keys): the
  provider copies uploads into the container at ``/``, which Docker refuses for a read-only root
  filesystem. Secrets never become environment variables, labels or image layers;
- containers ``<name>-stratum0`` (nginx), ``<name>-gateway``, ``<name>-upload`` and
  ``<name>-maintenance`` (the runtime's scheduler): user 10001, read-only root filesystem, a tmpfs
  on /tmp, all capabilities dropped, ``no-new-privileges``, a restart policy, a health check,
  rotated json-file logs, and a stop grace longer than the runtime's drain;
- with ``siteCache.enabled``: container ``<name>-site-cache`` (squid, alias ``site-cache``), its
  files volume and the disk-cache volume ``<name>-site-cache`` (see ``site_cache``).

Every resource with a fixed engine name (network, volumes, containers) is
``delete_before_replace``: Docker refuses a second network or container of the same name, and
``docker volume create`` silently returns the existing volume of that name, which Pulumi would
then delete as "the old one".
"""

from __future__ import annotations

from typing import Optional, Sequence

import hashlib

import pulumi
import pulumi_docker as docker

from .. import contract
from ..config import StackConfig, quantity_bytes
from ..spec import CacheSpec, ContainerSpec, Endpoint, FileSet, MaintenanceSpec
from ..store_guard import DataStoreGuard, DataStoreGuardArgs
from .base import ServiceRole, configured_public_url

#: Mount options of the per-container /tmp.
TMPFS_OPTIONS = "rw,noexec,nosuid,nodev,size=64m"
LABEL_PREFIX = "io.cvmfs-ephemeral"


class DockerTarget:
    """Deploys the specs as Docker containers on the provider's engine."""

    kind = "docker"
    #: The maintenance container runs all three jobs (one scheduler for the deployment).
    embedded_jobs: tuple[str, ...] = ()

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.name = config.name
        self.network: Optional[docker.Network] = None
        self.data_volume: Optional[docker.Volume] = None
        self.containers: list[docker.Container] = []

    # -- URLs ---------------------------------------------------------------------------------
    def internal_url(self, role: ServiceRole) -> str:
        port = {
            "stratum0": contract.STRATUM0_PORT,
            "upload": contract.UPLOAD_PORT,
            "gateway": contract.GATEWAY_PORT,
        }[role]
        return f"http://{role}:{port}"

    def _public_url(self, role: ServiceRole) -> str:
        configured = configured_public_url(self.config, role)
        if configured:
            return configured
        port = getattr(self.config.ports, role)
        return f"http://localhost:{port}"

    def check_url(self) -> Optional[str]:
        if self.config.verify.url:
            return self.config.verify.url
        bind = self.config.docker.bind_address
        host = "127.0.0.1" if bind in ("0.0.0.0", "127.0.0.1", "::") else bind
        return f"http://{host}:{self.config.ports.stratum0}/cvmfs"

    def ready(self) -> Sequence[pulumi.Resource]:
        return list(self.containers)

    # -- shared infrastructure ----------------------------------------------------------------
    def _labels(self, role: str) -> list[docker.ContainerLabelArgs]:
        return [
            docker.ContainerLabelArgs(label=f"{LABEL_PREFIX}.instance", value=self.name),
            docker.ContainerLabelArgs(label=f"{LABEL_PREFIX}.role", value=role),
        ]

    def prepare(self, parent: pulumi.Resource) -> None:
        opts = pulumi.ResourceOptions(parent=parent, delete_before_replace=True)
        self.network = docker.Network(
            self.name,
            name=self.name,
            driver="bridge",
            labels=[docker.NetworkLabelArgs(label=f"{LABEL_PREFIX}.instance", value=self.name)],
            opts=opts,
        )
        storage = self.config.storage
        driver_opts = None
        if storage.kind == "ephemeral":
            # A tmpfs-backed local volume can still be shared between containers.
            size = quantity_bytes(storage.size)
            driver_opts = {
                "type": "tmpfs",
                "device": "tmpfs",
                "o": f"size={size},uid={contract.UID},gid={contract.GID},mode=0750",
            }
        # The data outlives the stack's resources: protected against a replace (which fails
        # preview) and kept by `pulumi destroy`, unless the configuration allows its loss. The
        # guard says which configuration change would replace it, before the engine refuses.
        durable = storage.kind == "persistent" and not storage.allow_replace
        guard = DataStoreGuard(
            f"{self.name}-data-guard",
            DataStoreGuardArgs(
                store=f"docker volume {self.name}-data",
                identity={
                    "kind": storage.kind,
                    "name": f"{self.name}-data",
                    "driverOpts": driver_opts or {},
                },
                allow_replace=storage.allow_replace,
            ),
            opts=pulumi.ResourceOptions(parent=parent),
        )
        self.data_volume = docker.Volume(
            f"{self.name}-data",
            name=f"{self.name}-data",
            driver="local",
            driver_opts=driver_opts,
            labels=[
                docker.VolumeLabelArgs(label=f"{LABEL_PREFIX}.instance", value=self.name),
                docker.VolumeLabelArgs(label=f"{LABEL_PREFIX}.storage", value=storage.kind),
            ],
            opts=pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(
                    protect=durable, retain_on_delete=durable, depends_on=[guard]
                ),
            ),
        )

    def deployable_image(
        self, stage: str, ref: pulumi.Output[str], parent: pulumi.Resource
    ) -> pulumi.Output[str]:
        """The image id on the engine: a rebuilt tag (or a pulled digest) is a new id, so the
        containers are replaced whenever what they would run changes."""
        image = docker.RemoteImage(
            f"{self.name}-{stage}-image",
            name=ref,
            keep_locally=True,
            opts=pulumi.ResourceOptions(parent=parent),
        )
        return image.image_id

    # -- containers ---------------------------------------------------------------------------
    def _hardening(self, role: str) -> dict:
        """The settings every long-running container shares, the site cache included: the
        runtime user, a read-only root with a noexec tmpfs on /tmp, no capabilities,
        ``no-new-privileges``, the stack's restart policy, the network under the role's alias,
        and rotated json-file logs. One place, so that no role can drift from the others."""
        assert self.network is not None, "prepare() first"
        return dict(
            user=f"{contract.UID}:{contract.GID}",
            read_only=True,
            tmpfs={contract.TMP_DIR: TMPFS_OPTIONS},
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges:true"],
            privileged=False,
            restart=self.config.docker.restart,
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=self.network.name, aliases=[role])
            ],
            log_driver="json-file",
            log_opts={
                "max-size": self.config.docker.log_max_size,
                "max-file": str(self.config.docker.log_max_files),
            },
        )

    def _container(
        self,
        role: str,
        parent: pulumi.Resource,
        *,
        image: pulumi.Input[str],
        command: list[str],
        env: dict[str, str],
        port: Optional[int],
        published: Optional[int],
        memory_bytes: int,
        files: list[FileSet],
        data: Optional[tuple[str, bool]],
        health_port: Optional[int],
        stop_signal: Optional[str] = None,
    ) -> docker.Container:
        assert self.network is not None and self.data_volume is not None, "prepare() first"
        volumes: list[docker.ContainerVolumeArgs] = []
        if data is not None:
            path, read_only = data
            volumes.append(
                docker.ContainerVolumeArgs(
                    volume_name=self.data_volume.name, container_path=path, read_only=read_only
                )
            )
        depends_on: list[pulumi.Resource] = []
        labels = self._labels(role)
        if files:
            loader = self._files_loader(role, image, files, parent)
            # The service sees its files read-only; a new loader (changed content) carries a new
            # id, and the label makes the service container follow it.
            volumes.append(
                docker.ContainerVolumeArgs(
                    volume_name=loader.volume_name, container_path=contract.CONFIG_DIR,
                    read_only=True,
                )
            )
            labels.append(docker.ContainerLabelArgs(label=f"{LABEL_PREFIX}.files", value=loader.id))
            depends_on.append(loader.container)
        if health_port is not None:
            healthcheck = docker.ContainerHealthcheckArgs(
                tests=["CMD", *contract.healthcheck_command(health_port)],
                interval="10s",
                timeout="5s",
                retries=3,
                start_period="20s",
            )
        else:
            healthcheck = docker.ContainerHealthcheckArgs(tests=["NONE"])
        ports = []
        if port is not None and published is not None:
            ports.append(
                docker.ContainerPortArgs(
                    internal=port,
                    external=published,
                    ip=self.config.docker.bind_address,
                    protocol="tcp",
                )
            )
        container = docker.Container(
            f"{self.name}-{role}",
            name=f"{self.name}-{role}",
            image=image,
            command=command,
            envs=[f"{key}={value}" for key, value in sorted(env.items())],
            **self._hardening(role),
            ports=ports,
            volumes=volumes,
            healthcheck=healthcheck,
            memory=max(6, memory_bytes // 2**20),
            labels=labels,
            # Wait until the health check passes, so the post-deploy check runs against a ready
            # service and a crash-looping container fails `pulumi up`.
            wait=health_port is not None,
            wait_timeout=120 if health_port is not None else None,
            must_run=True,
            # SIGTERM, then the runtime drains for DRAIN_S: kill only after that (on replace,
            # destroy, and any `docker stop`).
            destroy_grace_seconds=contract.STOP_GRACE_S,
            stop_timeout=contract.STOP_GRACE_S,
            stop_signal=stop_signal,
            opts=pulumi.ResourceOptions(
                parent=parent, depends_on=depends_on, delete_before_replace=True
            ),
        )
        self.containers.append(container)
        return container

    def _role_volume(
        self, resource_name: str, engine_name: str, role: str, opts: pulumi.ResourceOptions
    ) -> docker.Volume:
        """A local volume of one role, labelled with the stack instance and the role."""
        return docker.Volume(
            resource_name,
            name=engine_name,
            driver="local",
            labels=[
                docker.VolumeLabelArgs(label=f"{LABEL_PREFIX}.instance", value=self.name),
                docker.VolumeLabelArgs(label=f"{LABEL_PREFIX}.role", value=role),
            ],
            opts=opts,
        )

    def _files_loader(
        self, role: str, image: pulumi.Input[str], files: list[FileSet], parent: pulumi.Resource
    ) -> "_Loader":
        """A never-started container whose only job is to receive the files into a volume.

        The provider copies ``uploads`` into a created container at ``/``, which Docker refuses
        for a read-only root filesystem. So the files go through this loader (created, never
        started, no network) into ``<name>-<role>-files``, which the service mounts read-only.
        """
        opts = pulumi.ResourceOptions(parent=parent, delete_before_replace=True)
        listing = sorted(f"{fs.directory}/{f}" for fs in files for f in fs.files)
        digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()[:8]
        # A new file list (a repository removed) makes a new, empty volume, so files that are
        # no longer declared (a removed repository's private keys) leave with the old one.
        volume = self._role_volume(f"{self.name}-{role}-files", f"{self.name}-{role}-files-{digest}",
                                   role, opts)
        uploads = []
        for fileset in files:
            for filename in sorted(fileset.files):
                content = fileset.files[filename]
                uploads.append(
                    docker.ContainerUploadArgs(
                        file=f"{fileset.directory}/{filename}",
                        content=pulumi.Output.secret(content) if fileset.secret else content,
                        owner=str(contract.UID),
                        group=str(contract.GID),
                        permissions="0400" if fileset.secret else "0444",
                    )
                )
        container = docker.Container(
            f"{self.name}-{role}-files",
            name=f"{self.name}-{role}-files",
            image=image,
            command=["true"],
            user=f"{contract.UID}:{contract.GID}",
            network_mode="none",
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges:true"],
            volumes=[
                docker.ContainerVolumeArgs(
                    volume_name=volume.name, container_path=contract.CONFIG_DIR, read_only=False
                )
            ],
            uploads=uploads,
            labels=self._labels(f"{role}-files"),
            start=False,
            must_run=False,
            opts=opts,
        )
        return _Loader(container=container, volume_name=volume.name)

    def _service(self, role: ServiceRole, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        self._container(
            role,
            parent,
            image=spec.image,
            command=spec.command,
            env=spec.env,
            port=spec.port,
            published=getattr(self.config.ports, role),
            memory_bytes=spec.resources.memory_limit_bytes(),
            files=spec.files,
            data=(spec.data.path, spec.data.read_only) if spec.data else None,
            health_port=spec.port if spec.health_path else None,
            stop_signal=spec.stop_signal,
        )
        return Endpoint(internal_url=self.internal_url(role), public_url=self._public_url(role))

    def stratum0(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        return self._service("stratum0", spec, parent)

    def gateway(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        return self._service("gateway", spec, parent)

    def upload(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        return self._service("upload", spec, parent)

    def maintenance(self, spec: MaintenanceSpec, parent: pulumi.Resource) -> None:
        """The runtime's scheduler in one long-running container, its token in a file."""
        env = {**spec.env, **spec.scheduler_env, contract.TOKEN_FILE_ENV: contract.TOKEN_FILE}
        token = FileSet(
            name="tokens",
            directory=contract.SECRETS_DIR,
            files={contract.TOKEN_FILE.rsplit("/", 1)[1]: spec.token},
            secret=True,
        )
        self._container(
            "maintenance",
            parent,
            image=spec.image,
            command=spec.scheduler_command,
            env=env,
            port=None,
            published=None,
            memory_bytes=spec.resources.memory_limit_bytes(),
            files=[token],
            data=None,
            health_port=None,
        )


    # -- site cache (squid) ---------------------------------------------------------------------
    def site_cache(self, spec: CacheSpec, parent: pulumi.Resource) -> Endpoint:
        """``<name>-site-cache``: squid, its configuration from a files volume (read-only), its
        disk cache on the named volume ``<name>-site-cache`` (kept across container
        replacement), the same hardening as every container; published on ``siteCache.port``.

        Its stop grace is the engine's default 10 s, like the Kubernetes target's termination
        grace: squid finishes the answers in flight within ``shutdown_lifetime`` (3 s)."""
        assert self.network is not None, "prepare() first"
        role = "site-cache"
        # fixed engine names: delete before replace (see the module docstring)
        opts = pulumi.ResourceOptions(parent=parent, delete_before_replace=True)
        loader = self._files_loader(role, spec.image, [spec.config], parent)
        volumes = [
            docker.ContainerVolumeArgs(
                volume_name=loader.volume_name, container_path=contract.CONFIG_DIR,
                read_only=True,
            )
        ]
        if spec.disk_cache_mb > 0:
            cache = self._role_volume(f"{self.name}-{role}", f"{self.name}-{role}", role, opts)
            volumes.append(
                docker.ContainerVolumeArgs(
                    volume_name=cache.name, container_path=spec.cache_dir, read_only=False
                )
            )
        probe = (
            "import sys, urllib.request; "
            f"sys.exit(urllib.request.urlopen('http://127.0.0.1:{spec.port}{spec.probe_path}', "
            "timeout=4).status != 200)"
        )
        site = self.config.site_cache
        container = docker.Container(
            f"{self.name}-{role}",
            name=f"{self.name}-{role}",
            image=spec.image,
            command=spec.command,
            **self._hardening(role),
            ports=[
                docker.ContainerPortArgs(
                    internal=spec.port, external=site.port,
                    ip=self.config.docker.bind_address, protocol="tcp",
                )
            ],
            volumes=volumes,
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "python3", "-c", probe],
                interval="10s", timeout="5s", retries=3, start_period="30s",
            ),
            memory=max(6, spec.resources.memory_limit_bytes() // 2**20),
            labels=[
                *self._labels(role),
                docker.ContainerLabelArgs(label=f"{LABEL_PREFIX}.files", value=loader.id),
            ],
            wait=True,
            wait_timeout=120,
            must_run=True,
            opts=pulumi.ResourceOptions(
                parent=parent, depends_on=[loader.container], delete_before_replace=True
            ),
        )
        self.containers.append(container)
        public = site.public_url or f"http://localhost:{site.port}"
        return Endpoint(internal_url=f"http://{role}:{spec.port}", public_url=public)


class _Loader:
    """A files loader: its container (for ordering and the id) and its volume's name."""

    def __init__(self, container: docker.Container, volume_name: pulumi.Output[str]) -> None:
        self.container = container
        self.volume_name = volume_name
        self.id = container.id
