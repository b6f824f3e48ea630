"""The CernVM-FS client configuration a stack prints for each repository (docs/cvmfs-format.md, "Client configuration").

Why an output and not documentation: the URLs depend on the target and the stack's config, and a
client that is one character off fails to mount with an unhelpful error. The text is ready for
``/etc/cvmfs/config.d/<fqrn>.conf``.
"""

from __future__ import annotations

from typing import Optional

CLIENT_KEYS_DIR = "/etc/cvmfs/keys"


def client_public_key_path(fqrn: str) -> str:
    """Where the client config expects the repository's public key (an absolute path)."""
    return f"{CLIENT_KEYS_DIR}/{fqrn}.pub"


def http_proxy(proxy_url: Optional[str], direct_fallback: bool = False) -> str:
    """The ``CVMFS_HTTP_PROXY`` value: the site cache, ``;DIRECT`` after it only when allowed
    (``;`` separates fail-over groups: DIRECT is used only when every proxy before it fails)."""
    if proxy_url is None:
        return "DIRECT"
    return f'"{proxy_url};DIRECT"' if direct_fallback else f'"{proxy_url}"'


def client_config(
    fqrn: str,
    stratum0_url: str,
    notification_api_url: str,
    proxy_url: Optional[str] = None,
    direct_fallback: bool = False,
) -> str:
    """``/etc/cvmfs/config.d/<fqrn>.conf`` for one repository (through the site cache if any)."""
    lines = [
        f"# CernVM-FS client configuration for {fqrn} (cvmfs-ephemeral).",
        f"# Install the public key as {client_public_key_path(fqrn)} "
        "(stack output publicKeys).",
        f"CVMFS_SERVER_URL={stratum0_url}/cvmfs/{fqrn}",
        f"CVMFS_PUBLIC_KEY={client_public_key_path(fqrn)}",
        f"CVMFS_HTTP_PROXY={http_proxy(proxy_url, direct_fallback)}",
        f"CVMFS_NOTIFICATION_SERVER={notification_api_url}",
    ]
    if stratum0_url.startswith("https://"):
        lines.append("CVMFS_USE_SSL_SYSTEM_CA=true")
    return "\n".join(lines) + "\n"
