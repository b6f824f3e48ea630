"""Calling the maintenance admin routes of an upload service over HTTP (``--url``).

The token comes from ``CVMFS_EPHEMERAL_TOKEN`` or from the file named by
``CVMFS_EPHEMERAL_TOKEN_FILE`` (how the Docker and Kubernetes targets mount it). It is sent as
a bearer token and never printed.
"""

from __future__ import annotations

import httpx

from ..settings import Settings

TOKEN_ENV = "CVMFS_EPHEMERAL_TOKEN"
TOKEN_FILE_ENV = "CVMFS_EPHEMERAL_TOKEN_FILE"
#: A gc of a large repository can take minutes; connecting must not.
TIMEOUT = httpx.Timeout(3600.0, connect=10.0)


class RemoteError(RuntimeError):
    """The service refused or failed the call; the message is one line for the user."""


def token_from_env(explicit: str | None = None) -> str:
    """``explicit``, else the configured client token; a clear error when there is none."""
    if explicit:
        return explicit
    token = Settings().client_token()
    if not token:
        raise RemoteError(f"no token: set {TOKEN_ENV} or {TOKEN_FILE_ENV}")
    return token


class AdminClient:
    """``POST`` the admin routes; each method returns the decoded JSON result."""

    def __init__(self, url: str, token: str, *, timeout: httpx.Timeout = TIMEOUT):
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout

    def _post(self, path: str, params: dict | None = None) -> dict:
        try:
            resp = httpx.post(f"{self.url}{path}", params=params, headers=self._headers,
                              timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise RemoteError(f"POST {self.url}{path}: {exc}") from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text.strip()
            raise RemoteError(f"POST {self.url}{path}: {resp.status_code} {detail}")
        return resp.json()

    @staticmethod
    def _path(job: str, fqrn: str | None) -> str:
        return f"/repos/{fqrn}/{job}" if fqrn else f"/{job}"

    def clean(self, fqrn: str | None = None, dry_run: bool = False) -> dict:
        return self._post(self._path("clean", fqrn), {"dry_run": "true"} if dry_run else None)

    def gc(self, fqrn: str | None = None) -> dict:
        return self._post(self._path("gc", fqrn))

    def resign(self, fqrn: str | None = None, force: bool = False) -> dict:
        return self._post(self._path("resign", fqrn), {"force": "true"} if force else None)

    def housekeeping(self) -> dict:
        return self._post("/housekeeping")
