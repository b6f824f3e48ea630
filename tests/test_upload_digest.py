"""End-to-end integrity over loopback: the digest a client sends is checked while the body
streams; a mismatch or a malformed digest is 400 and publishes nothing."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.uploadkit import FQRN, snapshot

DATA = bytes(range(256)) * 1000  # 256000 bytes: several 64 KiB chunks


def content_digest(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def test_matching_header_publishes_and_answers_the_sha256(client):
    r = client.put(f"/repos/{FQRN}/blob.bin", content=DATA,
                   headers={"Content-Digest": content_digest(DATA)})
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert client.get(f"/repos/{FQRN}/blob.bin").content == DATA


def test_sha256_is_answered_without_a_digest_from_the_client(client):
    r = client.put(f"/repos/{FQRN}/plain.bin", content=b"abc")
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == hashlib.sha256(b"abc").hexdigest()


def test_other_algorithms_beside_sha256_are_ignored(client):
    header = "sha-512=:" + base64.b64encode(b"x" * 64).decode() + ":, " + content_digest(DATA)
    r = client.put(f"/repos/{FQRN}/blob.bin", content=DATA, headers={"Content-Digest": header})
    assert r.status_code == 200, r.text


def test_matching_query_parameter_publishes(client):
    r = client.put(f"/repos/{FQRN}/q.bin", content=DATA,
                   params={"sha256": hashlib.sha256(DATA).hexdigest().upper()})
    assert r.status_code == 200, r.text


def test_multipart_file_part_is_verified(srv, client):
    good = client.post(f"/repos/{FQRN}", files={"file": ("m.txt", b"hello\n")},
                       headers={"Content-Digest": content_digest(b"hello\n")})
    assert good.status_code == 200, good.text
    assert good.json()["sha256"] == hashlib.sha256(b"hello\n").hexdigest()
    before = snapshot(srv.repositories[FQRN])
    bad = client.post(f"/repos/{FQRN}", files={"file": ("n.txt", b"hello\n")},
                      params={"sha256": hashlib.sha256(b"other").hexdigest()})
    assert bad.status_code == 400 and "content digest mismatch" in bad.json()["detail"]
    assert snapshot(srv.repositories[FQRN])[:2] == before[:2]


@pytest.mark.parametrize("how", ["header", "query"])
def test_mismatch_is_400_and_publishes_nothing(srv, client, how):
    repo = srv.repositories[FQRN]
    before = snapshot(repo)
    wrong = DATA[:-1] + b"\x00"
    kwargs = ({"headers": {"Content-Digest": content_digest(wrong)}} if how == "header"
              else {"params": {"sha256": hashlib.sha256(wrong).hexdigest()}})
    r = client.put(f"/repos/{FQRN}/blob.bin", content=DATA, **kwargs)
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert detail.startswith("content digest mismatch: expected sha-256 "
                             f"{hashlib.sha256(wrong).hexdigest()}, received "
                             f"{hashlib.sha256(DATA).hexdigest()}")
    after = snapshot(repo)
    assert after[:2] == before[:2]  # manifest and artifacts untouched
    assert after[3] == []  # no staging left behind
    assert client.get(f"/repos/{FQRN}/blob.bin").status_code == 404


def test_mismatch_on_an_archive_publishes_nothing(srv, client):
    from tests.uploadkit import make_tar
    tar = make_tar([("a.txt", "file", b"a")])
    before = snapshot(srv.repositories[FQRN])
    r = client.put(f"/repos/{FQRN}/tree", content=tar, params={"unpack": "true"},
                   headers={"Content-Digest": content_digest(b"not the tar")})
    assert r.status_code == 400 and "content digest mismatch" in r.json()["detail"]
    assert snapshot(srv.repositories[FQRN])[:2] == before[:2]


@pytest.mark.parametrize("headers, params, message", [
    ({"Content-Digest": "sha-256=abc"}, {}, "malformed Content-Digest"),
    ({"Content-Digest": "sha-256=:not base64!:"}, {}, "malformed Content-Digest"),
    ({"Content-Digest": "sha-256=:" + base64.b64encode(b"short").decode() + ":"}, {},
     "has 5 bytes, expected 32"),
    ({"Content-Digest": "sha-256=:" + "A" * 2000 + ":"}, {}, "longer than"),
    ({}, {"sha256": "xyz"}, "malformed sha256 parameter"),
    ({}, {"sha256": "ab" * 31}, "malformed sha256 parameter"),
    ({"Content-Digest": content_digest(DATA)}, {"sha256": hashlib.sha256(b"x").hexdigest()},
     "name different digests"),
])
def test_malformed_digest_is_400_before_anything_is_staged(srv, client, headers, params,
                                                           message):
    before = snapshot(srv.repositories[FQRN])
    r = client.put(f"/repos/{FQRN}/blob.bin", content=DATA, headers=headers, params=params)
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"]
    assert snapshot(srv.repositories[FQRN]) == before


def test_a_large_body_with_a_malformed_digest_still_reads_the_reason(srv, client):
    """The body is drained (bounded) before the 400, so the client sees the answer and not a
    reset connection."""
    big = b"\x00" * (8 * 1024 * 1024)
    r = client.put(f"/repos/{FQRN}/big.bin", content=big,
                   headers={"Content-Digest": "sha-256=:%%%:"})
    assert r.status_code == 400 and "malformed Content-Digest" in r.json()["detail"]
