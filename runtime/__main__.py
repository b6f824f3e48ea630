"""``python -m runtime``: the command line (typer). Wiring only; the logic lives in modules.

Every command imports what it needs inside its body: the settings (pydantic-settings), the
repository, the server and the HTTP client each cost tens to hundreds of milliseconds to
import, which a CI script calling the CLI in a loop would pay on every call, and a client-only
install (``cvmfs-ephemeral[client]``) does not even have them (``main`` then names the extra).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from .cli_common import SERVER_PACKAGES, DataDir, KeysDir
from .cli_common import fail as _fail
from .cli_common import load_settings as _settings
from .version import __version__

if TYPE_CHECKING:
    from .settings import RepositoryConfig, Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="cvmfs-ephemeral: a native CernVM-FS stratum 0 for short-lived artifacts.")

#: cvmfs-gateway's port; ``serve --role gateway`` uses it unless a port is configured.
GATEWAY_PORT = 4929


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cvmfs-ephemeral {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """cvmfs-ephemeral: a native CernVM-FS stratum 0 for short-lived artifacts."""


def _repo_config(settings: "Settings", fqrn: str) -> "RepositoryConfig":
    from .settings import validate_fqrn

    try:
        validate_fqrn(fqrn)
    except ValueError as exc:
        _fail(str(exc), 2)
    return settings.repository(fqrn)


Fqrn = typer.Argument(..., metavar="FQRN", help="Repository name, e.g. ci.example.org.")


@app.command()
def init(fqrn: str = Fqrn, data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir,
         compression: Optional[str] = typer.Option(
             None, metavar="none|zlib", help="File content compression.",
             show_default="the repository's configuration, else none"),
         catalog_ttl_s: Optional[int] = typer.Option(
             None, "--catalog-ttl-s", metavar="SECONDS",
             help="Catalog TTL: how often clients re-check for a new revision (not an artifact "
                  "lifetime; that is publish/upload --ttl-s).",
             show_default="the repository's configuration, else 60"),
         ttl: Optional[int] = typer.Option(None, "--ttl", hidden=True,
                                           help="Old name of --catalog-ttl-s.")) -> None:
    """Create keys (if absent) and an empty signed repository; a no-op if it exists."""
    if catalog_ttl_s is None:
        catalog_ttl_s = ttl
    from .repository import Repository, RepositoryError
    from .settings import RepositoryConfig, describe_error

    settings = _settings(data_dir, keys_dir)
    config = _repo_config(settings, fqrn)
    updates = {k: v for k, v in (("compression", compression), ("ttl_s", catalog_ttl_s))
               if v is not None}
    if updates:
        try:
            config = RepositoryConfig.model_validate({**config.model_dump(), **updates})
        except ValueError as exc:
            _fail(describe_error(exc).replace("ttl_s:", "--catalog-ttl-s:")
                  .replace("compression:", "--compression:"), 2)
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
def publish(fqrn: str = Fqrn,
            source: Path = typer.Argument(..., metavar="SOURCE",
                                          help="Directory or tar archive to publish."),
            name: Optional[str] = typer.Option(
                None, "--name", metavar="NAME", show_default=False,
                help="Artifact name (team-a/app/pr-123: up to CVMFS_EPHEMERAL_MAX_NAME_DEPTH"
                     " segments; the last is the artifact's directory); required."),
            as_: Optional[str] = typer.Option(None, "--as", hidden=True,
                                              help="Old name of --name."),
            ttl_s: Optional[int] = typer.Option(
                None, "--ttl-s", metavar="SECONDS",
                help="Artifact lifetime: expire after this many seconds.",
                show_default="never expires"),
            data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir) -> None:
    """Publish a local directory (or tar archive) as one artifact, replacing any old one."""
    name = name or as_
    if not name:
        _fail("missing option --name (the artifact name)", 2)
    from .repository import Repository, RepositoryError, validate_artifact_name

    settings = _settings(data_dir, keys_dir)
    repo = Repository(settings.data_dir, settings.keys_dir, _repo_config(settings, fqrn),
                      **settings.repository_options())
    try:
        if not repo.exists():
            _fail(f"repository {fqrn} does not exist in {settings.data_dir}; run init first")
        from .heap import freeze_startup_objects

        freeze_startup_objects()  # a 10,000-file tree triggers full collections otherwise
        tx = repo.begin()
        try:
            names = {a.name for a in repo.artifacts()}
            validate_artifact_name(name, repo.max_name_depth)
            tx.artifact(name)
            if name in names:
                tx.remove(name)
            if source.is_dir():
                tx.add_tree(source, name)
            elif source.is_file():
                from .ingest import IngestLimits, stage_archive
                with open(source, "rb") as fh:
                    stage_archive(tx, name, fh, limits=IngestLimits.from_settings(settings))
            else:
                _fail(f"{source}: no such file or directory", 2)
            if ttl_s is not None:
                import time
                tx.set_expiry(name, time.time() + ttl_s)
            result = tx.publish()
        finally:
            tx.release()
    except RepositoryError as exc:
        _fail(str(exc), 2)
    finally:
        repo.close()
        from .cvmfs.batches import stop_helpers

        stop_helpers()  # started for a large tree (Transaction.add_tree)
    typer.echo(f"published {name} in {fqrn} at revision {result.revision}"
               f" ({result.publish_time_s * 1000:.0f} ms commit)")


@app.command()
def info(fqrn: str = Fqrn, data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir,
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")
         ) -> None:
    """Revision, whitelist expiry, object count and bytes of a repository."""
    import json

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
def verify(url: str = typer.Option(..., metavar="URL",
                                   help="Repository URL, e.g. http://host:8000/cvmfs/ci.example.org."),
           fqrn: str = typer.Option(..., metavar="FQRN",
                                    help="Repository name the whitelist must name."),
           public_key: Path = typer.Option(..., "--public-key", metavar="FILE",
                                           help="The repository's master public key, "
                                                "FQRN.pub.")) -> None:
    """Fetch and verify the whitelist and manifest of a served repository (post-deploy check)."""
    import datetime as dt

    from .cli_common import check_url
    from .verify import VerificationError, verify_remote

    check_url(url, served_tree=True)
    try:
        m = verify_remote(url, fqrn, public_key.read_bytes(), key_name=str(public_key))
    except (VerificationError, OSError) as exc:
        _fail(str(exc))
    published = dt.datetime.fromtimestamp(m.timestamp, dt.timezone.utc)
    typer.echo(f"{fqrn}: revision {m.revision} verified"
               f" (published {published:%Y-%m-%d %H:%M:%S} UTC)")


@app.command()
def serve(host: Optional[str] = typer.Option(
              None, metavar="ADDRESS", help="Address to listen on.",
              show_default="env CVMFS_EPHEMERAL_HOST, else 127.0.0.1"),
          port: Optional[int] = typer.Option(
              None, metavar="PORT", help="TCP port.",
              show_default="env CVMFS_EPHEMERAL_PORT, else 8080; 4929 for the gateway role"),
          role: Optional[str] = typer.Option(
              None, metavar="all|upload|gateway",
              help="all: everything in one process; upload: stratum 0, upload API and admin "
                   "routes; gateway: notifications only.",
              show_default="env CVMFS_EPHEMERAL_ROLE, else all"),
          data_dir: Optional[Path] = DataDir, keys_dir: Optional[Path] = KeysDir) -> None:
    """Run the server (stratum 0, upload API, gateway, scheduler, as the role says)."""
    from .settings import Settings, describe_error

    overrides = {k: v for k, v in (("host", host), ("port", port), ("role", role),
                                   ("data_dir", data_dir), ("keys_dir", keys_dir)) if v is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        _fail(describe_error(exc), 2)
    if settings.role == "gateway" and "port" not in settings.model_fields_set:
        settings = settings.model_copy(update={"port": GATEWAY_PORT})
    if not settings.repositories:
        _fail("no repository configured: set CVMFS_EPHEMERAL_REPOSITORIES, e.g. "
              "CVMFS_EPHEMERAL_REPOSITORIES=ci.example.org", 2)
    # Bind first: a port in use must fail before the app opens repositories and before the
    # mount recipe and "startup complete" claim a server that never ran.
    sock = _bind(settings.host, settings.port)
    from .logs import setup as setup_logging
    from .server.app import create_app, make_server

    setup_logging(settings.log_level, settings.log_format)
    _warn_if_unprotected(settings)
    application = create_app(settings)
    _print_mount_instructions(settings)
    from .heap import freeze_startup_objects

    freeze_startup_objects()  # after every import and the app: see runtime/heap.py
    make_server(application, host=settings.host, port=settings.port).run(sockets=[sock])


def _bind(host: str, port: int):  # -> socket.socket
    """A listening socket on ``host:port``, or a one-line error (exit 2)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 2)
    sock.listen(2048)  # uvicorn's default backlog
    sock.set_inheritable(True)
    return sock


def _warn_if_unprotected(settings: "Settings") -> None:
    """Write routes with no token configured refuse every write: say so at start, loudly."""
    import logging

    if settings.role == "gateway" or settings.tokens.strip() or settings.tokens_file:
        return
    logging.getLogger("runtime.serve").warning(
        "no upload token configured (CVMFS_EPHEMERAL_TOKENS or CVMFS_EPHEMERAL_TOKENS_FILE): "
        "every upload, delete and maintenance call will be refused")


def _print_mount_instructions(settings: "Settings") -> None:
    """Tell the operator how a client mounts each repository this process serves."""
    from .clientconf import mount_instructions

    if settings.role == "gateway":
        return
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = settings.public_url or f"http://{host}:{settings.port}"
    notify = settings.gateway_url or (f"{base}/api/v1" if settings.role == "all" else None)
    for repo in settings.repositories:
        typer.echo(mount_instructions(repo.fqrn, base, notify))


@app.command()
def config(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of "
                                                              "NAME=value lines.")) -> None:
    """Print the effective configuration (environment and defaults), secrets masked."""
    from .settings import effective_config

    settings = _settings(None, None)
    values = effective_config(settings)
    if as_json:
        import json
        typer.echo(json.dumps(values, indent=2))
        return
    for key, value in values.items():
        typer.echo(f"{key}={value}")


# Commands of the other areas register themselves here (their modules import their heavy
# dependencies lazily, inside the commands).
from .client import upload as _client_upload  # noqa: E402
from .client import artifacts as _client_artifacts  # noqa: E402
from .maintenance import cli as _maintenance_cli  # noqa: E402
from .auth import cli as _auth_cli  # noqa: E402

_client_upload.register(app)
_client_artifacts.register(app)
_maintenance_cli.register(app)
_auth_cli.register(app)


def main() -> None:
    """The console script: the app, with a missing server dependency named as the extra."""
    try:
        app()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_PACKAGES:
            raise
        typer.echo(f"error: this command needs the server dependencies ({exc.name} is "
                   "missing): pip install 'cvmfs-ephemeral[server]'", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
