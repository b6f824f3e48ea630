"""The test-side reader against repositories made by the real cvmfs_server 2.12.

These prove the reader before it judges our writer: it must accept exactly what real cvmfs
produced (reference fixtures in tests/fixtures/cvmfs-reference, served over loopback HTTP) and must
reject each kind of damage a writer could do. Every test uses a fixed ``now``, because the
fixture whitelists expire on 2026-12-28 17:00 UTC.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.catalog_schema import (
    reference_nested_catalog_path,
    reference_root_catalog_path,
    schema_of,
)
from tests.conftest import FIXED_NOW, REFERENCE_FQRNS, ReferenceRepo
from tests.cvmfs_reader import (
    BadCatalog,
    BadManifest,
    BadObject,
    BadSignature,
    BadWhitelist,
    BadWhitelistSignature,
    CheckFailed,
    ExpiredWhitelist,
    FetchError,
    HashMismatch,
    RepoReader,
    UntrustedCertificate,
    certificate_fingerprint,
    compare_with_directory,
    object_path,
    parse_manifest,
    path_hash,
)

RefFactory = Callable[[str], ReferenceRepo]

# --------------------------------------------------------------------------------------------
# Facts from tests/fixtures/cvmfs-reference/README.md.

ROOT_HASHES = {  # revision 3, 2, 1, 0
    "zlib.ref.test": ["f8b25b33e4e2f127178d7b876e01b1054b37592f",
                      "7f4dbb96628a2992a19fc0cc89b4879a57931273",
                      "f445cfcddc3c7d57feff38c930640a8506153d34",
                      "25d9447cc59743c5fffe726e109c6d6838bf3f45"],
    "none.ref.test": ["b2c8c8b74300e7905cfea57ff506b9caec5b9cab",
                      "13d9771fc89f2d7e9788af2d305544e4dd1c16d3",
                      "1f32b6c8fc48bd75e498757256b574cedf0df03e",
                      "f7a2cdeca1f3c5adbe01fd4afe4c4ec1995acd61"],
}
NESTED_HASH = {"zlib.ref.test": "b06b221a0528284d70a0672581328b9bbdd25beb",
               "none.ref.test": "5448be491ebf89e7d7f9faa34fea00357c13fc82"}
CERT_HASH = {"zlib.ref.test": "fc9e3e98cad1fcae216d32ca4773859f2f995ae9",
             "none.ref.test": "5798e64551af7be1c0de3a1292bfd9a31e3c9d9b"}
FILE_OBJECTS = {  # path -> (zlib.ref.test object, none.ref.test object)
    "/dir/naïve file #1.txt": ("a306c4396620146db6776a5aa27545ac3171d45f",
                               "17ba1b8f114e0b91fe1422a4b9d316f547fefc87"),
    "/empty": ("e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
               "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    "/exec.sh": ("5e04d5b5fac1042ec53c3ce30e9705a06a38d048",
                 "fb7f813b530e06b97dec4a5de173e3ae02e04adf"),
    "/hello.txt": ("882510b2b3d659f767e960b0a40883452a9af910",
                   "56b34e4255a524573859e5e1765239743659d46a"),
    "/nested/.cvmfscatalog": ("e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
                              "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    "/nested/a.txt": ("bd070f5d94ebbcd2cd41d6097f42ab11b66d61ae",
                      "cee5ef7affca0f4ff4c7dc106e82ea6fbfde2bc7"),
    "/nested/b/c.txt": ("b4527b5db88717ad77470310244421c87a27767a",
                        "35bc90a4d2173e401c412285d07c4eb10fefbb67"),
    "/rev2.txt": ("c104c5a8bcda7df668874f1ba90784fcb7b841e8",
                  "fd7280e74a46bb320ba477a945921b9ebcdfdf68"),
}
DEEP_TXT_OBJECT = {"zlib.ref.test": "9c1f4526cdac46e4a90eabb24cbb273fd2a55e0c",
                   "none.ref.test": "9341db5facf5b423eec14dd25fa5e8620d493331"}
BIG_BIN_OFFSETS = [0, 4112, 13535, 18950, 28805, 45189, 57406, 64887, 70596, 86980, 91423,
                   100440, 114345, 122739, 127317, 131819, 136809, 145166, 152747, 157061,
                   173445, 179091, 185876, 190703, 197181, 202224]
BIG_BIN_SHA1 = "f24761f1a7f952e6eefef234bafe5c0a49a3ab11"
REV3_PATHS = {"", "/big.bin", "/dir", "/dir/naïve file #1.txt", "/dir/sub", "/empty",
              "/exec.sh", "/hello.txt", "/link-abs", "/link-rel", "/nested",
              "/nested/.cvmfscatalog", "/nested/a.txt", "/nested/b", "/nested/b/c.txt",
              "/rev2.txt"}
MTIME, MTIME_DAY2 = 1704067200, 1704153600

both = pytest.mark.parametrize("fqrn", REFERENCE_FQRNS)


def write_source_tree(root: Path, revision: int) -> Path:
    """The README's recipe for the source tree of revision 2 or 3, with its modes and mtimes."""
    def w(rel: str, data: bytes, mode: int = 0o644) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)

    w("hello.txt", b"hello cvmfs\n")
    w("empty", b"")
    w("exec.sh", b'#!/bin/sh\necho "hello from exec.sh"\n', 0o755)
    if revision == 2:
        w("dir/sub/deep.txt", b"deep file in dir/sub\n")
    (root / "dir" / "sub").mkdir(parents=True, exist_ok=True)
    w("dir/na\u00efve file #1.txt", "na\u00efve file with spaces and unicode\n".encode())
    out, i = bytearray(), 0
    while len(out) < 204800:
        out += hashlib.sha256(b"cvmfs-reference big.bin block %d" % i).digest()
        i += 1
    w("big.bin", bytes(out[:204800]))
    w("nested/.cvmfscatalog", b"")
    w("nested/a.txt", b"nested a\n")
    w("nested/b/c.txt", b"nested b/c\n")
    os.symlink("hello.txt", root / "link-rel")
    os.symlink("/cvmfs/x/y", root / "link-abs")
    if revision == 3:
        w("rev2.txt", b"added in revision 2\n")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            (Path(dirpath) / name).chmod(0o755)
        for name in [*dirnames, *filenames]:
            os.utime(Path(dirpath) / name, (MTIME, MTIME), follow_symlinks=False)
    if revision == 3:
        os.utime(root / "rev2.txt", (MTIME_DAY2, MTIME_DAY2))
        os.utime(root / "dir" / "sub", (MTIME_DAY2, MTIME_DAY2))
    return root


# --------------------------------------------------------------------------------------------
# Re-signing helpers for the tampering tests (they use the fixtures' throwaway test keys).


@functools.cache
def _private_key(pem: bytes) -> rsa.RSAPrivateKey:
    """Cached: validating an RSA private key costs ~35 ms, and many tests re-sign."""
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def raw_type1_sign(private_pem: bytes, payload: bytes) -> bytes:
    """``RSA_private_encrypt`` with PKCS#1 type-1 padding and no DigestInfo (whitelist style)."""
    numbers = _private_key(private_pem).private_numbers()
    n = numbers.public_numbers.n
    k = (n.bit_length() + 7) // 8
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(payload)) + b"\x00" + payload
    return pow(int.from_bytes(em, "big"), numbers.d, n).to_bytes(k, "big")


def whitelist_lines(repo: ReferenceRepo) -> list[str]:
    raw = (repo.public_dir / ".cvmfswhitelist").read_bytes()
    return raw.split(b"\n--\n", 1)[0].decode().split("\n")


def write_whitelist(repo: ReferenceRepo, lines: list[str], *, digestinfo: bool = False) -> None:
    """Sign ``lines`` with the master key: raw (correct) or with a DigestInfo (wrong)."""
    body = ("\n".join(lines) + "\n").encode()
    hex_line = hashlib.sha1(body).hexdigest().encode()
    if digestinfo:
        sig = _private_key(repo.masterkey_pem).sign(hex_line, padding.PKCS1v15(), hashes.SHA1())
    else:
        sig = raw_type1_sign(repo.masterkey_pem, hex_line)
    (repo.public_dir / ".cvmfswhitelist").write_bytes(body + b"--\n" + hex_line + b"\n" + sig)


def manifest_fields(repo: ReferenceRepo) -> dict[str, str]:
    raw = (repo.public_dir / ".cvmfspublished").read_bytes()
    return {line[0]: line[1:] for line in raw.split(b"\n--\n", 1)[0].decode().split("\n")}


def write_manifest(repo: ReferenceRepo, fields: dict[str, str], *, trailing: bytes = b"") -> None:
    """Sign a manifest with the certificate key: PKCS#1 v1.5 + SHA-1 over the ASCII hex."""
    body = "".join(f"{k}{v}\n" for k, v in fields.items()).encode()
    hex_line = hashlib.sha1(body).hexdigest().encode()
    sig = _private_key(repo.cert_key_pem).sign(hex_line, padding.PKCS1v15(), hashes.SHA1())
    (repo.public_dir / ".cvmfspublished").write_bytes(body + b"--\n" + hex_line + b"\n" + sig
                                                      + trailing)


def object_file(repo: ReferenceRepo, hash_text: str, suffix: str = "") -> Path:
    return repo.public_dir / object_path(hash_text, suffix)


def rewrite_catalog(repo: ReferenceRepo, catalog_hash: str,
                    statements: list[tuple[str, tuple[object, ...]]], tmp: Path) -> tuple[str, int]:
    """Edit a served catalog with SQL; store it under its new name; return (hash, size)."""
    db_path = tmp / f"edit-{catalog_hash}.sqlite"
    db_path.write_bytes(zlib.decompress(object_file(repo, catalog_hash, "C").read_bytes()))
    conn = sqlite3.connect(db_path)
    for sql, params in statements:
        conn.execute(sql, params)
    conn.commit()
    conn.close()
    db = db_path.read_bytes()
    data = zlib.compress(db, 6)
    new_hash = hashlib.sha1(data).hexdigest()
    dest = object_file(repo, new_hash, "C")
    dest.parent.mkdir(exist_ok=True)
    dest.write_bytes(data)
    return new_hash, len(db)


def republish(repo: ReferenceRepo, tmp: Path,
              root_sql: Sequence[tuple[str, tuple[object, ...]]] = (),
              nested_sql: Sequence[tuple[str, tuple[object, ...]]] = (), **manifest: str) -> None:
    """Apply SQL to the nested and/or root catalog, relink, and re-sign a manifest pointing to
    the new root. The reflog (which would not list the new root) is withdrawn with ``Y``."""
    fields = manifest_fields(repo)
    root_sql = list(root_sql)
    if nested_sql:
        nested_hash, nested_size = rewrite_catalog(repo, NESTED_HASH[repo.fqrn],
                                                   list(nested_sql), tmp)
        root_sql.append(("UPDATE nested_catalogs SET sha1 = ?, size = ? WHERE path = '/nested'",
                         (nested_hash, nested_size)))
    fields["C"], size = rewrite_catalog(repo, fields["C"], root_sql, tmp)
    fields["B"] = str(size)
    fields.pop("Y")
    (repo.public_dir / ".cvmfsreflog").unlink()
    fields.update(manifest)
    write_manifest(repo, fields)


# --------------------------------------------------------------------------------------------
# Whitelist.


@both
def test_whitelist_verifies_at_fixed_now(reference_repo: RefFactory, fqrn: str) -> None:
    with reference_repo(fqrn).reader() as reader:
        wl = reader.whitelist
        assert wl.fqrn == fqrn
        assert wl.expires == datetime(2026, 12, 28, 17, tzinfo=UTC)
        fp = certificate_fingerprint(reader.certificate)
        assert fp == whitelist_lines(reference_repo(fqrn))[3]
        assert fp.replace(":", "").lower() in wl.fingerprints


@both
@pytest.mark.parametrize("now, expired", [
    (datetime(2026, 12, 28, 16, 59, 59, tzinfo=UTC), False),
    (datetime(2026, 12, 28, 17, 0, 0, tzinfo=UTC), True),  # hour granularity: E..1716..
    (datetime(2026, 12, 28, 18, 0, 0, tzinfo=UTC), True),
    (datetime(2026, 12, 28, 16, 59, 59), False),  # naive = UTC
])
def test_whitelist_expiry_has_hour_granularity(reference_repo: RefFactory, fqrn: str,
                                               now: datetime, expired: bool) -> None:
    repo = reference_repo(fqrn)
    if expired:
        with pytest.raises(ExpiredWhitelist, match="expired"):
            repo.reader(now=now)
    else:
        repo.reader(now=now).close()


@both
def test_resigned_whitelist_verifies(reference_copy: RefFactory, fqrn: str) -> None:
    """Control for the tampering tests below: our raw type-1 re-signing is itself accepted."""
    repo = reference_copy(fqrn)
    lines = whitelist_lines(repo)
    lines[0], lines[1] = "20261201000000", "E20270101000000"
    write_whitelist(repo, lines)
    with repo.reader(now=datetime(2026, 12, 31, 23, tzinfo=UTC)) as reader:
        assert reader.whitelist.expires == datetime(2027, 1, 1, 0, tzinfo=UTC)


@both
def test_whitelist_signed_with_digestinfo_is_rejected(reference_copy: RefFactory,
                                                      fqrn: str) -> None:
    repo = reference_copy(fqrn)
    write_whitelist(repo, whitelist_lines(repo), digestinfo=True)
    with pytest.raises(BadWhitelistSignature, match="DigestInfo") as exc:
        repo.reader()
    assert isinstance(exc.value, BadSignature) and isinstance(exc.value, BadWhitelist)


@both
def test_whitelist_for_another_fqrn_is_rejected(reference_copy: RefFactory, fqrn: str) -> None:
    repo = reference_copy(fqrn)
    lines = whitelist_lines(repo)
    lines[2] = "Nother.ref.test"
    write_whitelist(repo, lines)
    with pytest.raises(BadWhitelist, match="name mismatch"):
        repo.reader()


@both
def test_whitelist_body_edit_breaks_hash_line(reference_copy: RefFactory, fqrn: str) -> None:
    repo = reference_copy(fqrn)
    path = repo.public_dir / ".cvmfswhitelist"
    path.write_bytes(path.read_bytes().replace(b"\nE2026122817", b"\nE2027122817", 1))
    with pytest.raises(BadWhitelistSignature, match="hash line"):
        repo.reader()


@both
def test_whitelist_malformed_lines_are_rejected(reference_copy: RefFactory, fqrn: str) -> None:
    repo = reference_copy(fqrn)
    lines = whitelist_lines(repo)
    write_whitelist(repo, [lines[0][:-1], *lines[1:]])  # 13-char creation time
    with pytest.raises(BadWhitelist, match="must be 14"):
        repo.reader()
    write_whitelist(repo, [lines[0], lines[1] + "0", *lines[2:]])  # 16-char expiry line
    with pytest.raises(BadWhitelist, match="'E' \\+ 14"):
        repo.reader()


def test_whitelist_with_untrusted_master_key_is_rejected(reference_repo: RefFactory) -> None:
    repo, other = reference_repo("zlib.ref.test"), reference_repo("none.ref.test")
    with pytest.raises(BadWhitelistSignature, match="any trusted key"):
        RepoReader(repo.base_url, repo.fqrn, other.pub_pem, now=FIXED_NOW)
    # Any one trusted key suffices, as with the client's list of .pub files.
    RepoReader(repo.base_url, repo.fqrn, [other.pub_pem, repo.pub_pem], now=FIXED_NOW).close()


@both
def test_certificate_not_in_whitelist_is_rejected(reference_copy: RefFactory, fqrn: str) -> None:
    repo = reference_copy(fqrn)
    lines = whitelist_lines(repo)
    lines[3] = ":".join(["AB"] * 20)
    write_whitelist(repo, lines)
    with pytest.raises(UntrustedCertificate, match="not listed"):
        repo.reader()


# --------------------------------------------------------------------------------------------
# Manifest.


@both
def test_manifest_verifies(reference_repo: RefFactory, fqrn: str) -> None:
    with reference_repo(fqrn).reader() as reader:
        assert reader.revision == 3
        assert reader.root_catalog_hash == ROOT_HASHES[fqrn][0]
        m = reader.manifest
        assert (m["N"], m["X"], m["S"], m["B"], m["D"]) == (fqrn, CERT_HASH[fqrn], "3", "57344",
                                                           "60")


@both
def test_tampered_manifest_byte_is_rejected(reference_copy: RefFactory, fqrn: str) -> None:
    repo = reference_copy(fqrn)
    path = repo.public_dir / ".cvmfspublished"
    path.write_bytes(path.read_bytes().replace(b"\nD60\n", b"\nD61\n", 1))
    with pytest.raises(BadSignature, match="hash line"):
        repo.reader()


@both
def test_manifest_with_recomputed_hash_but_old_signature_is_rejected(
        reference_copy: RefFactory, fqrn: str) -> None:
    repo = reference_copy(fqrn)
    raw = (repo.public_dir / ".cvmfspublished").read_bytes()
    body, rest = raw.split(b"\n--\n", 1)
    body = body.replace(b"\nD60", b"\nD61") + b"\n"
    sig = rest.split(b"\n", 1)[1]
    (repo.public_dir / ".cvmfspublished").write_bytes(
        body + b"--\n" + hashlib.sha1(body).hexdigest().encode() + b"\n" + sig)
    with pytest.raises(BadSignature, match="does not verify"):
        repo.reader()


@both
def test_tampered_manifest_signature_is_rejected(reference_copy: RefFactory, fqrn: str) -> None:
    repo = reference_copy(fqrn)
    path = repo.public_dir / ".cvmfspublished"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(BadSignature, match="does not verify"):
        repo.reader()


@both
def test_manifest_trailing_lf_after_signature_is_rejected(reference_copy: RefFactory,
                                                          fqrn: str) -> None:
    repo = reference_copy(fqrn)
    path = repo.public_dir / ".cvmfspublished"
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(BadSignature, match="257 bytes, expected exactly 256"):
        repo.reader()


@both
def test_resigned_manifest_verifies(reference_copy: RefFactory, fqrn: str) -> None:
    """Control for the tampering tests: our manifest re-signing is itself accepted."""
    repo = reference_copy(fqrn)
    write_manifest(repo, manifest_fields(repo))
    with repo.reader() as reader:
        assert reader.revision == 3


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.pop("D"), "missing required key"),
    (lambda f: f.update(N="other.ref.test"), "name mismatch"),
    (lambda f: f.update(R="0" * 32), "root mismatch"),
    (lambda f: f.update(C=f["C"].upper()), "not a lowercase hex"),
])
def test_manifest_field_rules(reference_repo: RefFactory, edit: Callable[[dict[str, str]], object],
                              message: str) -> None:
    fields = manifest_fields(reference_repo("zlib.ref.test"))
    edit(fields)
    body = "".join(f"{k}{v}\n" for k, v in fields.items()).encode()
    raw = body + b"--\n" + hashlib.sha1(body).hexdigest().encode() + b"\n" + b"\0" * 256
    with pytest.raises(BadManifest, match=message):
        parse_manifest(raw, "zlib.ref.test")


# --------------------------------------------------------------------------------------------
# Tree, content, check.


@both
def test_check_passes(reference_repo: RefFactory, fqrn: str) -> None:
    with reference_repo(fqrn).reader() as reader:
        reader.check()
        assert reader.catalog_hashes() == [ROOT_HASHES[fqrn][0], NESTED_HASH[fqrn]]


@both
def test_walk_matches_revision3_source(reference_repo: RefFactory, fqrn: str,
                                       tmp_path: Path) -> None:
    source = write_source_tree(tmp_path / "src", 3)
    with reference_repo(fqrn).reader() as reader:
        entries = reader.walk()
        assert set(entries) == REV3_PATHS
        assert compare_with_directory(reader, source, mtimes=True, modes=True) == []
        assert entries["/link-rel"].symlink == "hello.txt"
        assert entries["/link-abs"].symlink == "/cvmfs/x/y"
        assert entries["/dir/sub"].mtime == MTIME_DAY2
        assert entries["/nested"].nested_catalog == NESTED_HASH[fqrn]
        assert entries["/nested/a.txt"].catalog == "/nested"
        column = REFERENCE_FQRNS.index(fqrn)
        for path, objects in FILE_OBJECTS.items():
            assert entries[path].hash == objects[column], path
            assert entries[path].compression == ("zlib", "none")[column]


@both
def test_compare_reports_differences(reference_repo: RefFactory, fqrn: str,
                                     tmp_path: Path) -> None:
    """compare_with_directory can fail: each kind of difference is reported."""
    source = write_source_tree(tmp_path / "src", 3)
    (source / "hello.txt").write_bytes(b"hello CVMFS\n")  # same size, other bytes
    os.utime(source / "hello.txt", (MTIME, MTIME))
    (source / "exec.sh").chmod(0o644)
    (source / "link-rel").unlink()
    (source / "link-rel").symlink_to("empty")
    (source / "extra").write_bytes(b"")
    (source / "rev2.txt").unlink()
    os.utime(source / "empty", (1, 1))
    with reference_repo(fqrn).reader() as reader:
        diffs = compare_with_directory(reader, source, mtimes=True)
    assert diffs == [
        "only in source: extra",
        "only in repository: rev2.txt",
        "mtime differs for empty: source 1, repository 1704067200",
        "exec bit differs for exec.sh: source 0o644, repository 0o755",
        "content differs for hello.txt",
        "symlink target differs for link-rel: source 'empty', repository 'hello.txt'",
    ]


@both
def test_big_bin_reassembled_from_26_chunks(reference_repo: RefFactory, fqrn: str) -> None:
    with reference_repo(fqrn).reader() as reader:
        big = reader.entry("big.bin")
        assert big.chunked and big.hash is None and big.size == 204800
        assert [c.offset for c in big.chunks] == BIG_BIN_OFFSETS
        assert hashlib.sha1(reader.read_file("/big.bin")).hexdigest() == BIG_BIN_SHA1
        streamed = hashlib.sha1()
        for block in reader.iter_file("/big.bin"):
            streamed.update(block)
        assert streamed.hexdigest() == BIG_BIN_SHA1


@both
def test_revision2_via_previous_revision(reference_repo: RefFactory, fqrn: str,
                                         tmp_path: Path) -> None:
    with reference_repo(fqrn).reader() as reader:
        assert reader.previous_root() == ROOT_HASHES[fqrn][1]
        rev2 = reader.previous()
        assert rev2 is not None and rev2.revision == 2
        entries = rev2.walk()
        assert "/dir/sub/deep.txt" in entries and "/rev2.txt" not in entries
        assert rev2.read_file("dir/sub/deep.txt") == b"deep file in dir/sub\n"
        assert entries["/dir/sub/deep.txt"].hash == DEEP_TXT_OBJECT[fqrn]
        source = write_source_tree(tmp_path / "src2", 2)
        assert compare_with_directory(rev2, source, mtimes=True, modes=True) == []
        rev2.check()
        assert reader.revision == 3 and "/rev2.txt" in reader.walk()  # the view is separate


@both
def test_revision_chain_follows_previous_revision(reference_repo: RefFactory, fqrn: str) -> None:
    with reference_repo(fqrn).reader() as reader:
        chain = reader.revision_chain()
        assert chain == ROOT_HASHES[fqrn]
        assert [reader.at_root(h).revision for h in chain] == [3, 2, 1, 0]
        assert set(reader.at_root(chain[2]).walk()) == {"", "/new_repository"}
        assert reader.at_root(chain[3]).previous_root() is None


@both
def test_referenced_objects_are_exactly_the_live_ones(reference_repo: RefFactory,
                                                      fqrn: str) -> None:
    """45 objects on disk; 38 referenced by revision 3; the other 7 are README's old ones."""
    repo = reference_repo(fqrn)
    on_disk = {p.relative_to(repo.public_dir).as_posix()
               for p in (repo.public_dir / "data").glob("*/*")}
    with repo.reader() as reader:
        live = reader.referenced_objects()
        assert len(on_disk) == 45 and len(live) == 38
        assert live <= on_disk
        old_roots = {object_path(h, "C") for h in ROOT_HASHES[fqrn][1:]}
        old_histories = {p for p in on_disk if p.endswith("H")} - live
        new_repository = reader.at_root(ROOT_HASHES[fqrn][2]).entry("/new_repository").hash
        assert new_repository is not None
        assert on_disk - live == old_roots | old_histories | {
            object_path(DEEP_TXT_OBJECT[fqrn]), object_path(new_repository)}
        assert len(old_histories) == 2
        tags = {t["name"]: t["hash"] for t in reader.history_tags()}
        assert tags == {"trunk": ROOT_HASHES[fqrn][0], "trunk-previous": ROOT_HASHES[fqrn][1]}


def test_path_hash_examples_from_format_md() -> None:
    assert path_hash("") == (338333539836370388, 9098107892288553193)
    assert path_hash("/a") == (-2906336618250618618, -744252105585281751)


# --------------------------------------------------------------------------------------------
# Damaged objects.


@both
@pytest.mark.parametrize("target", ["file", "chunk", "nested catalog", "root catalog"])
def test_altered_object_is_a_hash_mismatch(reference_copy: RefFactory, fqrn: str,
                                           target: str) -> None:
    repo = reference_copy(fqrn)
    column = REFERENCE_FQRNS.index(fqrn)
    obj = {
        "file": object_file(repo, FILE_OBJECTS["/hello.txt"][column]),
        "chunk": next((repo.public_dir / "data").glob("*/*P")),
        "nested catalog": object_file(repo, NESTED_HASH[fqrn], "C"),
        "root catalog": object_file(repo, ROOT_HASHES[fqrn][0], "C"),
    }[target]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    with repo.reader() as reader, pytest.raises(HashMismatch, match="served bytes hash to"):
        reader.walk()
        for path, e in reader.walk().items():
            if e.type == "file":
                reader.read_file(path)


@both
def test_altered_certificate_is_a_hash_mismatch(reference_copy: RefFactory, fqrn: str) -> None:
    repo = reference_copy(fqrn)
    obj = object_file(repo, CERT_HASH[fqrn], "X")
    obj.write_bytes(obj.read_bytes()[:-1])
    with pytest.raises(HashMismatch):
        repo.reader()


@both
def test_missing_object_fails_read_and_check(reference_copy: RefFactory, fqrn: str) -> None:
    repo = reference_copy(fqrn)
    column = REFERENCE_FQRNS.index(fqrn)
    object_file(repo, FILE_OBJECTS["/nested/a.txt"][column]).unlink()
    with repo.reader() as reader:
        with pytest.raises(FetchError, match="404"):
            reader.read_file("/nested/a.txt")
        with pytest.raises(CheckFailed, match="answered 404"):
            reader.check()


# --------------------------------------------------------------------------------------------
# Damaged catalogs (edited with SQL, relinked and re-signed so only the damage differs).


@both
def test_republish_without_changes_still_passes_check(reference_copy: RefFactory, fqrn: str,
                                                      tmp_path: Path) -> None:
    """Control for the catalog tests: the edit-and-resign pipeline alone breaks nothing."""
    repo = reference_copy(fqrn)
    republish(repo, tmp_path, [("UPDATE catalog SET mtime = 1 WHERE name = 'hello.txt'", ())],
              [("UPDATE catalog SET mtime = 1 WHERE name = 'a.txt'", ())])
    with repo.reader() as reader:
        assert reader.root_catalog_hash != ROOT_HASHES[fqrn][0]
        assert reader.catalog_hashes()[1] != NESTED_HASH[fqrn]
        assert reader.entry("/nested/a.txt").mtime == reader.entry("/hello.txt").mtime == 1
        reader.check()


@both
def test_catalog_recompression_is_byte_identical(reference_copy: RefFactory, fqrn: str,
                                                 tmp_path: Path) -> None:
    """README: every zlib object equals Python's zlib.compress(data, 6), so an edit-free
    rewrite lands on the very same object name."""
    repo = reference_copy(fqrn)
    assert rewrite_catalog(repo, ROOT_HASHES[fqrn][0], [], tmp_path) == (ROOT_HASHES[fqrn][0],
                                                                         57344)


@both
def test_catalog_missing_a_statistics_row_is_rejected(reference_copy: RefFactory, fqrn: str,
                                                      tmp_path: Path) -> None:
    repo = reference_copy(fqrn)
    republish(repo, tmp_path, [("DELETE FROM statistics WHERE counter = 'self_xattr'", ())])
    with repo.reader() as reader, pytest.raises(BadCatalog, match="self_xattr"):
        reader.walk()


STRUCTURAL_DAMAGE = {  # root catalog SQL -> BadCatalog message
    "schema 2.4": ("UPDATE properties SET value = '2.4' WHERE key = 'schema'", "schema"),
    "no schema_revision": ("DELETE FROM properties WHERE key = 'schema_revision'",
                           "schema_revision"),
    "no bind_mountpoints": ("DROP TABLE bind_mountpoints", "bind_mountpoints"),
    "wrong md5path": ("UPDATE catalog SET md5path_1 = md5path_1 + 1 WHERE name = 'hello.txt'",
                      "md5path .* != MD5 split"),
    "wrong parent": ("UPDATE catalog SET parent_2 = 0 WHERE name = 'sub'", "unreachable"),
    "mountpoint without flag 2": ("UPDATE catalog SET flags = 1 WHERE name = 'nested'",
                                  "flag 2"),
    "NULL name": ("UPDATE catalog SET name = NULL WHERE name = 'empty'", "never NULL"),
    "short hash blob": ("UPDATE catalog SET hash = x'0102' WHERE name = 'hello.txt'",
                        "2 bytes, must be 20"),
    "nested row without catalog": ("DELETE FROM nested_catalogs", "no nested_catalogs row"),
}


@pytest.mark.parametrize("case", list(STRUCTURAL_DAMAGE))
def test_structural_catalog_damage_is_bad_catalog(reference_copy: RefFactory, tmp_path: Path,
                                                  case: str) -> None:
    sql, message = STRUCTURAL_DAMAGE[case]
    repo = reference_copy("zlib.ref.test")
    republish(repo, tmp_path, [(sql, ())])
    with repo.reader() as reader, pytest.raises(BadCatalog, match=message):
        reader.walk()


CHECK_DAMAGE = {  # (root SQL, nested SQL, extra manifest fields) -> CheckFailed message
    "self counter off": (["UPDATE statistics SET value = value + 1 "
                          "WHERE counter = 'self_regular'"], [], {}, "self_regular"),
    "subtree counter off": (["UPDATE statistics SET value = 0 "
                             "WHERE counter = 'subtree_file_size'"], [], {}, "subtree_file_size"),
    "directory linkcount": (["UPDATE catalog SET hardlinks = 5 WHERE name = 'dir'"], [], {},
                            "linkcount 5 != 2 \\+ 1"),
    "symlink size": (["UPDATE catalog SET size = 11 WHERE name = 'link-rel'"], [], {},
                     "symlink size 11 != target length 9"),
    "hash on a directory": (["UPDATE catalog SET hash = zeroblob(20) WHERE name = 'dir'"], [],
                            {}, "must have a NULL hash"),
    "file without hash": (["UPDATE catalog SET hash = NULL WHERE name = 'hello.txt'"], [], {},
                          "NULL hash"),
    "chunk gap": (["DELETE FROM chunks WHERE offset = 4112"], [], {},
                  "expected 4112 \\(chunks must be contiguous"),
    "flags disagree with mode": (["UPDATE catalog SET flags = 12 WHERE name = 'hello.txt'"], [],
                                 {}, "disagree with mode"),
    "revision != S": (["UPDATE properties SET value = '4' WHERE key = 'revision'"], [], {},
                      "revision property is '4', manifest S is 3"),
    "nested size": (["UPDATE nested_catalogs SET size = 4096"], [], {},
                    "nested_catalogs size 4096 != inflated size 57344"),
    "manifest B": ([], [], {"B": "4096"}, "manifest B=4096"),
    "mountpoint metadata": ([], ["UPDATE catalog SET mtime = 1 WHERE name = 'nested'"], {},
                            "differs from the nested root"),
    "no marker": ([], ["DELETE FROM catalog WHERE name = '.cvmfscatalog'",
                       "UPDATE statistics SET value = value - 1 WHERE counter = 'self_regular'"],
                  {}, "without marker"),
}


@pytest.mark.parametrize("case", list(CHECK_DAMAGE))
def test_check_detects_damage(reference_copy: RefFactory, tmp_path: Path, case: str) -> None:
    root_sql, nested_sql, manifest, message = CHECK_DAMAGE[case]
    repo = reference_copy("zlib.ref.test")
    republish(repo, tmp_path, [(s, ()) for s in root_sql], [(s, ()) for s in nested_sql],
              **manifest)
    with repo.reader() as reader:
        reader.walk()  # readable by a client; only check() objects
        with pytest.raises(CheckFailed, match=message):
            reader.check()


def test_file_size_mismatch_fails_read(reference_copy: RefFactory, tmp_path: Path) -> None:
    repo = reference_copy("zlib.ref.test")
    republish(repo, tmp_path, [("UPDATE catalog SET size = 13 WHERE name = 'hello.txt'", ())])
    with repo.reader() as reader, pytest.raises(BadObject, match="holds 12 bytes"):
        reader.read_file("hello.txt")


# --------------------------------------------------------------------------------------------
# Catalog schema.

CATALOG_COLUMNS = [
    ("md5path_1", "INTEGER"), ("md5path_2", "INTEGER"), ("parent_1", "INTEGER"),
    ("parent_2", "INTEGER"), ("hardlinks", "INTEGER"), ("hash", "BLOB"), ("size", "INTEGER"),
    ("mode", "INTEGER"), ("mtime", "INTEGER"), ("mtimens", "INTEGER"), ("flags", "INTEGER"),
    ("name", "TEXT"), ("symlink", "TEXT"), ("uid", "INTEGER"), ("gid", "INTEGER"),
    ("xattr", "BLOB")]
REF_COLUMNS = [("path", "TEXT"), ("sha1", "TEXT"), ("size", "INTEGER")]
EXPECTED_SCHEMA = {
    "tables": {
        "properties": [("key", "TEXT"), ("value", "TEXT")],
        "catalog": CATALOG_COLUMNS,
        "chunks": [("md5path_1", "INTEGER"), ("md5path_2", "INTEGER"), ("offset", "INTEGER"),
                   ("size", "INTEGER"), ("hash", "BLOB")],
        "nested_catalogs": REF_COLUMNS,
        "bind_mountpoints": REF_COLUMNS,
        "statistics": [("counter", "TEXT"), ("value", "INTEGER")],
    },
    "primary_keys": {
        "properties": ["key"], "catalog": ["md5path_1", "md5path_2"],
        "chunks": ["md5path_1", "md5path_2", "offset", "size"], "nested_catalogs": ["path"],
        "bind_mountpoints": ["path"], "statistics": ["counter"],
    },
    "foreign_keys": {
        "properties": [], "catalog": [], "nested_catalogs": [], "bind_mountpoints": [],
        "statistics": [],
        "chunks": [(("md5path_1", "md5path_2"), "catalog", ("md5path_1", "md5path_2"))],
    },
    "indexes": {"idx_catalog_parent": ("catalog", ["parent_1", "parent_2"])},
}


@both
@pytest.mark.parametrize("which", ["root", "nested"])
def test_reference_catalog_schema(fqrn: str, which: str) -> None:
    path = (reference_root_catalog_path(fqrn) if which == "root"
            else reference_nested_catalog_path(fqrn))
    schema = schema_of(path)
    assert schema == EXPECTED_SCHEMA
    assert list(schema["tables"]) == ["properties", "catalog", "chunks", "nested_catalogs",
                                      "bind_mountpoints", "statistics"]


def test_schema_of_sees_column_order(tmp_path: Path) -> None:
    """schema_of can fail: swapped columns or a missing index are visible."""
    db = tmp_path / "x.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE properties (value TEXT, key TEXT, PRIMARY KEY (key))")
    conn.close()
    schema = schema_of(db)
    assert schema["tables"] == {"properties": [("value", "TEXT"), ("key", "TEXT")]}
    assert schema["primary_keys"] == {"properties": ["key"]}
    assert schema["indexes"] == {}
