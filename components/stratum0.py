"""Stratum0: nginx serving the repositories read-only at ``/cvmfs/<fqrn>/`` and ``/cvmfs-meta/``.

Why nginx and not the runtime's own HTTP server: clients, stratum 1s and proxies hit stratum 0
far more than anything else, and a static file server with the CernVM-FS cache headers
(``deploy/nginx/stratum0.conf``, baked into the runtime image) does that best. It reads the data
volume the upload service writes; it never writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from . import contract
from .config import ResourceSpec
from .spec import ContainerSpec, DataMount
from .targets.base import Target

TYPE = "cvmfs-ephemeral:index:Stratum0"


@dataclass(frozen=True)
class Stratum0Args:
    """Inputs of Stratum0."""

    target: Target
    image: pulumi.Input[str]
    resources: ResourceSpec


class Stratum0(pulumi.ComponentResource):
    """The static stratum-0 server."""

    #: Base URL (``…`` of ``…/cvmfs/<fqrn>``) inside the deployment and for clients.
    internal_url: str
    #: Base URL for clients (plain: it goes into client configs and the runtime's environment).
    public_url: str
    url: pulumi.Output[str]

    def __init__(
        self, name: str, args: Stratum0Args, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        spec = ContainerSpec(
            role="stratum0",
            image=args.image,
            command=contract.nginx_command(),
            env={},
            port=contract.STRATUM0_PORT,
            resources=args.resources,
            data=DataMount(contract.DATA_DIR, read_only=True),
            health_path=contract.HEALTH_PATH,
            # nginx's graceful shutdown: in-flight downloads finish.
            stop_signal="SIGQUIT",
        )
        endpoint = args.target.stratum0(spec, self)
        self.internal_url = endpoint.internal_url
        self.public_url = endpoint.public_url
        self.url = pulumi.Output.from_input(endpoint.public_url)
        self.register_outputs({"url": self.url})
