"""SiteCache: squid in front of stratum 0, the way CVMFS sites scale reads.

Why it belongs to the stack: a publish with notifications makes every subscribed client fetch the
new root and nested catalogs within a second. Through a site cache with collapsed forwarding that
is one request per object to stratum 0, whatever the number of clients; without one it is a
request per client. The cache only accepts this stack's stratum 0 (its public and internal names)
and forwards to the internal one, so it is no open proxy and needs no DNS for the public name.

The configuration text comes from ``squid_config.render_squid_conf`` (the tests start a real
squid with it); the target decides where squid runs (``targets/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

import pulumi

from .config import SiteCacheSpec
from .spec import CacheSpec, FileSet
from .squid_config import (
    CACHE_DIR,
    CONF_DIR,
    CONF_NAME,
    PROBE_PATH,
    SQUID_PORT,
    SquidSettings,
    render_squid_conf,
    squid_command,
)
from .targets.base import Target

TYPE = "cvmfs-ephemeral:index:SiteCache"
MIB = 2**20


def host_port(url: str) -> tuple[str, int]:
    """Host and port of an http(s) URL (default ports filled in)."""
    parts = urlsplit(url)
    assert parts.hostname, url
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def squid_settings(
    spec: SiteCacheSpec, internal_url: str, public_url: str, max_chunk_size: int
) -> SquidSettings:
    """What squid must know: the peer it forwards to, the names clients may use, the sizes."""
    origin_host, origin_port = host_port(internal_url)
    hosts, ports = [origin_host], [origin_port]
    if public_url.startswith("http://"):  # https cannot be cached by a proxy: CONNECT is refused
        public_host, public_port = host_port(public_url)
        hosts.append(public_host)
        ports.append(public_port)
    # Objects are whole chunks or catalogs: the largest must fit, with room for zlib's overhead.
    largest_mb = -(-max_chunk_size * 2 // MIB)
    return SquidSettings(
        origin_host=origin_host,
        origin_port=origin_port,
        allowed_hosts=hosts,
        allowed_ports=ports,
        client_networks=tuple(spec.client_networks),
        memory_cache_mb=spec.memory_cache_mb,
        disk_cache_mb=spec.disk_cache_mb,
        maximum_object_size_mb=max(1024, largest_mb),
    )


def proxied_server_base(internal_url: str, public_url: str) -> str:
    """The stratum-0 base URL clients behind the cache use: the public one when it is plain http
    (squid accepts it), else the internal one: squid forwards to its peer, so clients never need
    to resolve that name themselves."""
    return public_url if public_url.startswith("http://") else internal_url


@dataclass(frozen=True)
class SiteCacheArgs:
    """Inputs of SiteCache."""

    target: Target
    image: pulumi.Input[str]
    spec: SiteCacheSpec
    #: Stratum 0 as the cache reaches it, and as clients name it.
    stratum0_internal_url: str
    stratum0_public_url: str
    #: The largest ``chunkSize`` of the stack's repositories.
    max_chunk_size: int


class SiteCache(pulumi.ComponentResource):
    """The squid site cache; ``proxy_url`` goes into the clients' ``CVMFS_HTTP_PROXY``."""

    proxy_url: str
    internal_url: str
    #: Base of ``CVMFS_SERVER_URL`` for clients that read through this cache.
    server_base: str
    conf_text: str

    def __init__(
        self, name: str, args: SiteCacheArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        settings = squid_settings(
            args.spec, args.stratum0_internal_url, args.stratum0_public_url, args.max_chunk_size
        )
        self.conf_text = render_squid_conf(settings)
        cache = CacheSpec(
            image=args.spec.image or args.image,
            command=squid_command(args.spec.disk_cache_mb),
            config=FileSet(
                name="site-cache", directory=CONF_DIR, files={CONF_NAME: self.conf_text},
                secret=False,
            ),
            port=SQUID_PORT,
            probe_path=PROBE_PATH,
            cache_dir=CACHE_DIR,
            disk_cache_mb=args.spec.disk_cache_mb,
            resources=args.spec.resources,
            kind=args.spec.kind,
            replicas=args.spec.replicas,
        )
        endpoint = args.target.site_cache(cache, self)
        self.internal_url = endpoint.internal_url
        self.proxy_url = endpoint.public_url
        self.server_base = proxied_server_base(
            args.stratum0_internal_url, args.stratum0_public_url
        )
        self.register_outputs({"proxyUrl": self.proxy_url})
