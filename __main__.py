"""Pulumi entry point: read the stack configuration, deploy it, export the outputs.

Everything else lives in ``components/``: ``config.py`` (the typed configuration),
``deployment.py`` (the top component) and ``targets/`` (Docker, Kubernetes).
"""

import pulumi

from components.config import load_stack_config
from components.deployment import Deployment, DeploymentArgs

config = load_stack_config()
deployment = Deployment(config.name, DeploymentArgs(config=config))
for key, value in deployment.outputs.items():
    pulumi.export(key, value)
