"""Image archives of a wrong shape answer 400, never 500; layers written through a lower
layer's directory symlink land where Docker puts them."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import httpx
import pytest

from tests.ingestkit import assert_refused, published, put_archive
from tests.live_server import live_server
from tests.test_unpack import docker_save
from tests.uploadkit import FQRN, auth, make_tar, settings


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with live_server(settings(tmp_path_factory.mktemp("images"))) as server:
        yield server


@pytest.fixture
def client(srv):
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as c:
        yield c


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


LAYER = make_tar([("etc", "dir", None), ("etc/hosts", "file", b"h\n")])
LID = _sha(b"layer0")


def docker_with_manifest(manifest: bytes) -> bytes:
    return make_tar([(f"{LID}/layer.tar", "file", LAYER), ("manifest.json", "file", manifest)])


def oci_with(index: object, manifest: object | None = None) -> bytes:
    members = [(f"blobs/sha256/{_sha(LAYER)}", "file", LAYER)]
    if manifest is not None:
        raw = json.dumps(manifest).encode()
        members.append((f"blobs/sha256/{_sha(raw)}", "file", raw))
        index = json.loads(json.dumps(index).replace("MANIFEST", _sha(raw)))
    members.append(("index.json", "file", json.dumps(index).encode()))
    return make_tar(members)


DEEP = b"[" * 100000 + b"]" * 100000
MALFORMED = [
    ("manifest not a list", docker_with_manifest(b'{"Layers": []}'), "no list of Layers"),
    ("manifest empty list", docker_with_manifest(b"[]"), "no list of Layers"),
    ("Layers a string", docker_with_manifest(b'[{"Layers": "x"}]'), "no list of Layers"),
    ("Layers of numbers", docker_with_manifest(b'[{"Layers": [1, 2]}]'), "no list of Layers"),
    ("manifest entry a number", docker_with_manifest(b"[5]"), "no list of Layers"),
    ("manifest not JSON", docker_with_manifest(b"{nope"), "not JSON"),
    ("manifest nested deeply", docker_with_manifest(DEEP), "not JSON"),
    ("index a list", oci_with([1, 2]), "not an object"),
    ("manifests a string", oci_with({"manifests": "x"}), "names no manifest"),
    ("manifest descriptor a number", oci_with({"manifests": [7]}), "no valid digest"),
    ("digest a number", oci_with({"manifests": [{"digest": 5}]}), "no valid digest"),
    ("digest with a path", oci_with({"manifests": [{"digest": "sha256:../../x"}]}),
     "no valid digest"),
    ("layers a dict", oci_with({"manifests": [{"digest": "sha256:MANIFEST"}]},
                               {"layers": {"a": 1}}), "layers is not a list"),
    ("layer without digest", oci_with({"manifests": [{"digest": "sha256:MANIFEST"}]},
                                      {"layers": [{"size": 1}]}), "no valid digest"),
    ("manifest a list", oci_with({"manifests": [{"digest": "sha256:MANIFEST"}]}, [1]),
     "not an object"),
]


@pytest.mark.parametrize("what, data, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_image_metadata_is_400(srv, client, what, data, message):
    repo = srv.repositories[FQRN]
    before = published(repo)
    assert_refused(put_archive(client, "img", data), 400, message)
    assert published(repo) == before


def tree(client: httpx.Client, name: str) -> dict[str, str]:
    r = client.get(f"/repos/{FQRN}/{name}")
    assert r.status_code == 200, r.text
    out = {}
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        for m in tar:
            rel = m.name.partition("/")[2]
            if rel:
                out[rel] = ("dir" if m.isdir() else f"-> {m.linkname}" if m.issym()
                            else tar.extractfile(m).read().decode())  # type: ignore[union-attr]
    return out


LOWER = make_tar([("b", "dir", None), ("b/old", "file", b"old"), ("a", "symlink", "b"),
                  ("abs", "symlink", "/b"), ("up", "symlink", "../../b"),
                  ("dangling", "symlink", "nowhere"), ("file", "file", b"f")])


def test_upper_layer_writes_through_a_lower_directory_symlink(client):
    """Docker applies ``a/x`` over ``a -> b`` by writing ``b/x`` (the kernel follows ``a``);
    the symlink stays a symlink. Absolute and ``..``-escaping targets resolve inside the
    image root, as under Docker's chroot."""
    upper = make_tar([("a/x", "file", b"x"), ("abs/y", "file", b"y"), ("up/z", "file", b"z")])
    r = put_archive(client, "through", docker_save([LOWER, upper]))
    assert r.status_code == 200, r.text
    got = tree(client, "through")
    assert got["a"] == "-> b" and got["abs"] == "-> /b" and got["up"] == "-> ../../b"
    assert {k: v for k, v in got.items() if k.startswith("b/")} == {
        "b/old": "old", "b/x": "x", "b/y": "y", "b/z": "z"}


def test_whiteout_through_a_directory_symlink(client):
    upper = make_tar([("a/.wh.old", "file", b"")])
    r = put_archive(client, "whiteout-through", docker_save([LOWER, upper]))
    assert r.status_code == 200, r.text
    got = tree(client, "whiteout-through")
    assert "b/old" not in got and got["a"] == "-> b"


def test_explicit_directory_entry_replaces_the_symlink_like_docker(client):
    """Docker removes a non-directory before creating a directory entry in its place."""
    upper = make_tar([("a", "dir", None), ("a/x", "file", b"x")])
    r = put_archive(client, "replaced", docker_save([LOWER, upper]))
    assert r.status_code == 200, r.text
    got = tree(client, "replaced")
    assert got["a"] == "dir" and got["a/x"] == "x" and "b/x" not in got


@pytest.mark.parametrize("upper, message", [
    ([("dangling/x", "file", b"x")], "symbolic link that leads nowhere"),
    ([("file/x", "file", b"x")], "below a non-directory"),
])
def test_writing_through_a_link_to_nowhere_or_below_a_file_is_400(srv, client, upper, message):
    repo = srv.repositories[FQRN]
    before = published(repo)
    assert_refused(put_archive(client, "bad-layer", docker_save([LOWER, make_tar(upper)])),
                   400, message)
    assert published(repo) == before


def test_symlink_loop_is_400(client):
    lower = make_tar([("l1", "symlink", "l2"), ("l2", "symlink", "l1")])
    assert_refused(put_archive(client, "loop", docker_save([lower, make_tar(
        [("l1/x", "file", b"x")])])), 400, "too many symbolic links")
