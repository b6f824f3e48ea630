"""UploadService: the runtime that takes uploads and writes the repositories.

``runtime serve --role upload`` on port 8080: upload API, admin routes for maintenance, and the
only writer of the data volume (shared read-only with stratum 0). Keys and tokens reach it as
mounted files only. Its in-process scheduler runs the jobs the target embeds
(``Target.embedded_jobs``: ``clean`` on Kubernetes, where a CronJob every minute would make
1,440 pods a day) at the interval of their cron schedule; the other jobs run separately, so that
they are visible, schedulable and do not depend on this container's uptime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi

from . import contract
from .config import StackConfig
from .spec import ContainerSpec, DataMount, FileSet
from .targets.base import Target

TYPE = "cvmfs-ephemeral:index:UploadService"


@dataclass(frozen=True)
class UploadServiceArgs:
    """Inputs of UploadService."""

    target: Target
    config: StackConfig
    image: pulumi.Input[str]
    repositories_json: str
    #: Notification API root inside the deployment (``http://gateway:4929/api/v1``).
    gateway_api_url: str
    #: Stratum-0 base URL for clients (``CVMFS_EPHEMERAL_PUBLIC_URL``).
    public_url: str
    #: ``<fqrn>.key|.crt|.masterkey|.pub`` of every repository (private ones as secret Outputs).
    key_files: Mapping[str, pulumi.Input[str]]
    #: The tokens file (secret Output): one JSON object per line (label, role, scopes, sha256).
    tokens_file: pulumi.Output[str]


def embedded_scheduler(config: StackConfig, jobs: tuple[str, ...]) -> dict[str, object]:
    """Scheduler settings of the upload service: on for ``jobs`` only (interval 0 disables)."""
    if not jobs:
        return {"scheduler": False}
    out: dict[str, object] = {"scheduler": True}
    for job in contract.MAINTENANCE_JOBS:
        out[f"{job}_interval_s"] = config.schedules.interval_s(job) if job in jobs else 0
    return out


class UploadService(pulumi.ComponentResource):
    """The upload service."""

    internal_url: str
    url: pulumi.Output[str]

    def __init__(
        self, name: str, args: UploadServiceArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        config = args.config
        spec = ContainerSpec(
            role="upload",
            image=args.image,
            command=contract.serve_command("upload", contract.UPLOAD_PORT),
            env=contract.env(
                data_dir=contract.DATA_DIR,
                keys_dir=contract.KEYS_DIR,
                repositories=args.repositories_json,
                tokens_file=contract.TOKENS_FILE,
                oidc=config.oidc.runtime_json() if config.oidc.issuers else None,
                gateway_url=args.gateway_api_url,
                public_url=args.public_url,
                max_artifact_bytes=config.limits.max_artifact_bytes,
                default_ttl_s=config.limits.default_ttl_s,
                max_ttl_s=config.limits.max_ttl_s,
                max_name_depth=config.limits.max_name_depth,
                gc_grace_s=config.signing.gc_grace_s,
                whitelist_validity_days=config.signing.whitelist_validity_days,
                resign_below_days=config.signing.resign_below_days,
                **embedded_scheduler(config, args.target.embedded_jobs),
                log_level=config.log_level,
            ),
            port=contract.UPLOAD_PORT,
            resources=config.resources.upload,
            files=[
                FileSet(
                    name="keys", directory=contract.KEYS_DIR, files=dict(args.key_files), secret=True
                ),
                FileSet(
                    name="tokens",
                    directory=contract.SECRETS_DIR,
                    files={contract.TOKENS_FILE.rsplit("/", 1)[1]: args.tokens_file},
                    secret=True,
                ),
            ],
            data=DataMount(contract.DATA_DIR, read_only=False),
            health_path=contract.HEALTH_PATH,
        )
        endpoint = args.target.upload(spec, self)
        self.internal_url = endpoint.internal_url
        self.url = pulumi.Output.from_input(endpoint.public_url)
        self.register_outputs({"url": self.url})
