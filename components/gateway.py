"""Gateway: the notification service (``runtime serve --role gateway``, port 4929).

Why its own container or Deployment: clients hold long-lived subscriptions (docs/cvmfs-format.md, "Notifications") and
may give up after a restart. Keeping the gateway apart means an upload-service rollout, by far
the most frequent change, never drops them. The gateway reads current manifests over HTTP from
stratum 0 (so it needs no data volume) and verifies published manifests with the public keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi

from . import contract
from .config import ResourceSpec
from .spec import ContainerSpec, FileSet
from .targets.base import Target

TYPE = "cvmfs-ephemeral:index:Gateway"


@dataclass(frozen=True)
class GatewayArgs:
    """Inputs of Gateway."""

    target: Target
    image: pulumi.Input[str]
    resources: ResourceSpec
    #: ``CVMFS_EPHEMERAL_REPOSITORIES`` value.
    repositories_json: str
    #: Base URL of ``/cvmfs`` on stratum 0 inside the deployment.
    stratum0_url: str
    #: ``<fqrn>.pub`` and ``<fqrn>.crt`` of every repository (public).
    public_files: Mapping[str, pulumi.Input[str]]
    log_level: str


class Gateway(pulumi.ComponentResource):
    """The notification gateway."""

    internal_url: str
    #: API root for clients (``CVMFS_NOTIFICATION_SERVER``): ``<base>/api/v1``.
    api_url: pulumi.Output[str]

    def __init__(
        self, name: str, args: GatewayArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        spec = ContainerSpec(
            role="gateway",
            image=args.image,
            command=contract.serve_command("gateway", contract.GATEWAY_PORT),
            env=contract.env(
                keys_dir=contract.KEYS_DIR,
                repositories=args.repositories_json,
                stratum0_url=args.stratum0_url,
                scheduler=False,
                log_level=args.log_level,
            ),
            port=contract.GATEWAY_PORT,
            resources=args.resources,
            files=[
                FileSet(
                    name="public-keys",
                    directory=contract.KEYS_DIR,
                    files=dict(args.public_files),
                    secret=False,
                )
            ],
            health_path=contract.HEALTH_PATH,
        )
        endpoint = args.target.gateway(spec, self)
        self.internal_url = endpoint.internal_url
        self.api_url = pulumi.Output.from_input(endpoint.public_url).apply(
            lambda base: f"{base}/api/v1"
        )
        self.register_outputs({"apiUrl": self.api_url})
