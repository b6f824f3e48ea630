"""What the runtime image offers the deployment: paths, ports, user, commands and variable names.

The Pulumi program deploys the runtime through its image and command line only; it never imports
the ``runtime`` package. Everything both sides must agree on is written down once, here, and
mirrors the Dockerfile and ``deploy/nginx/stratum0.conf``.
"""

from __future__ import annotations

import json
from typing import Iterable, Literal

#: Container ports, fixed by the image (the stack's ``ports`` only change published ports).
STRATUM0_PORT = 8000
UPLOAD_PORT = 8080
GATEWAY_PORT = 4929

#: The unprivileged user every container runs as (created in the Dockerfile).
UID = 10001
GID = 10001

DATA_DIR = "/var/lib/cvmfs-ephemeral"
CONFIG_DIR = "/etc/cvmfs-ephemeral"
KEYS_DIR = f"{CONFIG_DIR}/keys"
SECRETS_DIR = f"{CONFIG_DIR}/secrets"
TOKENS_FILE = f"{SECRETS_DIR}/tokens"
TOKEN_FILE = f"{SECRETS_DIR}/token"
TMP_DIR = "/tmp"
NGINX_CONF = "/etc/nginx/stratum0.conf"
HEALTH_PATH = "/healthz"
#: Small script in the image: exit 0 when ``http://127.0.0.1:<port>/healthz`` answers 200.
HEALTHCHECK = "cvmfs-ephemeral-healthcheck"

#: How long the runtime drains in-flight requests after SIGTERM (uvicorn's graceful shutdown).
DRAIN_S = 60
#: How long a platform waits after SIGTERM before it kills a container: the drain plus margin,
#: so that a replacement lets in-flight uploads finish instead of cutting them.
STOP_GRACE_S = DRAIN_S + 30

ENV_PREFIX = "CVMFS_EPHEMERAL_"
#: The variable that tells the maintenance scheduler where its token file is (Docker target).
TOKEN_FILE_ENV = f"{ENV_PREFIX}TOKEN_FILE"
TOKEN_ENV = f"{ENV_PREFIX}TOKEN"

Role = Literal["upload", "gateway"]
MaintenanceJob = Literal["clean", "gc", "resign"]
MAINTENANCE_JOBS: tuple[MaintenanceJob, ...] = ("clean", "gc", "resign")


def runtime(*args: str) -> list[str]:
    """A runtime CLI invocation inside the image."""
    return ["python", "-m", "runtime", *args]


def serve_command(role: Role, port: int) -> list[str]:
    return runtime("serve", "--role", role, "--host", "0.0.0.0", "--port", str(port))


def nginx_command() -> list[str]:
    return ["nginx", "-c", NGINX_CONF]


def maintenance_command(job: MaintenanceJob, upload_url: str) -> list[str]:
    return runtime(job, "--url", upload_url)


def schedule_command(upload_url: str) -> list[str]:
    return runtime("schedule", "--url", upload_url)


def healthcheck_command(port: int) -> list[str]:
    return [HEALTHCHECK, str(port)]


def env(**values: object) -> dict[str, str]:
    """``CVMFS_EPHEMERAL_*`` variables from keyword names (``data_dir`` → ``..._DATA_DIR``).

    ``None`` values are left out so that the runtime's own default applies; booleans are written
    the way pydantic-settings reads them.
    """
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        out[ENV_PREFIX + key.upper()] = str(value)
    return dict(sorted(out.items()))


def repositories_json(repositories: Iterable[dict]) -> str:
    """``CVMFS_EPHEMERAL_REPOSITORIES``: compact, key-sorted JSON so the value is stable."""
    return json.dumps(list(repositories), sort_keys=True, separators=(",", ":"))
