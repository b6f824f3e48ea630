"""The interface every deployment target offers the concept components.

A target turns platform-neutral specs (``components/spec.py``) into platform resources. The
concept components call it in dependency order: ``prepare``, ``deployable_image``, then
``stratum0``, ``gateway``, ``upload``, ``maintenance``. On Kubernetes with ephemeral storage,
nginx runs as a sidecar of the upload pod, so ``stratum0`` must come before ``upload``; each
target documents what it creates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional, Protocol, Sequence

import pulumi

from ..spec import CacheSpec, ContainerSpec, Endpoint, MaintenanceSpec

if TYPE_CHECKING:
    from ..config import StackConfig

ServiceRole = Literal["stratum0", "upload", "gateway"]


def configured_public_url(config: "StackConfig", role: ServiceRole) -> Optional[str]:
    """The public URL the stack configuration sets for ``role``, if any (both targets)."""
    return {
        "stratum0": config.public_url,
        "upload": config.upload_url,
        "gateway": config.notification_url,
    }[role] or None


class Target(Protocol):
    """A platform that runs the runtime image: Docker or Kubernetes."""

    kind: str
    #: Maintenance jobs the upload service's own scheduler runs (the others run as jobs).
    embedded_jobs: tuple[str, ...]

    def internal_url(self, role: ServiceRole) -> str:
        """Base URL of a service as other containers of the deployment reach it."""

    def prepare(self, parent: pulumi.Resource) -> None:
        """Shared infrastructure: network or namespace, the repository data storage."""

    def deployable_image(
        self, stage: str, ref: pulumi.Output[str], parent: pulumi.Resource
    ) -> pulumi.Output[str]:
        """The immutable reference workloads run for the image ``ref`` (a digest or image id
        where the platform has one), ordered after whatever makes the image available."""

    def stratum0(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        """Run nginx serving the data volume read-only."""

    def gateway(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        """Run the notification gateway, independent of upload-service rollouts."""

    def upload(self, spec: ContainerSpec, parent: pulumi.Resource) -> Endpoint:
        """Run the upload service with the data volume read-write."""

    def maintenance(self, spec: MaintenanceSpec, parent: pulumi.Resource) -> None:
        """Run clean, gc and resign on their schedules."""

    def site_cache(self, spec: CacheSpec, parent: pulumi.Resource) -> Endpoint:
        """Run the squid site cache (its configuration names the stratum 0 it may reach)."""

    def check_url(self) -> Optional[str]:
        """Base of ``/cvmfs`` as reachable from the machine running ``pulumi up``; None: unknown."""

    def ready(self) -> Sequence[pulumi.Resource]:
        """Resources that must exist before the post-deploy check can succeed."""
