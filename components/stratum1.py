"""What an operator needs to attach a real stratum 1 to this stack (a stack output).

Stratum 1s are not deployed here: they belong to the sites that replicate the repositories
(``cvmfs_server add-replica`` then ``cvmfs_server snapshot`` on a schedule). What they need from
the stack is the stratum-0 URL, the master public key and a snapshot interval that this stack's
gc tolerates: gc deletes the objects of a superseded revision once the grace period has passed,
so a snapshot must start and finish within the grace (validated in ``config.py``).
"""

from __future__ import annotations

from typing import Any, Mapping

import pulumi

from .config import StackConfig


def add_replica_command(fqrn: str, stratum0_url: str) -> str:
    """The command a stratum-1 operator runs (as root, with the key in /etc/cvmfs/keys)."""
    return (
        f"cvmfs_server add-replica -o $USER {stratum0_url}/cvmfs/{fqrn} "
        f"/etc/cvmfs/keys/{fqrn}.pub"
    )


def stratum1_outputs(
    config: StackConfig, stratum0_url: str, public_keys: Mapping[str, pulumi.Input[str]]
) -> dict[str, Any]:
    """``stratum1``: the recommended snapshot interval and, per repository, URL, key, gc grace."""
    interval = config.recommended_snapshot_interval_s()
    return {
        "recommendedSnapshotIntervalS": interval,
        "repositories": {
            repo.fqrn: {
                "url": f"{stratum0_url}/cvmfs/{repo.fqrn}",
                "publicKey": public_keys[repo.fqrn],
                "gcGraceS": repo.effective_gc_grace_s(config.signing.gc_grace_s),
                "ttlS": repo.ttl_s,
                "addReplica": add_replica_command(repo.fqrn, stratum0_url),
            }
            for repo in config.repositories
        },
    }
