"""Platform-neutral descriptions of what to run, handed by the concept components to a target.

The concept components (Stratum0, Gateway, UploadService, MaintenanceJobs) decide *what* runs:
command, environment, ports, which files and data each container sees. A target
(``targets/docker.py`` or ``targets/kubernetes.py``) decides *how*: containers and volumes, or
Deployments, Secrets and CronJobs. Keeping these plain dataclasses is what lets the platform
difference live in the targets only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional

import pulumi

from .config import ResourceSpec

#: Named bundles of files a container may need. The target decides how they get there (Docker:
#: uploaded into a volume; Kubernetes: Secret or ConfigMap volumes).
FileSetName = Literal["keys", "public-keys", "tokens", "site-cache"]


@dataclass(frozen=True)
class FileSet:
    """Files mounted read-only into a directory of a container."""

    name: FileSetName
    directory: str
    #: file name → content. Secret contents are secret Outputs.
    files: Mapping[str, pulumi.Input[str]]
    secret: bool


@dataclass(frozen=True)
class DataMount:
    """The repository data volume, shared by the upload service (rw) and nginx (ro)."""

    path: str
    read_only: bool


@dataclass(frozen=True)
class ContainerSpec:
    """One long-running container of a role."""

    role: str
    image: pulumi.Input[str]
    command: list[str]
    env: dict[str, str]
    port: Optional[int]
    resources: ResourceSpec
    files: list[FileSet] = field(default_factory=list)
    data: Optional[DataMount] = None
    #: Probe path on ``port``; ``None`` for a container without HTTP (the scheduler).
    health_path: Optional[str] = "/healthz"
    #: The signal that makes the process finish its requests and exit (nginx: SIGQUIT; its
    #: SIGTERM is a fast shutdown). ``None``: SIGTERM, on which the runtime drains.
    stop_signal: Optional[str] = None


@dataclass(frozen=True)
class MaintenanceSpec:
    """The maintenance work: one command per job, its cron schedule and its Docker interval."""

    image: pulumi.Input[str]
    upload_url: str
    #: job → (command, cron schedule)
    jobs: Mapping[str, tuple[list[str], str]]
    #: The scheduler command and its environment (Docker: one long-running container).
    scheduler_command: list[str]
    scheduler_env: dict[str, str]
    #: Environment common to every job (log level).
    env: dict[str, str]
    #: The admin token (secret Output); targets deliver it as a file or from a Secret, never plain.
    token: pulumi.Output[str]
    resources: ResourceSpec


@dataclass(frozen=True)
class Endpoint:
    """How a service is reached: from inside the platform, and by clients outside."""

    internal_url: str
    public_url: str


@dataclass(frozen=True)
class CacheSpec:
    """The squid site cache: its image, command, rendered configuration and how many run.

    The configuration is a public file set (``site-cache``: ``squid.conf``), mounted read-only;
    the disk cache is a volume / emptyDir at ``cache_dir`` sized for ``disk_cache_mb``.
    """

    image: pulumi.Input[str]
    command: list[str]
    config: FileSet
    port: int
    probe_path: str
    cache_dir: str
    disk_cache_mb: int
    resources: ResourceSpec
    kind: Literal["Deployment", "DaemonSet"]
    replicas: int
