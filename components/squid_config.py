"""The site cache's squid configuration, rendered from the stack configuration.

Why rendered in Python rather than a file in ``deploy/``: the values that make a CVMFS squid right
(which stratum 0 it may reach, under which names and ports, cache sizes above the chunk size,
where it may write on a read-only root filesystem) come from the stack. One function renders the
text; the SiteCache component mounts it into the container and the tests start a real squid with
the same text (only ports and directories substituted through the same arguments).

The settings are the ones the CVMFS documentation ("Setting up a Local Squid Proxy") and
frontier-squid use for a site cache:

- ``collapsed_forwarding on``: when a publish makes thousands of clients ask for the same new
  catalog at once, squid forwards one request and answers everyone from it;
- ``minimum_expiry_time 0``: squid's default (60 s) refuses to cache anything that expires sooner;
  the stratum 0's headers decide, not a squid default;
- ``maximum_object_size`` above the largest chunk (objects are whole chunks or catalogs), memory
  and disk cache sizes from the stack;
- ``negative_ttl 0``: a 404 (an object not yet published) is never cached;
- no ``refresh_pattern`` overrides: the signed files (``no-cache``) are revalidated on every use,
  objects (``max-age`` 3 days, immutable) are served from the cache;
- an ACL that allows only GET/HEAD to this stack's stratum 0 (its names and ports) from the
  configured client networks; every request goes to the stratum 0 as a ``cache_peer`` and never
  directly anywhere, so the cache is no open proxy; CONNECT is refused;
- logs to stdout/stderr (the platform collects and rotates them; ``logfile_rotate 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .config import DEFAULT_CACHE_CLIENT_NETWORKS

#: Where squid listens inside the container and on the Service (the CVMFS convention).
SQUID_PORT = 3128
#: Writable directories on a read-only root filesystem (volumes in the container).
CACHE_DIR = "/var/cache/squid-cvmfs"
#: pid file and core dumps: the container's /tmp (a tmpfs / emptyDir on every container).
RUN_DIR = "/tmp"
#: Where the rendered file is mounted (under the config directory every target mounts files in).
CONF_DIR = "/etc/cvmfs-ephemeral/squid"
CONF_NAME = "squid.conf"
CONF_PATH = f"{CONF_DIR}/{CONF_NAME}"

#: What liveness/readiness probes GET: a static file squid serves itself, so a probe tells whether
#: squid answers without depending on the stratum 0 (a stratum-0 restart must not restart caches).
PROBE_PATH = "/squid-internal-static/icons/SN.png"

#: Networks clients usually come from (RFC 1918, RFC 4193, loopback): the stack's default.
DEFAULT_CLIENT_NETWORKS = DEFAULT_CACHE_CLIENT_NETWORKS


@dataclass(frozen=True)
class SquidSettings:
    """Everything the rendered configuration depends on."""

    #: The stratum 0 squid forwards to (``cache_peer``): host and port as the cache reaches it.
    origin_host: str
    origin_port: int
    #: Host names (``dstdomain``) and ports clients may put in their URLs: the stratum 0's
    #: public and internal names. Anything else is refused.
    allowed_hosts: Sequence[str]
    allowed_ports: Sequence[int]
    client_networks: Sequence[str] = DEFAULT_CLIENT_NETWORKS
    http_port: int = SQUID_PORT
    memory_cache_mb: int = 256
    #: 0: memory only, no ``cache_dir``.
    disk_cache_mb: int = 10_000
    maximum_object_size_mb: int = 1024
    #: Catalogs (the herd after a publish) and small files stay in memory; chunks go to disk.
    maximum_object_size_in_memory_kb: int = 4096
    cache_dir: str = CACHE_DIR
    run_dir: str = RUN_DIR
    access_log: str = "stdio:/dev/stdout"
    cache_log: str = "/dev/stderr"
    visible_hostname: str = "cvmfs-site-cache"


def _unique(values: Sequence[object]) -> list[str]:
    out: list[str] = []
    for value in values:
        text = str(value)
        if text not in out:
            out.append(text)
    return out


def render_squid_conf(s: SquidSettings) -> str:
    """The complete ``squid.conf`` text (deterministic: same settings, same bytes)."""
    if not s.allowed_hosts or not s.allowed_ports:
        raise ValueError("the site cache needs at least one stratum-0 host and port")
    hosts = " ".join(_unique([h.lower() for h in s.allowed_hosts]))
    ports = " ".join(_unique(list(s.allowed_ports)))
    networks = " ".join(_unique(list(s.client_networks)))
    lines = [
        "# CVMFS site cache (rendered by components/squid_config.py; do not edit by hand).",
        f"http_port {s.http_port}",
        f"visible_hostname {s.visible_hostname}",
        f"pid_filename {s.run_dir}/squid.pid",
        f"coredump_dir {s.run_dir}",
        "netdb_filename none",
        "pinger_enable off",
        # Squid answers /squid-internal-static/ itself only when asked as itself, not for any host.
        "global_internal_static off",
        # The CVMFS documentation's figure; also keeps squid's per-descriptor tables small.
        "max_filedesc 8192",
        "",
        "# Who may ask, for what: GET/HEAD of this stack's stratum 0 only (no open proxy).",
        f"acl cvmfs_clients src {networks}",
        f"acl stratum0_host dstdomain {hosts}",
        f"acl stratum0_port port {ports}",
        "acl read_methods method GET HEAD",
        f"acl self_host dstdomain {s.visible_hostname}",
        f"acl probe_path urlpath_regex ^{PROBE_PATH}$",
        "http_access deny CONNECT",
        "http_access deny !read_methods",
        "# Probes: squid answers its own static icon itself (never forwarded).",
        "http_access allow self_host probe_path",
        "http_access deny !stratum0_host",
        "http_access deny !stratum0_port",
        "http_access allow cvmfs_clients",
        "http_access deny all",
        "",
        "# Every request goes to the stratum 0, never directly anywhere else.",
        f"cache_peer {s.origin_host} parent {s.origin_port} 0 no-query no-digest "
        "originserver name=stratum0",
        "cache_peer_access stratum0 allow stratum0_host stratum0_port",
        "cache_peer_access stratum0 deny all",
        "never_direct allow all",
        "",
        "# CVMFS settings (CVMFS documentation, frontier-squid).",
        "collapsed_forwarding on",
        "minimum_expiry_time 0 seconds",
        "negative_ttl 0 seconds",
        f"cache_mem {s.memory_cache_mb} MB",
        f"maximum_object_size_in_memory {s.maximum_object_size_in_memory_kb} KB",
        f"maximum_object_size {s.maximum_object_size_mb} MB",
        "memory_replacement_policy heap LFUDA",
        "cache_replacement_policy heap LFUDA",
    ]
    if s.disk_cache_mb > 0:
        lines.append(f"cache_dir ufs {s.cache_dir} {s.disk_cache_mb} 16 256")
    else:
        lines.append("# memory cache only (no cache_dir)")
    lines += [
        "# Objects are whole chunks: read them to the end even if the client leaves.",
        "quick_abort_min -1 KB",
        "read_ahead_gap 64 KB",
        "forwarded_for delete",
        "httpd_suppress_version_string on",
        "",
        "# Logs to stdout/stderr: the platform collects and rotates them.",
        f"access_log {s.access_log} squid",
        f"cache_log {s.cache_log}",
        "cache_store_log none",
        "logfile_rotate 0",
        "shutdown_lifetime 3 seconds",
    ]
    return "\n".join(lines) + "\n"


def squid_command(disk_cache_mb: int, conf_path: str = CONF_PATH) -> list[str]:
    """The container's command: create the disk cache's directories (idempotent), then run squid
    in the foreground as the container's user (no daemon, no privilege switch)."""
    run = f"exec squid -N -f {conf_path}"
    if disk_cache_mb > 0:
        return ["/bin/sh", "-c", f"squid -N -z -f {conf_path} && {run}"]
    return ["squid", "-N", "-f", conf_path]
