"""The CI job's identity token (OIDC) for ``upload --oidc``: no stored secret needed.

- GitHub Actions (``permissions: id-token: write``): the runner sets
  ``ACTIONS_ID_TOKEN_REQUEST_URL`` and ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``; a GET of that URL with
  ``&audience=<aud>`` and the request token as bearer answers ``{"value": "<JWT>"}``.
- GitLab CI: the job declares ``id_tokens: {CVMFS_EPHEMERAL_ID_TOKEN: {aud: <aud>}}`` and GitLab
  puts the JWT in that variable (another name with ``--id-token-var``).

The token is never printed; errors name the variable that is missing, not its value.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Literal, Mapping

import httpx

Provider = Literal["github", "gitlab", "auto"]
DEFAULT_VARIABLE = "CVMFS_EPHEMERAL_ID_TOKEN"


class IdTokenError(Exception):
    """No identity token could be obtained (one line, for the user)."""


def github(audience: str, env: Mapping[str, str], timeout_s: float = 30.0) -> str:
    url, request_token = env.get("ACTIONS_ID_TOKEN_REQUEST_URL"), env.get(
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN")
    if not url or not request_token:
        raise IdTokenError("ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN are not set: give the job "
                           "'permissions: id-token: write'")
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    full = f"{url}{sep}audience={urllib.parse.quote(audience, safe='')}"
    try:
        resp = httpx.get(full, headers={"Authorization": f"bearer {request_token}",
                                        "Accept": "application/json"}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise IdTokenError(f"requesting the GitHub identity token failed: {exc}") from None
    if resp.status_code != 200:
        raise IdTokenError(f"the GitHub token endpoint answered {resp.status_code}")
    try:
        value = resp.json()["value"]
    except (ValueError, KeyError, TypeError):
        raise IdTokenError("the GitHub token endpoint sent no 'value'") from None
    if not isinstance(value, str) or not value:
        raise IdTokenError("the GitHub token endpoint sent an empty token")
    return value


def gitlab(env: Mapping[str, str], variable: str = DEFAULT_VARIABLE) -> str:
    value = env.get(variable, "").strip()
    if not value:
        raise IdTokenError(f"{variable} is not set: declare it under the job's 'id_tokens:' "
                           "with the server's audience")
    return value


def obtain(provider: Provider, audience: str, *, variable: str = DEFAULT_VARIABLE,
           env: Mapping[str, str] | None = None) -> str:
    """The identity token of this CI job from ``provider`` (``auto``: whichever is present)."""
    env = os.environ if env is None else env
    if provider == "auto":
        if env.get("ACTIONS_ID_TOKEN_REQUEST_URL"):
            provider = "github"
        elif env.get(variable):
            provider = "gitlab"
        else:
            raise IdTokenError(f"no identity token found: neither ACTIONS_ID_TOKEN_REQUEST_URL "
                               f"(GitHub) nor {variable} (GitLab) is set")
    if provider == "github":
        return github(audience, env)
    if provider == "gitlab":
        return gitlab(env, variable)
    raise IdTokenError(f"--oidc must be github, gitlab or auto, not {provider!r}")
