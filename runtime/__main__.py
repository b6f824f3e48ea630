"""``python -m runtime``: the command line (typer). Wiring only; the logic lives in modules."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .cli_common import DataDir, KeysDir
from .cli_common import fail as _fail
from .cli_common import load_settings as _settings
from .settings import RepositoryConfig, Settings, describe_error, validate_fqrn

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="cvmfs-ephemeral: a native CernVM-FS stratum 0 for short-lived artifacts.")


def _repo_config(settings: Settings, fqrn: str) -> RepositoryConfig:
    try:
        validate_fqrn(fqrn)
    except ValueError as exc:
        _fail(str(exc), 2)
    return settings.repository(fqrn)


@app.command()
def init(fqrn: str, data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir,
         compression: Optional[str] = typer.Option(None, help="none or zlib (file content)"),
         ttl: Optional[int] = typer.Option(None, help="catalog TTL in seconds")) -> None:
    """Create keys (if absent) and an empty signed repository; a no-op if it exists."""
    from .repository import Repository, RepositoryError

    settings = _settings(data_dir, keys_dir)
    config = _repo_config(settings, fqrn)
    updates = {k: v for k, v in (("compression", compression), ("ttl_s", ttl)) if v is not None}
    if updates:
        try:
            config = RepositoryConfig.model_validate({**config.model_dump(), **updates})
        except ValueError as exc:
            _fail(describe_error(exc), 2)
    repo = Repository(settings.data_dir, settings.keys_dir, config)
    try:
        created = repo.init()
    except RepositoryError as exc:
        _fail(str(exc))
    m = repo.manifest()
    if created:
        typer.echo(f"created repository {fqrn} at revision {m.revision}")
    else:
        typer.echo(f"repository {fqrn} already exists (revision {m.revision}); nothing changed")
    typer.echo(f"  served tree: {repo.public_dir}")
    typer.echo(f"  public key:  {settings.keys_dir / (fqrn + '.pub')}")


@app.command()
def publish(fqrn: str, source: Path = typer.Argument(..., help="directory or tar archive"),
            as_: str = typer.Option(..., "--as", help="artifact name (top-level directory)"),
            ttl_s: Optional[int] = typer.Option(None, "--ttl-s", help="expire after N seconds"),
            data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir) -> None:
    """Publish a local directory (or tar archive) as one artifact, replacing any old one."""
    from .repository import Repository, RepositoryError

    settings = _settings(data_dir, keys_dir)
    repo = Repository(settings.data_dir, settings.keys_dir, _repo_config(settings, fqrn))
    try:
        if not repo.exists():
            _fail(f"repository {fqrn} does not exist in {settings.data_dir}; run init first")
        tx = repo.begin()
        try:
            names = {a.name for a in repo.artifacts()}
            from .repository import validate_artifact_name
            validate_artifact_name(as_)
            if as_ in names:
                tx.remove(as_)
            if source.is_dir():
                tx.add_tree(source, as_)
            elif source.is_file():
                from .ingest import IngestLimits, stage_archive
                with open(source, "rb") as fh:
                    stage_archive(tx, as_, fh, limits=IngestLimits.from_settings(settings))
            else:
                _fail(f"{source}: no such file or directory", 2)
            if ttl_s is not None:
                import time
                tx.set_expiry(as_, time.time() + ttl_s)
            result = tx.publish()
        finally:
            tx.release()
    except RepositoryError as exc:
        _fail(str(exc), 2)
    finally:
        repo.close()
    typer.echo(f"published {as_} in {fqrn} at revision {result.revision}"
               f" ({result.publish_time_s * 1000:.0f} ms commit)")


@app.command()
def info(fqrn: str, data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir,
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Revision, whitelist expiry, object count and bytes of a repository."""
    from .repository import Repository, RepositoryError

    settings = _settings(data_dir, keys_dir)
    repo = Repository(settings.data_dir, settings.keys_dir, _repo_config(settings, fqrn))
    if not repo.exists():
        _fail(f"repository {fqrn} does not exist in {settings.data_dir}")
    try:
        data = repo.info()
    except RepositoryError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        typer.echo(f"{key:24} {value}")


@app.command()
def verify(url: str = typer.Option(..., help="repository URL, http://host/cvmfs/<fqrn>"),
           fqrn: str = typer.Option(...),
           public_key: Path = typer.Option(..., "--public-key", help="the master <fqrn>.pub")) -> None:
    """Fetch and verify the whitelist and manifest of a served repository (post-deploy check)."""
    from .verify import VerificationError, verify_remote

    try:
        m = verify_remote(url, fqrn, public_key.read_bytes())
    except (VerificationError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"{fqrn}: revision {m.revision} verified"
               f" (published {dt.datetime.fromtimestamp(m.timestamp, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC)")


#: cvmfs-gateway's port; ``serve --role gateway`` uses it unless a port is configured.
GATEWAY_PORT = 4929


@app.command()
def serve(host: Optional[str] = typer.Option(None), port: Optional[int] = typer.Option(None),
          role: Optional[str] = typer.Option(None, help="all | upload | gateway"),
          data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir) -> None:
    """Run the server (stratum 0, upload API, gateway, scheduler, as the role says)."""
    from .server.app import create_app, make_server

    overrides = {k: v for k, v in (("host", host), ("port", port), ("role", role),
                                   ("data_dir", data_dir), ("keys_dir", keys_dir)) if v is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        _fail(describe_error(exc), 2)
    if settings.role == "gateway" and "port" not in settings.model_fields_set:
        settings = settings.model_copy(update={"port": GATEWAY_PORT})
    application = create_app(settings)
    _print_mount_instructions(settings)
    make_server(application, host=settings.host, port=settings.port,
                log_level=settings.log_level).run()


def _print_mount_instructions(settings: Settings) -> None:
    """Tell the operator how a client mounts each repository this process serves."""
    from .clientconf import mount_instructions

    if settings.role == "gateway":
        return
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = settings.public_url or f"http://{host}:{settings.port}"
    notify = settings.gateway_url or (f"{base}/api/v1" if settings.role == "all" else None)
    for repo in settings.repositories:
        typer.echo(mount_instructions(repo.fqrn, base, notify))


# Commands of the other areas register themselves here.
from .client import upload as _client_upload  # noqa: E402
from .maintenance import cli as _maintenance_cli  # noqa: E402

_client_upload.register(app)
_maintenance_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
