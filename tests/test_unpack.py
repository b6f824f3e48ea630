"""Unpacking archives into a transaction: formats, member kinds, unsafe names, images."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile

import pytest
import zstandard

from runtime.repository import InvalidPath, Repository
from runtime.server.unpack import ArchiveError, ArtifactTooLarge, stage_archive
from runtime.settings import RepositoryConfig
from tests.uploadkit import leftovers, make_tar

FQRN = "unpack.example.org"


@pytest.fixture
def repo(tmp_path):
    r = Repository(tmp_path / "data", tmp_path / "keys",
                   RepositoryConfig(fqrn=FQRN, compression="zlib", chunk_size=65536))
    r.init()
    yield r
    r.close()


def publish(repo: Repository, name: str, data: bytes, **kw):  # type: ignore[no-untyped-def]
    tx = repo.begin()
    try:
        stats = stage_archive(tx, name, io.BytesIO(data), **kw)
    except BaseException:
        tx.abort()
        raise
    tx.publish()
    return stats


def files_of(repo: Repository, name: str) -> dict[str, object]:
    """path -> bytes (files) or ('->', target) (symlinks) or 'dir'."""
    from runtime.server.uploads import _content

    out: dict[str, object] = {}
    for path, e in repo.artifact_tree(name).items():
        rel = path[len(name) + 2:]
        if e.is_dir:
            out[rel] = "dir"
        elif e.is_symlink:
            out[rel] = ("->", e.symlink)
        else:
            out[rel] = b"".join(_content(repo, e))
    return out


BASIC = [("./", "dir", None), ("./a.txt", "file", b"alpha\n"), ("./d", "dir", None),
         ("./d/big.bin", "file", bytes(range(256)) * 1000), ("./link", "symlink", "a.txt"),
         ("./hard", "hardlink", "./a.txt"), ("./fifo", "fifo", None)]
EXPECTED = {"": "dir", "a.txt": b"alpha\n", "d": "dir", "d/big.bin": bytes(range(256)) * 1000,
            "link": ("->", "a.txt"), "hard": b"alpha\n"}


@pytest.mark.parametrize("compress", ["plain", "gzip", "zstd"])
def test_tar_formats_are_detected_from_bytes(repo, compress):
    data = make_tar(BASIC)
    data = {"plain": data, "gzip": gzip.compress(data),
            "zstd": zstandard.ZstdCompressor().compress(data)}[compress]
    stats = publish(repo, "art", data)
    assert files_of(repo, "art") == EXPECTED
    assert (stats.files, stats.hardlinks, stats.symlinks, stats.skipped) == (2, 1, 1, 1)
    # the 256000-byte file is chunked (chunk size 64 KiB) and reassembles exactly
    assert len(repo.artifact_tree("art")["/art/d/big.bin"].chunks) == 4


def test_multi_frame_zstd_stream(repo):
    data = make_tar(BASIC)
    c = zstandard.ZstdCompressor()
    half = len(data) // 2
    publish(repo, "art", c.compress(data[:half]) + c.compress(data[half:]))
    assert files_of(repo, "art") == EXPECTED


@pytest.mark.parametrize("bad, message", [
    ("../evil", "escapes the archive root"),
    ("ok/../../evil", "escapes the archive root"),
    ("ok/..", "escapes the archive root"),
    ("/etc/passwd", "absolute path"),
    ("/evil", "absolute path"),  # no directory part: still refused, not taken as 'evil'
])
def test_members_escaping_the_root_are_refused(repo, bad, message):
    before = repo.manifest_bytes()
    with pytest.raises(ArchiveError, match=message):
        publish(repo, "art", make_tar([("fine.txt", "file", b"x"), (bad, "file", b"x")]))
    assert repo.manifest_bytes() == before and repo.artifacts() == []
    assert leftovers(repo) == []


@pytest.mark.parametrize("bad, message", [
    ("d/bad\x01name", "control characters"),
    ("d/.cvmfscatalog", "reserved"),
    ("d/" + "x" * 256, "longer than 255 bytes"),
    ("d\x7f/f", "control characters"),
])
def test_invalid_member_names_are_refused(repo, bad, message):
    """Each directory of an archive is validated once and each name in it once; either way a
    name the catalog cannot hold fails the upload and publishes nothing."""
    before = repo.manifest_bytes()
    with pytest.raises(InvalidPath, match=message):
        publish(repo, "art", make_tar([("d/fine.txt", "file", b"x"), (bad, "file", b"x")]))
    assert repo.manifest_bytes() == before and repo.artifacts() == []


def test_member_names_are_normalised(repo):
    publish(repo, "art", make_tar([("./a//b/./c.txt", "file", b"c"), ("a/b/d.txt", "file", b"d"),
                                   ("./a/b/", "dir", None)]))
    assert files_of(repo, "art") == {"": "dir", "a": "dir", "a/b": "dir", "a/b/c.txt": b"c",
                                     "a/b/d.txt": b"d"}


def test_gnu_sparse_member_is_read_with_its_holes(repo, tmp_path):
    """Sparse members are the one kind whose bytes are not read straight from the stream."""
    path = tmp_path / "src" / "sparse.bin"
    path.parent.mkdir()
    with open(path, "wb") as fh:
        fh.write(b"head")
        fh.seek(3 * 1024 * 1024)
        fh.write(b"tail")
    (tmp_path / "src" / "after.txt").write_bytes(b"after\n")
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(archive), "-C",
                    str(tmp_path / "src"), "sparse.bin", "after.txt"], check=True)
    with tarfile.open(archive) as tar:
        assert tar.getmember("sparse.bin").issparse(), "the fixture must really be sparse"
    publish(repo, "art", archive.read_bytes())
    files = files_of(repo, "art")
    assert files["sparse.bin"] == b"head" + bytes(3 * 1024 * 1024 - 4) + b"tail"
    assert files["after.txt"] == b"after\n"


def test_hardlink_to_missing_target_is_refused(repo):
    with pytest.raises(ArchiveError, match="hard link"):
        publish(repo, "art", make_tar([("h", "hardlink", "nowhere")]))


@pytest.mark.parametrize("data", [b"", b"this is not a tar archive at all" * 40,
                                  gzip.compress(b"not a tar inside gzip" * 100)])
def test_malformed_archives_are_refused(repo, data):
    with pytest.raises(ArchiveError):
        publish(repo, "art", data)
    assert repo.artifacts() == []


def test_truncated_archive_is_refused(repo):
    data = make_tar([("a.bin", "file", b"z" * 100000)])
    with pytest.raises(ArchiveError):
        publish(repo, "art", data[:30000])
    assert repo.artifacts() == []


def test_unpacked_size_limit(repo):
    bomb = zstandard.ZstdCompressor().compress(make_tar([("zeros", "file", b"\0" * 300000)]))
    assert len(bomb) < 1000
    with pytest.raises(ArtifactTooLarge):
        publish(repo, "art", bomb, max_bytes=100000)
    assert repo.artifacts() == []


# --- container images -------------------------------------------------------------------------

LAYER1 = [("etc", "dir", None), ("etc/os-release", "file", b"base\n"),
          ("etc/gone", "file", b"to be whited out\n"), ("opt", "dir", None),
          ("opt/old1", "file", b"old\n"), ("opt/sub", "dir", None), ("opt/sub/old2", "file", b"o\n"),
          ("bin", "dir", None), ("bin/sh", "file", b"#!shell\n"),
          ("bin/link", "symlink", "sh"), ("bin/hl", "hardlink", "bin/sh")]
LAYER2 = [("etc", "dir", None), ("etc/.wh.gone", "file", b""), ("opt", "dir", None),
          ("opt/.wh..wh..opq", "file", b""), ("opt/new", "file", b"new\n"),
          ("etc/os-release", "file", b"top\n")]
IMAGE_TREE = {"": "dir", "etc": "dir", "etc/os-release": b"top\n", "opt": "dir",
              "opt/new": b"new\n", "bin": "dir", "bin/sh": b"#!shell\n",
              "bin/link": ("->", "sh"), "bin/hl": b"#!shell\n"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def docker_save(layers: list[bytes]) -> bytes:
    """A docker-save archive, legacy layout: <id>/layer.tar, manifest.json last."""
    members, names = [], []
    for i, layer in enumerate(layers):
        lid = _sha(b"layer%d" % i)
        members += [(f"{lid}/", "dir", None), (f"{lid}/VERSION", "file", b"1.0"),
                    (f"{lid}/json", "file", b"{}"), (f"{lid}/layer.tar", "file", layer)]
        names.append(f"{lid}/layer.tar")
    config = b'{"architecture": "amd64"}'
    members.append((f"{_sha(config)}.json", "file", config))
    manifest = [{"Config": f"{_sha(config)}.json", "RepoTags": ["x:1"], "Layers": names}]
    members.append(("manifest.json", "file", json.dumps(manifest).encode()))
    members.append(("repositories", "file", b"{}"))
    return make_tar(members)


def oci_archive(layers: list[bytes]) -> bytes:
    """An OCI image layout archive (docker >= 25 / podman): blobs first, index.json later."""
    blobs = {}
    descs = []
    for layer in layers:
        gz = gzip.compress(layer)
        blobs[_sha(gz)] = gz
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": f"sha256:{_sha(gz)}", "size": len(gz)})
    config = b'{"architecture": "amd64"}'
    blobs[_sha(config)] = config
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": f"sha256:{_sha(config)}"},
                           "layers": descs}).encode()
    blobs[_sha(manifest)] = manifest
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": f"sha256:{_sha(manifest)}"}]}).encode()
    members = [("blobs/", "dir", None), ("blobs/sha256/", "dir", None)]
    members += [(f"blobs/sha256/{h}", "file", b) for h, b in blobs.items()]
    members += [("index.json", "file", index), ("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}')]
    return make_tar(members)


@pytest.mark.parametrize("builder", [docker_save, oci_archive])
def test_image_archive_is_flattened_with_whiteouts(repo, builder):
    stats = publish(repo, "img", builder([make_tar(LAYER1), make_tar(LAYER2)]))
    assert stats.image and stats.layers == 2
    assert files_of(repo, "img") == IMAGE_TREE


def test_image_without_manifest_is_refused(repo):
    lid = _sha(b"x")
    with pytest.raises(ArchiveError, match="manifest.json or index.json"):
        publish(repo, "img", make_tar([(f"{lid}/layer.tar", "file", make_tar(LAYER1))]))


def test_image_layer_escaping_root_is_refused(repo):
    with pytest.raises(ArchiveError, match="escapes"):
        publish(repo, "img", docker_save([make_tar([("../../x", "file", b"x")])]))
    assert repo.artifacts() == []


def test_cli_publish_uses_stage_archive(repo, tmp_path):
    """``python -m runtime publish <fqrn> <tar> --as name`` goes through the same code."""
    from typer.testing import CliRunner

    from runtime.__main__ import app

    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(gzip.compress(make_tar(BASIC)))
    repo.close()
    result = CliRunner().invoke(app, ["publish", FQRN, str(archive), "--as", "viacli",
                                      "--data-dir", str(repo.data_dir),
                                      "--keys-dir", str(repo.keys_dir)])
    assert result.exit_code == 0, result.output
    assert files_of(repo, "viacli") == EXPECTED
