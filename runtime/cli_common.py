"""What every ``python -m runtime`` command shares: one-line errors, settings, common options.

Imports nothing beyond typer at module level: a CI script that calls the CLI in a loop pays the
import of pydantic-settings, httpx or the server stack only in the commands that use them, and
the client-only install (``cvmfs-ephemeral[client]``, without pydantic) can run ``upload``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional
from urllib.parse import urlsplit

import typer

if TYPE_CHECKING:
    from .settings import Settings

def _plain_argument_help() -> None:
    """Show positional arguments as ``FQRN``/``[FQRN]``, as every Unix tool does.

    typer (pinned in runtime/requirements-client.txt) prints a required argument as ``{fqrn}`` in
    the usage line and adds a ``<str>`` type to it in the argument list, placeholders that read
    like template bugs to a user. Its option metavars can be set per option, its argument
    display cannot, hence these two small overrides; tests/test_cli_help.py fails if a help
    page shows ``{``, ``<str>`` or ``<bool>`` again.
    """
    from typer.core import TyperArgument

    def usage_name(self: TyperArgument) -> str:
        name = (self.metavar or self.name or "ARG").upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
    TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]
    TyperArgument._rich_display_name = lambda self: usage_name(self).strip("[]")  # type: ignore


_plain_argument_help()

DataDir = typer.Option(None, "--data-dir", metavar="DIR", help="Data directory.",
                       show_default="env CVMFS_EPHEMERAL_DATA_DIR, else var/data")
KeysDir = typer.Option(None, "--keys-dir", metavar="DIR", help="Keys directory.",
                       show_default="env CVMFS_EPHEMERAL_KEYS_DIR, else var/keys")

TOKEN_ENV = "CVMFS_EPHEMERAL_TOKEN"
TOKEN_FILE_ENV = "CVMFS_EPHEMERAL_TOKEN_FILE"

#: The packages only the ``server`` extra installs; a command that needs one of them on a
#: client-only install says which extra to install instead of a traceback.
SERVER_PACKAGES = frozenset({"pydantic", "pydantic_settings", "pydantic_core", "fastapi",
                             "starlette", "uvicorn", "cryptography", "prometheus_client",
                             "multipart", "python_multipart", "zstandard", "anyio"})


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code`` (2: bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_settings(data_dir: Optional[Path], keys_dir: Optional[Path]) -> "Settings":
    """Settings from the environment, with the directory flags taking precedence."""
    from .settings import Settings, describe_error

    overrides = {k: v for k, v in (("data_dir", data_dir), ("keys_dir", keys_dir))
                 if v is not None}
    try:
        return Settings(**overrides)
    except ValueError as exc:
        fail(describe_error(exc), 2)


def client_token() -> str:
    """The token the CLI sends: ``CVMFS_EPHEMERAL_TOKEN``, else the contents of the file named by
    ``CVMFS_EPHEMERAL_TOKEN_FILE``, else ''. Read from the environment directly (the same two
    variables as :meth:`runtime.settings.Settings.client_token`) so the client needs no pydantic."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = os.environ.get(TOKEN_FILE_ENV, "").strip()
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            fail(f"{TOKEN_FILE_ENV}={path}: {exc.strerror or exc}", 2)
    return ""


def check_url(url: str, option: str = "--url", *, served_tree: bool = False) -> str:
    """Refuse a URL that cannot work before any request is made (a one-line hint, exit 2).

    Without a scheme httpx would fail every retry for half a minute; a URL pointing into the
    served tree (``/cvmfs/<repo>``) reaches nginx or the stratum-0 routes, which answer a bare
    405 to an upload or admin call (``served_tree``: the option names that tree on purpose).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f"http://{url}" if "://" not in url else "http://host:8080"
        fail(f"{option} {url!r} is not an http(s) URL; did you mean {hint}?", 2)
    if "/cvmfs" in parts.path and not served_tree:
        base = url[: url.index("/cvmfs")] or "http://host:8080"
        fail(f"{option} {url!r} points at the served repository tree; give the upload "
             f"service's base URL instead, e.g. {base}", 2)
    return url


def explain_status(status: int, detail: str) -> str:
    """The server's one-line reason, with what a CLI user should do about it."""
    if status == 405:
        return (f"{detail} (405: this URL does not accept the request; is --url the upload "
                "service's base URL, e.g. http://host:8080, and not the stratum 0 or the gateway?)")
    if status == 409 and "overwrite" in detail:
        return detail.replace("pass overwrite=true", "pass --overwrite") \
            if "pass overwrite=true" in detail else f"{detail} (pass --overwrite to replace it)"
    if status == 401:
        return f"{detail} (set {TOKEN_ENV} or {TOKEN_FILE_ENV})"
    return detail
