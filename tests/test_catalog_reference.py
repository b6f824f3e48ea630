"""The writer's catalogs have the real cvmfs_server 2.12 schema, properties and statistics."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from runtime.cvmfs.catalog import COUNTER_NAMES, NestedRef, build_catalog, read_catalog
from tests.catalog_schema import schema_of
from tests.conftest import REFERENCE_DIR, REFERENCE_FQRNS
from tests.served import served_repository

ROOTS = {"zlib.ref.test": ("f8b25b33e4e2f127178d7b876e01b1054b37592f",
                           "b06b221a0528284d70a0672581328b9bbdd25beb"),
         "none.ref.test": ("b2c8c8b74300e7905cfea57ff506b9caec5b9cab",
                           "5448be491ebf89e7d7f9faa34fea00357c13fc82")}


def reference_catalog(fqrn: str, hex_digest: str) -> bytes:
    path = REFERENCE_DIR / fqrn / "public" / "data" / hex_digest[:2] / (hex_digest[2:] + "C")
    return zlib.decompress(path.read_bytes())


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def test_schema_root_and_nested_match_cvmfs_server(tmp_path: Path) -> None:
    with served_repository(tmp_path / "repo") as served:
        tx = served.repo.begin()
        tx.add_file("art/sub/file.txt", b"x")
        tx.publish()
        reader = served.reader()
        ours_root = reader.save_catalog(reader.root_catalog_hash, tmp_path / "ours-root.db")
        nested = [h for h in reader.catalog_hashes() if h != reader.root_catalog_hash]
        ours_nested = reader.save_catalog(nested[0], tmp_path / "ours-nested.db")
    root_hash, nested_hash = ROOTS["zlib.ref.test"]
    ref_root = write(tmp_path, "ref-root.db", reference_catalog("zlib.ref.test", root_hash))
    ref_nested = write(tmp_path, "ref-nested.db", reference_catalog("zlib.ref.test", nested_hash))
    assert schema_of(ours_root) == schema_of(ref_root)
    assert schema_of(ours_nested) == schema_of(ref_nested)


def test_properties_match_cvmfs_server(tmp_path: Path) -> None:
    root_hash, nested_hash = ROOTS["zlib.ref.test"]
    ref_root = read_catalog(reference_catalog("zlib.ref.test", root_hash)).properties
    ref_nested = read_catalog(reference_catalog("zlib.ref.test", nested_hash)).properties
    with served_repository(tmp_path) as served:
        tx = served.repo.begin()
        tx.add_file("nested/a.txt", b"a")
        tx.publish()
        arts = served.repo.artifacts()
        root = read_catalog(served.repo.store.read_inflated(served.repo.manifest().root_hash, "C"))
        nested = read_catalog(served.repo.store.read_inflated(arts[0].catalog_hash, "C"))
    assert set(root.properties) == set(ref_root)
    assert root.properties["schema"] == "2.5" and root.properties["schema_revision"] == "7"
    assert root.properties["volatile"] == "1" and root.properties["TTL"] == "60"
    # nested: the same keys except previous_revision, which we omit on purpose (docs/cvmfs-format.md,
    # "Replication and garbage collection": pull fails on a missing previous nested catalog, and gc
    # deletes old ones)
    assert set(nested.properties) == set(ref_nested) - {"previous_revision"}
    assert nested.properties["root_prefix"] == "/nested"


@pytest.mark.parametrize("fqrn", REFERENCE_FQRNS)
def test_rebuilding_the_reference_catalogs_gives_identical_rows_and_statistics(fqrn: str) -> None:
    """Read cvmfs_server's revision-3 catalogs, rebuild them, compare every row and counter."""
    root_hash, nested_hash = ROOTS[fqrn]
    ref_root_db = reference_catalog(fqrn, root_hash)
    ref_nested_db = reference_catalog(fqrn, nested_hash)
    ref_root, ref_nested = read_catalog(ref_root_db), read_catalog(ref_nested_db)
    rebuilt_nested = build_catalog(ref_nested.entries, root_path="/nested",
                                   properties=ref_nested.properties)
    assert rebuilt_nested.counters == ref_nested.counters
    nested_ref = NestedRef("/nested", nested_hash, len(ref_nested_db), rebuilt_nested.counters)
    rebuilt_root = build_catalog(ref_root.entries, root_path="", properties=ref_root.properties,
                                 nested=[nested_ref])
    assert rebuilt_root.counters == ref_root.counters
    assert set(rebuilt_root.counters.self) == set(COUNTER_NAMES)
    for ref_db, ours in ((ref_root_db, rebuilt_root.data), (ref_nested_db, rebuilt_nested.data)):
        assert _rows(ours) == _rows(ref_db)


def _rows(db: bytes) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(":memory:")
    conn.deserialize(db)
    try:
        catalog = sorted(conn.execute("SELECT * FROM catalog").fetchall(), key=repr)
        chunks = sorted(conn.execute("SELECT * FROM chunks").fetchall())
        nested = sorted(conn.execute("SELECT * FROM nested_catalogs").fetchall())
        stats = sorted(conn.execute("SELECT * FROM statistics").fetchall())
        return [catalog, chunks, nested, stats]
    finally:
        conn.close()
