"""The CVMFS client configuration that mounts a repository served by this runtime (docs/cvmfs-format.md, "Client configuration")."""

from __future__ import annotations


def client_config(fqrn: str, stratum0_url: str, public_key_path: str,
                  notification_url: str | None = None) -> str:
    """Lines for ``/etc/cvmfs/config.d/<fqrn>.conf``.

    ``stratum0_url`` is the base that holds ``/cvmfs/<fqrn>`` (``http://host:port``). The
    public key path must be absolute on the client (a relative one fails at mount time).
    """
    lines = [
        f"CVMFS_SERVER_URL={stratum0_url.rstrip('/')}/cvmfs/@fqrn@",
        f"CVMFS_PUBLIC_KEY={public_key_path}",
        "CVMFS_HTTP_PROXY=DIRECT",
    ]
    if notification_url:
        lines.append(f"CVMFS_NOTIFICATION_SERVER={notification_url.rstrip('/')}")
    return "\n".join(lines) + "\n"


def mount_instructions(fqrn: str, stratum0_url: str, notification_url: str | None) -> str:
    """What ``serve`` prints at start: how a client on this host or another mounts ``fqrn``."""
    key = f"/etc/cvmfs/keys/{fqrn}.pub"
    conf = client_config(fqrn, stratum0_url, key, notification_url)
    return (
        f"Repository {fqrn}: {stratum0_url.rstrip('/')}/cvmfs/{fqrn}\n"
        f"  To mount it with the CVMFS client:\n"
        f"    curl -o {key} {stratum0_url.rstrip('/')}/cvmfs-meta/{fqrn}.pub\n"
        f"    cat > /etc/cvmfs/config.d/{fqrn}.conf <<'EOF'\n"
        + "".join(f"    {line}\n" for line in conf.splitlines())
        + "    EOF\n"
        f"    mkdir -p /cvmfs/{fqrn} && mount -t cvmfs {fqrn} /cvmfs/{fqrn}\n"
    )
