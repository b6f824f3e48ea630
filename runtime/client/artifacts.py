"""``python -m runtime list`` and ``delete``: an upload service's artifacts, from a shell or CI.

The counterparts of ``upload`` for what a CI job does next: list what a namespace holds
(``GET /repos/<repo>?prefix=team-a/``) and delete an artifact or, with ``--recursive``, a whole
namespace in one revision (``DELETE /repos/<repo>/<name>?recursive=true``). Names are sent as
URL path segments with ``.``/``..`` encoded (``upload._quote``), so the server judges the name
the user typed. Listing is public; deleting needs a token like ``upload`` (never from the
command line).
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from ..cli_common import check_url, client_token, explain_status, fail
from .upload import _detail, _quote


def list_artifacts(url: str, repo: str, prefix: str = "", timeout_s: float = 60.0) -> dict:
    """The server's listing (``prefix``: a namespace, '' for everything)."""
    import httpx

    params = {"prefix": prefix} if prefix else {}
    try:
        resp = httpx.get(f"{url.rstrip('/')}/repos/{repo}", params=params, timeout=timeout_s)
    except httpx.TransportError as exc:
        fail(f"connection failed: {exc}")
    if resp.status_code != 200:
        fail(f"listing refused ({resp.status_code}): "
             f"{explain_status(resp.status_code, _detail(resp))}")
    return resp.json()


def delete_artifact(url: str, repo: str, name: str, *, recursive: bool = False,
                    token: str = "", timeout_s: float = 120.0) -> dict:
    """Delete ``name`` (a namespace with ``recursive``); the server's JSON answer."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = {"recursive": "true"} if recursive else {}
    try:
        resp = httpx.delete(f"{url.rstrip('/')}/repos/{repo}/{_quote(name)}", params=params,
                            headers=headers, timeout=timeout_s)
    except httpx.TransportError as exc:
        fail(f"connection failed: {exc}")
    if resp.status_code != 200:
        detail = _detail(resp)
        if resp.status_code == 409 and "recursive=true" in detail:
            detail = detail.replace("pass recursive=true", "pass --recursive")
        fail(f"delete refused ({resp.status_code}): {explain_status(resp.status_code, detail)}")
    return resp.json()


URL_OPTION = typer.Option(..., "--url", envvar="CVMFS_EPHEMERAL_URL", metavar="URL",
                          help="Base URL of the upload service, e.g. http://localhost:8080.")
REPO_OPTION = typer.Option(..., "--repo", metavar="FQRN",
                           help="Repository name, e.g. ci.example.org.")


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_command(
        url: str = URL_OPTION, repo: str = REPO_OPTION,
        prefix: Optional[str] = typer.Option(
            None, "--prefix", metavar="NAMESPACE",
            help="Only the artifacts under this namespace (team-a/), matched at segment "
                 "boundaries.", show_default="every artifact"),
        as_json: bool = typer.Option(False, "--json", help="Print the server's JSON answer."),
    ) -> None:
        """List a repository's artifacts (name, size, expiry), or those of one namespace."""
        check_url(url)
        body = list_artifacts(url, repo, prefix or "")
        if as_json:
            typer.echo(json.dumps(body))
            return
        for a in body["files"]:
            typer.echo(f"{a['name']}  {a['kind']}  {a['size']} bytes  "
                       f"expires {a['expires_at'] or 'never'}")

    @app.command("delete")
    def delete_command(
        name: str = typer.Argument(..., metavar="NAME",
                                   help="Artifact (team-a/app/pr-123) or, with --recursive, "
                                        "namespace (team-a) to delete."),
        url: str = URL_OPTION, repo: str = REPO_OPTION,
        recursive: bool = typer.Option(False, "--recursive",
                                       help="Delete every artifact under the namespace NAME "
                                            "in one revision."),
    ) -> None:
        """Delete an artifact, or a namespace with --recursive (token from
        CVMFS_EPHEMERAL_TOKEN or CVMFS_EPHEMERAL_TOKEN_FILE)."""
        check_url(url)
        body = delete_artifact(url, repo, name, recursive=recursive, token=client_token())
        removed = body.get("removed", [body["name"]])
        typer.echo(f"deleted {len(removed)} artifact(s) under {body['name']} in {repo} at "
                   f"revision {body['revision']}" if recursive and "removed" in body else
                   f"deleted {body['name']} in {repo} at revision {body['revision']}")
