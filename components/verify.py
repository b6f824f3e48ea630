"""PostDeployCheck: after ``pulumi up`` has started the services, prove a client could mount.

A pulumi-command local command fetches the deployed ``.cvmfswhitelist`` and ``.cvmfspublished``
and verifies both signatures and the certificate with the runtime's own CLI
(``runtime verify``), against the public key this stack generated or imported. A broken
deployment (nginx not serving, wrong keys mounted, no repository created) therefore fails
``pulumi up`` instead of failing the first client. It retries for ``timeout_s`` because the
upload service creates the repositories at start.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pulumi
import pulumi_command as command

TYPE = "cvmfs-ephemeral:index:PostDeployCheck"
#: The interpreter the check runs the runtime CLI with.
PYTHON_ENV = "CVMFS_EPHEMERAL_PYTHON"


def verify_script(url: str, fqrn: str, timeout_s: int) -> str:
    """POSIX shell: read the public key from stdin, then retry ``runtime verify`` until it passes.

    Runs the runtime with ``$CVMFS_EPHEMERAL_PYTHON``: the interpreter running the Pulumi
    program (``sys.executable``), which has the project's dependencies wherever its virtualenv
    lives; ``python3`` only when the variable is unset.
    """
    verify = (
        f'"$py" -m runtime verify --url {shlex.quote(url)} --fqrn {shlex.quote(fqrn)} '
        '--public-key "$key"'
    )
    return "\n".join(
        [
            "set -u",
            'py="${CVMFS_EPHEMERAL_PYTHON:-python3}"',
            'key=$(mktemp); trap \'rm -f "$key"\' EXIT; cat > "$key"',
            f"deadline=$(( $(date +%s) + {int(timeout_s)} ))",
            "while :; do",
            f"  if out=$({verify} 2>&1); then echo \"$out\"; exit 0; fi",
            '  if [ "$(date +%s)" -ge "$deadline" ]; then',
            f'    echo "post-deploy check of {fqrn} failed: $out" >&2; exit 1',
            "  fi",
            "  sleep 2",
            "done",
        ]
    )


@dataclass(frozen=True)
class PostDeployCheckArgs:
    """Inputs of PostDeployCheck."""

    fqrn: str
    #: ``…/cvmfs/<fqrn>`` as reachable from the machine running ``pulumi up``.
    url: str
    public_key_pem: pulumi.Input[str]
    timeout_s: int
    #: What must exist first (containers, Deployments, Services).
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)
    #: Values whose change must re-run the check (image, container ids).
    triggers: Sequence[pulumi.Input[object]] = field(default_factory=list)


class PostDeployCheck(pulumi.ComponentResource):
    """Verifies one deployed repository's signed files; fails ``pulumi up`` if they don't verify."""

    revision: pulumi.Output[str]

    def __init__(
        self, name: str, args: PostDeployCheckArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        check = command.local.Command(
            name,
            create=verify_script(args.url, args.fqrn, args.timeout_s),
            stdin=args.public_key_pem,
            environment={PYTHON_ENV: sys.executable},
            triggers=list(args.triggers),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
        )
        self.revision = check.stdout
        self.register_outputs({"revision": self.revision})
