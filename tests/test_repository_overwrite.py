"""Overwrite is decided at commit: the last committed upload of a name replaces the artifact
whole, two uploads are never merged, and an overwrite whose name was deleted meanwhile simply
creates it. Concurrent transactions on a real repository, and over real loopback HTTP with an
upload held half-sent while others commit."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.live_server import live_server
from tests.served import served_repository
from tests.uploadkit import FQRN, auth, make_tar, settings


def files_of(repo, name: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """The artifact's small files as published (path -> bytes)."""
    read = {True: repo.store.read_inflated, False: repo.store.read}
    return {p: read[e.compressed](e.digest.hex())
            for p, e in repo.artifact_tree(name).items() if e.is_regular}


def stage_upload(repo, name: str, files: dict[str, bytes], *, seen_existing: bool):  # type: ignore[no-untyped-def]
    """What an ``overwrite=true&unpack=true`` upload stages (seen_existing: the name existed
    when it started)."""
    tx = repo.begin()
    if seen_existing:
        tx.remove(name)
    tx.add_directory(name)
    for rel, data in files.items():
        tx.add_file(f"{name}/{rel}", data)
    return tx


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "one-group-commit"])
def test_the_last_committed_upload_replaces_the_artifact_whole(tmp_path, together):
    with served_repository(tmp_path) as s:
        repo = s.repo
        first = stage_upload(repo, "x", {"a": b"from first"}, seen_existing=False)
        second = stage_upload(repo, "x", {"b": b"from second"}, seen_existing=False)
        if together:
            result = repo.publish(first, second)
            assert not result.errors
        else:
            first.publish()
            second.publish()
        with s.reader() as reader:
            assert sorted(p for p, e in reader.walk().items() if e.type == "file"
                          and not e.hidden) == ["/x/b"]
            assert reader.read_file("/x/b") == b"from second"


def test_an_overwrite_of_a_name_deleted_meanwhile_creates_it(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        stage_upload(repo, "x", {"old": b"old"}, seen_existing=False).publish()
        upload = stage_upload(repo, "x", {"new": b"new"}, seen_existing=True)
        delete = repo.begin()
        delete.remove("x")
        delete.publish()
        upload.publish()  # no ArtifactNotFound
        assert files_of(repo, "x") == {"/x/new": b"new"}


def test_an_overwrite_of_a_name_that_expired_meanwhile_creates_it(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        tx = stage_upload(repo, "x", {"old": b"old"}, seen_existing=False)
        tx.set_expiry("x", repo.clock() + 1)
        tx.publish()
        upload = stage_upload(repo, "x", {"new": b"new"}, seen_existing=True)
        sweep = repo.begin()
        sweep.remove_expired(repo.clock() + 10)
        sweep.publish()
        assert [a.name for a in repo.artifacts()] == []
        upload.publish()
        assert files_of(repo, "x") == {"/x/new": b"new"}


def test_a_change_inside_an_artifact_still_updates_it_in_place(tmp_path):
    """Staging below an artifact without its top-level entry is an edit, not a replacement."""
    with served_repository(tmp_path) as s:
        repo = s.repo
        stage_upload(repo, "x", {"a": b"a"}, seen_existing=False).publish()
        with repo.begin() as tx:
            tx.add_file("x/b", b"b")
            tx.publish()
        assert files_of(repo, "x") == {"/x/a": b"a", "/x/b": b"b"}


# --- over HTTP: an upload held half-sent while others commit -----------------------------------

async def _held_upload(url: str, name: str, body: bytes, meanwhile) -> httpx.Response:  # type: ignore[no-untyped-def]
    """PUT ``body`` with overwrite+unpack; after half of it, run ``meanwhile(client)``."""
    async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=60) as client:
        released = asyncio.Event()

        async def content():  # type: ignore[no-untyped-def]
            yield body[:1024]
            await released.wait()
            yield body[1024:]

        put = asyncio.create_task(client.put(
            f"/repos/{FQRN}/{name}", params={"unpack": "true", "overwrite": "true"},
            content=content(), headers={"Content-Length": str(len(body))}))
        await asyncio.sleep(0.5)  # the upload has started staging
        await meanwhile(client)
        released.set()
        return await put


def _tar(files: dict[str, bytes]) -> bytes:
    return make_tar([(rel, "file", data) for rel, data in files.items()]
                    + [(f"pad{i}", "file", b"p" * 512) for i in range(4)])


def test_http_overwrite_never_merges_with_an_upload_committed_meanwhile(tmp_path):
    with live_server(settings(tmp_path)) as srv:
        repo = srv.repositories[FQRN]

        async def other_upload(client: httpx.AsyncClient) -> None:
            r = await client.put(f"/repos/{FQRN}/x", params={"unpack": "true"},
                                 content=make_tar([("theirs", "file", b"theirs")]))
            assert r.status_code == 200, r.text

        r = asyncio.run(_held_upload(srv.url, "x", _tar({"mine": b"mine"}), other_upload))
        assert r.status_code == 200, r.text
        published = files_of(repo, "x")
        assert "/x/mine" in published and "/x/theirs" not in published


def test_http_overwrite_of_a_name_deleted_meanwhile_is_created_not_404(tmp_path):
    with live_server(settings(tmp_path)) as srv:
        repo = srv.repositories[FQRN]
        with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as client:
            assert client.put(f"/repos/{FQRN}/x", params={"unpack": "true"},
                              content=make_tar([("old", "file", b"old")])).status_code == 200

        async def delete(client: httpx.AsyncClient) -> None:
            assert (await client.delete(f"/repos/{FQRN}/x")).status_code == 200

        r = asyncio.run(_held_upload(srv.url, "x", _tar({"new": b"new"}), delete))
        assert r.status_code == 200, r.text
        published = files_of(repo, "x")
        assert "/x/new" in published and "/x/old" not in published
