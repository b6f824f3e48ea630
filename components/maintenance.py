"""MaintenanceJobs: clean (expired artifacts), gc (unreferenced objects), resign (whitelist).

The jobs call the upload service's admin routes through the runtime CLI
(``runtime clean|gc|resign --url …``), so they need only the URL and the admin token, never the
data volume or the keys. Kubernetes runs gc and resign as CronJobs on the configured cron
schedules, and ``clean`` in the upload service's own scheduler (``Target.embedded_jobs``: a pod
every minute is not worth it); Docker runs the runtime's scheduler for all three, with intervals
derived from the same schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from . import contract
from .config import ResourceSpec, SchedulesSpec
from .spec import MaintenanceSpec
from .targets.base import Target

TYPE = "cvmfs-ephemeral:index:MaintenanceJobs"


@dataclass(frozen=True)
class MaintenanceJobsArgs:
    """Inputs of MaintenanceJobs."""

    target: Target
    image: pulumi.Input[str]
    #: Upload service base URL inside the deployment.
    upload_url: str
    schedules: SchedulesSpec
    #: Admin token (secret Output).
    token: pulumi.Output[str]
    resources: ResourceSpec
    log_level: str


class MaintenanceJobs(pulumi.ComponentResource):
    """Scheduled maintenance of every repository."""

    def __init__(
        self, name: str, args: MaintenanceJobsArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        schedules = args.schedules
        jobs = {
            job: (contract.maintenance_command(job, args.upload_url), getattr(schedules, job))
            for job in contract.MAINTENANCE_JOBS
        }
        spec = MaintenanceSpec(
            image=args.image,
            upload_url=args.upload_url,
            jobs=jobs,
            scheduler_command=contract.schedule_command(args.upload_url),
            scheduler_env=contract.env(
                clean_interval_s=schedules.interval_s("clean"),
                gc_interval_s=schedules.interval_s("gc"),
                resign_interval_s=schedules.interval_s("resign"),
            ),
            env=contract.env(log_level=args.log_level),
            token=pulumi.Output.secret(args.token),
            resources=args.resources,
        )
        args.target.maintenance(spec, self)
        self.schedules = {job: schedule for job, (_, schedule) in jobs.items()}
        self.register_outputs({"schedules": self.schedules})
