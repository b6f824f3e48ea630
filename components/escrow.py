"""Key escrow: export a stack's repository keys to files, and turn such files into ``importedKeys``.

Why more than ``pulumi stack output --show-secrets``: a backup must be usable without this stack
(its state may be what was lost), must be checked when it is taken (not on the day it is needed)
and must be restorable into a new stack in one step. So the export writes each repository's keys
in the layout ``cvmfs_server`` itself uses (``/etc/cvmfs/keys``: ``<fqrn>.masterkey``,
``<fqrn>.key``, ``<fqrn>.crt``, ``<fqrn>.pub``), private files mode 0400, after checking that the
certificate belongs to the repository key and that ``.pub`` is the master key's public half; plus
a ``FINGERPRINTS`` file to compare with the whitelist. The import reads such a directory (from
this export or from a ``cvmfs_server`` machine), checks it the same way and prints the value of
``cvmfs-ephemeral:importedKeys``, which ``pulumi config set --secret`` reads from stdin.

Usage (README, "Backing up and restoring the repository keys")::

    pulumi stack output keyEscrow --show-secrets --json | python -m components.escrow export DIR
    python -m components.escrow import DIR | pulumi config set --secret cvmfs-ephemeral:importedKeys

This module never talks to Pulumi or the network: the CLI pipes do. It uses only the stack
configuration model and the key helpers of ``components/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Mapping

from .config import ConfigError, ImportedKeySpec
from .keys import _check_pair, _public_key_from_private, certificate_fingerprint

#: File suffix → key in ``importedKeys`` (``.pub`` is derived, so it is checked, not imported).
SUFFIXES = {".masterkey": "masterKey", ".key": "repositoryKey", ".crt": "certificate"}
PRIVATE = (".masterkey", ".key")


class EscrowError(ValueError):
    """An incomplete or inconsistent key set: refused before anything is written or set."""


def _validated(fqrn: str, spec: Mapping[str, str]) -> ImportedKeySpec:
    try:
        imported = ImportedKeySpec.model_validate(dict(spec))
        _check_pair(imported, f"keys of {fqrn}")
    except (ValueError, ConfigError) as exc:
        raise EscrowError(f"{fqrn}: {exc}") from None
    return imported


def export_keys(escrow: Mapping[str, Mapping[str, str]], directory: Path) -> list[Path]:
    """Write every repository's keys from the ``keyEscrow`` stack output into ``directory``.

    All key sets are checked before the first file is written. Returns the files written.
    """
    checked = {fqrn: _validated(fqrn, spec) for fqrn, spec in sorted(escrow.items())}
    if not checked:
        raise EscrowError("no repository keys in the input (is it the keyEscrow output?)")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    written: list[Path] = []
    lines = []
    for fqrn, keys in checked.items():
        files = {
            ".masterkey": keys.master_key,
            ".key": keys.repository_key,
            ".crt": keys.certificate,
            ".pub": _public_key_from_private(keys.master_key, f"{fqrn}.masterkey"),
        }
        for suffix, content in files.items():
            path = directory / f"{fqrn}{suffix}"
            if path.exists():
                os.chmod(path, 0o600)
            # Created with the final mode, so a private key is never readable by others.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
            os.chmod(path, 0o400 if suffix in PRIVATE else 0o444)
            written.append(path)
        lines.append(f"{fqrn} {certificate_fingerprint(keys.certificate)}")
    (directory / "FINGERPRINTS").write_text("\n".join(lines) + "\n")
    return written


def import_keys(directory: Path) -> dict[str, dict[str, str]]:
    """The ``importedKeys`` value for every complete key set in ``directory``.

    A repository with some files missing, a certificate of another key, or a ``.pub`` that is
    not the master key's is refused (clients trust ``.pub``: importing another master key would
    lock every client out).
    """
    fqrns = sorted(
        {p.name[: -len(suffix)] for p in directory.iterdir() for suffix in SUFFIXES
         if p.name.endswith(suffix)}
    )
    if not fqrns:
        raise EscrowError(f"no <fqrn>.masterkey/.key/.crt files in {directory}")
    out: dict[str, dict[str, str]] = {}
    for fqrn in fqrns:
        spec: dict[str, str] = {}
        for suffix, key in SUFFIXES.items():
            path = directory / f"{fqrn}{suffix}"
            if not path.is_file():
                raise EscrowError(f"{fqrn}: {path.name} is missing")
            spec[key] = path.read_text()
        imported = _validated(fqrn, spec)
        pub = directory / f"{fqrn}.pub"
        derived = _public_key_from_private(imported.master_key, f"{fqrn}.masterkey")
        if pub.is_file() and pub.read_text().strip() != derived.strip():
            raise EscrowError(f"{fqrn}: {pub.name} is not the public half of {fqrn}.masterkey")
        out[fqrn] = spec
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.escrow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="keyEscrow JSON on stdin -> key files in DIR")
    export.add_argument("directory", type=Path)
    imp = sub.add_parser("import", help="key files in DIR -> importedKeys JSON on stdout")
    imp.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            written = export_keys(json.load(sys.stdin), args.directory)
            print(f"wrote {len(written)} files to {args.directory}; fingerprints in "
                  f"{args.directory / 'FINGERPRINTS'}", file=sys.stderr)
        else:
            json.dump(import_keys(args.directory), sys.stdout, sort_keys=True)
    except (EscrowError, json.JSONDecodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
