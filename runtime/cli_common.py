"""What every ``python -m runtime`` command shares: one-line errors, settings, common options."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn, Optional

import typer

from .settings import Settings, describe_error

DataDir = typer.Option(None, "--data-dir", help="data directory [env CVMFS_EPHEMERAL_DATA_DIR]")
KeysDir = typer.Option(None, "--keys-dir", help="keys directory [env CVMFS_EPHEMERAL_KEYS_DIR]")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code`` (2: bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_settings(data_dir: Optional[Path], keys_dir: Optional[Path]) -> Settings:
    """Settings from the environment, with the directory flags taking precedence."""
    overrides = {k: v for k, v in (("data_dir", data_dir), ("keys_dir", keys_dir))
                 if v is not None}
    try:
        return Settings(**overrides)
    except ValueError as exc:
        fail(describe_error(exc), 2)
