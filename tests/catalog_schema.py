"""Catalog schema extraction, to compare the writer's SQLite catalogs with real cvmfs ones.

cvmfs copies rows between catalogs with ``SELECT *``, so table names, column names, column
order and declared types all matter (docs/cvmfs-format.md, "File catalogs"). ``schema_of`` reduces a database to
exactly those facts; ``reference_root_catalog_path`` gives the real catalog to compare with.
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
import zlib
from pathlib import Path
from typing import Any

from tests.conftest import REFERENCE_DIR

_tmpdir: Path | None = None


def schema_of(sqlite_path: Path) -> dict[str, Any]:
    """Describe a database's schema in comparable form.

    Returns ``{"tables": {table: [(column, declared type), ...]},     # creation order
               "primary_keys": {table: [column, ...]},                # key order
               "foreign_keys": {table: [(from_cols, ref_table, to_cols), ...]},
               "indexes": {index: (table, [column, ...])}}``          # explicit indexes only
    Automatic PRIMARY KEY indexes (``sqlite_autoindex_*``) are left out: they follow from
    ``primary_keys`` and their names are SQLite's, not the writer's.
    """
    conn = sqlite3.connect(Path(sqlite_path).as_uri() + "?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY rowid")]
        result: dict[str, Any] = {"tables": {}, "primary_keys": {}, "foreign_keys": {},
                                  "indexes": {}}
        for table in tables:
            info = conn.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
            result["tables"][table] = [(col[1], col[2]) for col in info]
            pk = sorted((col[5], col[1]) for col in info if col[5])
            result["primary_keys"][table] = [name for _, name in pk]
            result["foreign_keys"][table] = _foreign_keys(conn, table)
        for name, table in conn.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type='index' "
                "AND name NOT LIKE 'sqlite_autoindex_%' ORDER BY rowid"):
            cols = [r[2] for r in conn.execute(f"PRAGMA index_info({_quote(name)})")]
            result["indexes"][name] = (table, cols)
        return result
    finally:
        conn.close()


def _foreign_keys(conn: sqlite3.Connection, table: str) -> list[tuple[tuple[str, ...], str,
                                                                         tuple[str, ...]]]:
    """Foreign keys grouped by constraint id: (from columns, referenced table, to columns)."""
    groups: dict[int, list[tuple[int, str, str, str]]] = {}
    for fk_id, seq, ref_table, frm, to, *_ in conn.execute(
            f"PRAGMA foreign_key_list({_quote(table)})"):
        groups.setdefault(fk_id, []).append((seq, ref_table, frm, to))
    out = []
    for fk_id in sorted(groups):
        rows = sorted(groups[fk_id])
        out.append((tuple(r[2] for r in rows), rows[0][1], tuple(r[3] for r in rows)))
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _scratch() -> Path:
    """One temp dir per process for inflated reference catalogs, removed at exit."""
    global _tmpdir
    if _tmpdir is None:
        _tmpdir = Path(tempfile.mkdtemp(prefix="cvmfs-ref-catalogs-"))
        atexit.register(shutil.rmtree, _tmpdir, True)
    return _tmpdir


def reference_catalog_path(fqrn: str, catalog_hash: str) -> Path:
    """Inflate the reference catalog object ``<hash>C`` of ``fqrn`` to a temp file."""
    obj = REFERENCE_DIR / fqrn / "public" / "data" / catalog_hash[:2] / f"{catalog_hash[2:]}C"
    dest = _scratch() / f"{fqrn}-{catalog_hash}.sqlite"
    if not dest.exists():
        dest.write_bytes(zlib.decompress(obj.read_bytes()))
    return dest


def reference_root_catalog_hash(fqrn: str) -> str:
    """The current root catalog hash: the ``C`` line of the reference ``.cvmfspublished``."""
    raw = (REFERENCE_DIR / fqrn / "public" / ".cvmfspublished").read_bytes()
    body = raw.split(b"\n--\n", 1)[0].decode()
    return next(line[1:] for line in body.split("\n") if line.startswith("C"))


def reference_root_catalog_path(fqrn: str) -> Path:
    """The current reference root catalog of ``fqrn``, inflated to a temp SQLite file."""
    return reference_catalog_path(fqrn, reference_root_catalog_hash(fqrn))


def reference_nested_catalog_path(fqrn: str, mountpoint: str = "/nested") -> Path:
    """The current reference nested catalog mounted at ``mountpoint``, inflated."""
    conn = sqlite3.connect(reference_root_catalog_path(fqrn).as_uri() + "?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT sha1 FROM nested_catalogs WHERE path = ?",
                           (mountpoint,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise KeyError(f"{fqrn} has no nested catalog at {mountpoint!r}")
    return reference_catalog_path(fqrn, row[0])
