"""Byte-level format pieces: signatures, manifest, whitelist, keys, objects and chunking."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives import hashes

from runtime.cvmfs import keys, manifest, signing, whitelist
from runtime.cvmfs.catalog import md5_pair
from runtime.cvmfs.chunking import Ingester
from runtime.cvmfs.objects import ObjectStore
from tests.conftest import FIXED_NOW, REFERENCE_DIR, REFERENCE_FQRNS

UTC = dt.timezone.utc


@pytest.mark.parametrize("fqrn", REFERENCE_FQRNS)
def test_manifest_body_is_byte_identical_to_cvmfs_server(fqrn: str) -> None:
    """Parsing the real manifest and writing it again gives cvmfs_server's exact text part."""
    blob = (REFERENCE_DIR / fqrn / "public" / ".cvmfspublished").read_bytes()
    k = keys.load(REFERENCE_DIR / fqrn / "keys", fqrn)
    m = manifest.verify(blob, k.certificate, fqrn)
    assert m.revision == 3 and m.ttl == 60 and m.garbage_collectable
    body = m.body()
    assert blob.startswith(body + b"--\n")
    # re-signed with the reference key, the whole file is identical (PKCS#1 v1.5 is deterministic)
    assert m.sign(k.repository_key) == blob


@pytest.mark.parametrize("fqrn", REFERENCE_FQRNS)
def test_whitelist_resigned_with_the_master_key_is_byte_identical(fqrn: str) -> None:
    blob = (REFERENCE_DIR / fqrn / "public" / ".cvmfswhitelist").read_bytes()
    k = keys.load(REFERENCE_DIR / fqrn / "keys", fqrn)
    wl = whitelist.verify(blob, fqrn, k.master_public_key, FIXED_NOW)
    assert whitelist.lists(wl, k.fingerprint)
    again = whitelist.make(fqrn, [k.fingerprint], k.master_key, wl.created, wl.expires - wl.created)
    assert again == blob


def test_whitelist_expiry_has_hour_granularity() -> None:
    """docs/cvmfs-format.md, "Whitelist": valid while (Y,M,D,H) of now is strictly before the expiry's."""
    wl = whitelist.Whitelist(dt.datetime(2026, 1, 1, tzinfo=UTC),
                             dt.datetime(2026, 1, 31, 17, 59, 59, tzinfo=UTC), "a.b", ())
    assert not wl.expired_at(dt.datetime(2026, 1, 31, 16, 59, 59, tzinfo=UTC))
    assert wl.expired_at(dt.datetime(2026, 1, 31, 17, 0, 0, tzinfo=UTC))


def test_whitelist_rejections(tmp_path: Path) -> None:
    keys.create_missing(tmp_path, "a.example.org")
    k = keys.load(tmp_path, "a.example.org")
    now = dt.datetime(2026, 11, 28, 12, tzinfo=UTC)
    blob = whitelist.make("a.example.org", [k.fingerprint], k.master_key, now)
    whitelist.verify(blob, "a.example.org", k.master_public_key, now)
    with pytest.raises(whitelist.WhitelistError, match="not 'b.example.org'"):
        whitelist.verify(blob, "b.example.org", k.master_public_key, now)
    with pytest.raises(whitelist.WhitelistError, match="expired"):
        whitelist.verify(blob, "a.example.org", k.master_public_key, now + dt.timedelta(days=31))
    with pytest.raises(whitelist.WhitelistError, match="hash line"):
        whitelist.verify(blob.replace(b"Na.example", b"Nb.example"), "b.example.org",
                         k.master_public_key, now)
    # a DigestInfo signature (plain PKCS1v15+SHA1) is not what clients accept
    body, hex_ascii, _ = signing.split_signed(blob)
    wrong = k.master_key.sign(hex_ascii, padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(whitelist.WhitelistError, match="signature"):
        whitelist.verify(signing.assemble(body, wrong), "a.example.org", k.master_public_key, now)


def test_manifest_rejections(tmp_path: Path) -> None:
    keys.create_missing(tmp_path, "a.example.org")
    k = keys.load(tmp_path, "a.example.org")
    m = manifest.Manifest("a" * 40, 4096, 60, 7, "a.example.org", "b" * 40, 1_800_000_000)
    blob = m.sign(k.repository_key)
    assert manifest.verify(blob, k.certificate, "a.example.org") == m
    assert not blob.endswith(b"\n"), "no LF after the signature"
    with pytest.raises(manifest.ManifestError, match="signature"):
        manifest.verify(blob[:-1] + bytes([blob[-1] ^ 1]), k.certificate)
    with pytest.raises(manifest.ManifestError, match="not 'b.example.org'"):
        manifest.verify(blob, k.certificate, "b.example.org")
    with pytest.raises(manifest.ManifestError, match="missing D"):
        manifest.parse(blob.replace(b"D60\n", b""))


def test_path_hashes_match_the_documented_examples() -> None:
    """docs/cvmfs-format.md, "File catalogs" examples (cvmfs/crypto/hash.cc: MD5 split into little-endian int64)."""
    assert md5_pair("") == (338333539836370388, 9098107892288553193)
    assert md5_pair("/a") == (-2906336618250618618, -744252105585281751)


def test_keys_are_created_once_and_never_overwritten(tmp_path: Path) -> None:
    created = keys.create_missing(tmp_path, "k.example.org")
    assert sorted(created) == ["crt", "key", "masterkey", "pub"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"k.example.org.masterkey": 0o400, "k.example.org.key": 0o400,
                     "k.example.org.pub": 0o444, "k.example.org.crt": 0o444}
    assert keys.create_missing(tmp_path, "k.example.org") == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert before["k.example.org.pub"].startswith(b"-----BEGIN PUBLIC KEY-----")
    k = keys.load(tmp_path, "k.example.org")
    cn = k.certificate.subject.rfc4514_string()
    assert cn == "CN=k.example.org CernVM-FS Release Managers"
    assert k.certificate.public_key().key_size == 2048


def test_keys_in_pkcs1_form_as_pulumi_tls_writes_them_are_accepted(tmp_path: Path) -> None:
    keys.create_missing(tmp_path, "p.example.org")
    for suffix in ("key", "masterkey"):
        path = keys.key_path(tmp_path, "p.example.org", suffix)
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        path.chmod(0o600)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    k = keys.load(tmp_path, "p.example.org")
    assert k.master_key is not None and k.repository_key is not None


def test_mismatched_key_and_certificate_are_refused(tmp_path: Path) -> None:
    keys.create_missing(tmp_path, "m.example.org")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = keys.key_path(tmp_path, "m.example.org", "key")
    path.chmod(0o600)
    path.write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    with pytest.raises(keys.KeysError, match="does not match"):
        keys.load(tmp_path, "m.example.org")


def test_the_master_key_is_read_when_a_whitelist_is_signed_not_to_publish(tmp_path: Path) -> None:
    """Publishing signs with the repository key only; the master key (~27 ms to parse and
    validate) is loaded and checked against ``.pub`` on first use, and a wrong one is still
    refused before it signs anything."""
    keys.create_missing(tmp_path, "w.example.org")
    path = keys.key_path(tmp_path, "w.example.org", "masterkey")
    path.chmod(0o600)
    path.write_bytes(b"not a key")
    k = keys.load(tmp_path, "w.example.org")
    assert k.repository_key is not None  # enough to sign a manifest
    with pytest.raises(keys.KeysError, match="not an unencrypted PEM private key"):
        _ = k.master_key
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    with pytest.raises(keys.KeysError, match=r"masterkey does not match .*w\.example\.org\.pub"):
        _ = keys.load(tmp_path, "w.example.org").master_key
    path.unlink()
    assert keys.load(tmp_path, "w.example.org").master_key is None  # kept offline


def test_objects_are_idempotent_and_repair_a_truncated_copy(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    store.create_skeleton()
    obj = store.put(b"payload")
    path = store.path(obj.hex)
    inode = path.stat().st_ino
    os.utime(path, (1, 1))
    assert store.put(b"payload") == obj
    assert path.stat().st_ino == inode, "an existing object is not rewritten"
    assert path.stat().st_mtime > 1, "reuse refreshes the mtime (gc keeps it)"
    path.write_bytes(b"pay")  # what a writer killed mid-write leaves under the final name
    short_inode = path.stat().st_ino
    store.put(b"payload")
    assert path.read_bytes() == b"payload"
    assert path.stat().st_ino != short_inode, "a short copy is replaced by a rename, not patched"
    assert list(store.txn.iterdir()) == [], "no temp file is left behind"
    assert [(h, s) for h, s, _ in store.iter_objects()] == [(obj.hex, "")]


def test_an_object_given_as_pieces_is_the_same_object(tmp_path: Path, monkeypatch) -> None:
    """Chunks reach the store as the pieces the upload arrived in (no join on the event loop);
    the name and bytes must not depend on the split, and short ``writev`` calls must resume
    exactly where the kernel stopped."""
    store = ObjectStore(tmp_path)
    store.create_skeleton()
    data = bytes(range(256)) * 300
    pieces = [data[:1000], b"", data[1000:1001], data[1001:50000], data[50000:]]
    real_writev = os.writev

    def short_writev(fd, buffers):  # the kernel may write less than asked: at most 777 bytes
        first = next(bytes(b) for b in buffers if len(b))
        return real_writev(fd, [first[:777]])

    monkeypatch.setattr(os, "writev", short_writev)
    obj = store.put(pieces)
    monkeypatch.undo()
    assert obj.hex == hashlib.sha1(data).hexdigest() and obj.stored_size == len(data)
    assert store.read(obj.hex) == data
    assert store.put(data) == obj
    zipped = store.put_content(pieces, "P", compressed=True)
    assert zipped == store.put_content(data, "P", compressed=True)
    assert store.read_inflated(zipped.hex, "P") == data


def chunk_sizes(content) -> list[int]:
    return [c.size for c in content.chunks]


def test_chunking_rule(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    store.create_skeleton()
    ing = Ingester(store, compressed=False, chunk_size=1000, workers=2)
    try:
        assert not ing.ingest(b"x" * 1000).chunked
        assert chunk_sizes(ing.ingest(b"x" * 1001)) == [1000, 1]
        assert chunk_sizes(ing.ingest(b"y" * 3500)) == [1000, 1000, 1000, 500]
        pieces = [os.urandom(n) for n in (1, 999, 1000, 7, 2500)]
        content = ing.ingest(iter(pieces))
        data = b"".join(pieces)
        assert content.size == len(data) and sum(chunk_sizes(content)) == len(data)
        rebuilt = b"".join(store.read(c.digest.hex(), "P") for c in content.chunks)
        assert rebuilt == data
    finally:
        ing.close()


def test_streaming_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    """A 48 MiB stream with 1 MiB chunks stays within a few chunks of Python memory."""
    store = ObjectStore(tmp_path)
    store.create_skeleton()
    ing = Ingester(store, compressed=True, chunk_size=1 << 20, workers=2)
    block = os.urandom(64 * 1024)
    tracemalloc.start()
    try:
        content = ing.ingest(block for _ in range(48 * 16))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        ing.close()
    assert content.size == 48 << 20 and len(content.chunks) == 48
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB"
