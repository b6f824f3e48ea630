"""Fuzzing the archive and image parser through the real upload route.

Random mutations (byte flips, overwritten runs, truncations, insertions) of valid archives of
every kind the server accepts: whatever the bytes, the answer is never a 5xx, and an upload
that is refused leaves the published repository exactly as it was.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import lzma

import httpx
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests.ingestkit import published
from tests.live_server import live_server
from tests.test_unpack import LAYER1, LAYER2, docker_save, oci_archive
from tests.uploadkit import FQRN, auth, make_tar, settings

PLAIN = make_tar([("d", "dir", None), ("d/a.txt", "file", b"alpha\n" * 50),
                  ("d/big.bin", "file", bytes(range(256)) * 300), ("link", "symlink", "d/a.txt"),
                  ("hard", "hardlink", "d/a.txt"), ("d/e", "dir", None)])
BASES = {
    "tar": PLAIN,
    "tar.gz": gzip.compress(PLAIN),
    "tar.bz2": bz2.compress(PLAIN),
    "tar.xz": lzma.compress(PLAIN),
    "tar.zst": zstandard.ZstdCompressor(write_checksum=True).compress(PLAIN),
    "docker": docker_save([make_tar(LAYER1), make_tar(LAYER2)]),
    "oci": oci_archive([make_tar(LAYER1), make_tar(LAYER2)]),
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with live_server(settings(tmp_path_factory.mktemp("fuzz"))) as server:
        yield server


@pytest.fixture(scope="module")
def client(srv):
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as c:
        yield c


mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("run"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("cut"), st.floats(0, 1), st.just(b"")),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=600)),
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    for kind, where, arg in ops:
        if not data:
            break
        at = min(int(where * len(data)), len(data) - 1)
        if kind == "flip":
            data = data[:at] + bytes([data[at] ^ arg]) + data[at + 1:]
        elif kind == "run":
            data = data[:at] + arg + data[at + len(arg):]
        elif kind == "cut":
            data = data[:at]
        else:
            data = data[:at] + arg + data[at:]
    return data


names = itertools.count()


@hsettings(max_examples=240, deadline=None, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=st.sampled_from(sorted(BASES)), ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_archives_never_answer_5xx(srv, client, base, ops):
    repo = srv.repositories[FQRN]
    before = published(repo)
    data = mutate(BASES[base], ops)
    r = client.put(f"/repos/{FQRN}/fuzz{next(names)}", params={"unpack": "true"}, content=data)
    assert r.status_code < 500, f"{base}: {r.status_code} {r.text}"
    if r.status_code != 200:
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail
        assert published(repo) == before
