"""``python -m runtime token …``: make and hash static tokens for the tokens file.

``token new`` prints the fresh secret on stdout's first line (hand it to the CI secret store)
and the line to add to ``CVMFS_EPHEMERAL_TOKENS_FILE`` on the second; the file then holds only
the secret's SHA-256. ``token hash`` reads a secret on stdin (never from the command line,
where other users could see it) and prints its hash, to convert a plain entry.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Static tokens: make a new one, or hash an existing secret.")


@app.command("new")
def new(label: str = typer.Option(..., "--label", help="name used in logs and provenance"),
        role: str = typer.Option("upload", "--role", help="upload | admin"),
        repo: Optional[str] = typer.Option(None, "--repo", help="only this repository"),
        prefix: Optional[str] = typer.Option(
            None, "--prefix", help="artifact names must start with this (e.g. team-a-)")) -> None:
    """Print a fresh secret and the tokens-file line that grants it."""
    from .tokens import TokenConfigError, new_token  # lazily: the CLI starts without settings

    if role not in ("upload", "admin"):
        typer.echo("error: --role must be upload or admin", err=True)
        raise typer.Exit(2)
    try:
        secret, line = new_token(label, role, repo, prefix)  # type: ignore[arg-type]
    except TokenConfigError as exc:
        typer.echo(f"error: {str(exc).removeprefix('new token: ')}", err=True)
        raise typer.Exit(2)
    typer.echo(secret)
    typer.echo(line)
    typer.echo("# line 1: the secret, for the CI secret store (shown once); line 2: add it to "
               "the tokens file and restart the upload service", err=True)


@app.command("hash")
def hash_() -> None:
    """Read a secret on stdin, print the sha256 to store instead of it."""
    from .tokens import digest
    secret = sys.stdin.readline().strip()
    if not secret:
        typer.echo("error: no secret on stdin", err=True)
        raise typer.Exit(2)
    typer.echo(digest(secret))


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="token")
