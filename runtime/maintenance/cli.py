"""CLI commands: ``clean``, ``gc``, ``resign``, ``housekeeping`` and ``schedule``.

Without ``--url`` a command works on the local data directory (``--data-dir``/``--keys-dir`` or
``CVMFS_EPHEMERAL_*``): the named repository, or every configured repository plus every one
found in the data directory. With ``--url`` it calls the admin routes of an upload service with
the token from ``CVMFS_EPHEMERAL_TOKEN`` (or the file ``CVMFS_EPHEMERAL_TOKEN_FILE``). Output is
the job's JSON report; the exit status is 1 if any repository failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..cli_common import DataDir, KeysDir, check_url
from ..cli_common import fail as _fail
from ..cli_common import load_settings as _settings

if TYPE_CHECKING:  # imported in the commands: the CLI starts without pydantic (cli_common)
    from ..settings import Settings

Url = typer.Option(None, "--url", metavar="URL",
                   help="Call the admin routes of this upload service (e.g. "
                        "http://upload:8080) instead of working on the local data directory.",
                   show_default="local data directory")
Fqrn = typer.Argument(None, metavar="FQRN", help="Repository name.",
                      show_default="every repository")


def local_repositories(settings: "Settings", fqrn: str | None) -> list:
    """The named repository, or every configured one plus every one found on disk."""
    from ..repository import Repository
    from ..settings import validate_fqrn

    if fqrn is not None:
        try:
            validate_fqrn(fqrn)
        except ValueError as exc:
            _fail(str(exc), 2)
        names = [fqrn]
    else:
        names = [r.fqrn for r in settings.repositories]
        public = settings.data_dir / "public"
        if public.is_dir():
            names += sorted(p.name for p in public.iterdir()
                            if (p / ".cvmfspublished").is_file() and p.name not in names)
    repos = [Repository(settings.data_dir, settings.keys_dir, settings.repository(n),
                        **settings.repository_options())
             for n in names]
    for repo in repos:
        if not repo.exists():
            _fail(f"repository {repo.fqrn} does not exist in {settings.data_dir}", 2)
    return repos


def _emit(report: dict) -> None:
    typer.echo(json.dumps(report, indent=2))
    if report.get("errors") or "error" in report:
        raise typer.Exit(1)


def _remote(url: str):
    from .remote import AdminClient, RemoteError, token_from_env

    check_url(url)

    try:
        return AdminClient(url, token_from_env())
    except (RemoteError, OSError) as exc:
        _fail(str(exc), 2)


def _in_cli_words(message: str) -> str:
    """A remote refusal with the hint a CLI user needs (a 405 means a wrong --url)."""
    from ..cli_common import explain_status

    for status in (405, 401):
        if f": {status} " in message:
            return explain_status(status, message)
    return message


def _run(job: str, fqrn: Optional[str], url: Optional[str], data_dir: Optional[Path],
         keys_dir: Optional[Path], force: bool = False, dry_run: bool = False) -> None:
    if url:
        from .remote import RemoteError

        client = _remote(url)
        try:
            if job == "resign":
                report = client.resign(fqrn, force=force)
            elif job == "housekeeping":
                report = client.housekeeping()
            elif job == "clean":
                report = client.clean(fqrn, dry_run=dry_run)
            else:
                report = getattr(client, job)(fqrn)
        except RemoteError as exc:
            _fail(_in_cli_words(str(exc)))
        _emit(report)
        return
    from . import housekeeping as hk

    from .. import logs

    settings = _settings(data_dir, keys_dir)
    logs.setup("warning", settings.log_format)  # stdout is the JSON report; stderr the warnings
    repos = local_repositories(settings, fqrn)
    if job == "housekeeping":
        _emit(hk.housekeeping(repos, settings))
    else:
        _emit(hk.run_all(job, repos, settings, force=force, dry_run=dry_run))


def register(app: typer.Typer) -> None:
    """Add the maintenance commands to the ``python -m runtime`` app."""

    @app.command()
    def clean(fqrn: Optional[str] = Fqrn, url: Optional[str] = Url,
              dry_run: bool = typer.Option(False, "--dry-run",
                                           help="List what would be removed (would_remove); "
                                                "remove nothing."),
              data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir) -> None:
        """Remove expired artifacts (one new revision per repository)."""
        _run("clean", fqrn, url, data_dir, keys_dir, dry_run=dry_run)

    @app.command()
    def gc(fqrn: Optional[str] = Fqrn, url: Optional[str] = Url,
           data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir) -> None:
        """Delete objects no retained revision references; report objects and bytes freed."""
        _run("gc", fqrn, url, data_dir, keys_dir)

    @app.command()
    def resign(fqrn: Optional[str] = Fqrn, url: Optional[str] = Url,
               force: bool = typer.Option(False, "--force", help="Re-sign even if not due."),
               data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir) -> None:
        """Re-sign the whitelist when fewer than CVMFS_EPHEMERAL_RESIGN_BELOW_DAYS remain."""
        _run("resign", fqrn, url, data_dir, keys_dir, force)

    @app.command()
    def housekeeping(url: Optional[str] = Url, data_dir: Optional[Path] = DataDir,
                     keys_dir: Optional[Path] = KeysDir) -> None:
        """clean, gc and resign on every repository."""
        _run("housekeeping", None, url, data_dir, keys_dir)

    @app.command()
    def schedule(url: str = typer.Option(..., "--url", metavar="URL",
                                         help="Upload service whose admin routes to drive.")
                 ) -> None:
        """Run clean, gc and resign on their intervals against an upload service's admin
        routes (CVMFS_EPHEMERAL_CLEAN_INTERVAL_S, _GC_INTERVAL_S, _RESIGN_INTERVAL_S)."""
        import asyncio

        from .scheduler import Scheduler, remote_jobs, serve_forever

        settings = _settings(None, None)
        from .. import logs

        logs.setup(settings.log_level, settings.log_format)
        scheduler = Scheduler(remote_jobs(settings, _remote(url)))
        asyncio.run(serve_forever(scheduler))
