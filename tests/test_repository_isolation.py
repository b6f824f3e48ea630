"""One upload never fails another: what could fail a commit is refused when it is staged, and a
transaction that still fails at commit fails alone (the committer retries the others).

Also: setuid/setgid/sticky bits are stripped on ingest, and names that display as something
else (line separators, NEL, bidirectional controls) are refused. Over real loopback HTTP
against the real server, or on a real repository served over HTTP.
"""

from __future__ import annotations

import asyncio
import io
import stat
import tarfile

import httpx
import pytest

from runtime.cvmfs.catalog import Entry
from runtime.repository import InvalidPath, Repository
from runtime.repository.transaction import Op
from runtime.server.committer import GroupCommitter
from tests.cvmfs_reader import RepoReader
from tests.live_server import live_server
from tests.served import served_repository
from tests.uploadkit import FQRN, auth, leftovers, make_tar, settings, snapshot


@pytest.fixture
def srv(tmp_path):
    with live_server(settings(tmp_path)) as server:
        yield server


def raw_tar(build) -> bytes:  # type: ignore[no-untyped-def]
    """A tar written by ``tarfile`` itself; ``build(tar)`` adds the members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        build(tar)
    return buf.getvalue()


def pax_mtime_tar(mtime: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.size = 2
        info.pax_headers = {"mtime": mtime}
        tar.addfile(info, io.BytesIO(b"x\n"))
    return buf.getvalue()


def one_line_detail(r: httpx.Response) -> str:
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    return detail


# --- 1. checked when staged: refused alone, with 400 -------------------------------------------

async def _upload_all(url: str, uploads: dict[str, bytes]) -> dict[str, httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=120) as client:
        async def one(name: str, body: bytes) -> tuple[str, httpx.Response]:
            return name, await client.put(f"/repos/{FQRN}/{name}", params={"unpack": "true"},
                                          content=body)
        return dict(await asyncio.gather(*(one(n, b) for n, b in uploads.items())))


def test_a_pax_mtime_beyond_int64_refuses_its_upload_and_no_other(srv):
    repo = srv.repositories[FQRN]
    uploads = {f"ok-{i}": make_tar([(f"d/f{i}", "file", f"{i}\n".encode())]) for i in range(20)}
    uploads["poisoned"] = pax_mtime_tar(str(2 ** 63))
    answers = asyncio.run(_upload_all(srv.url, uploads))
    poisoned = answers.pop("poisoned")
    assert poisoned.status_code == 400
    assert "mtime" in one_line_detail(poisoned)
    assert {n: r.status_code for n, r in answers.items()} == {n: 200 for n in answers}
    assert sorted(a.name for a in repo.artifacts()) == sorted(answers)
    assert leftovers(repo) == []


@pytest.mark.parametrize("mtime", [str(2 ** 63), "-1e19", "1e30"])
def test_mtimes_outside_the_catalogs_int64_are_400_and_change_nothing(srv, mtime):
    repo = srv.repositories[FQRN]
    before = snapshot(repo)
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as client:
        r = client.put(f"/repos/{FQRN}/t", params={"unpack": "true"},
                       content=pax_mtime_tar(mtime))
    assert r.status_code == 400 and "signed 64-bit" in one_line_detail(r)
    assert snapshot(repo)[:2] == before[:2] and leftovers(repo) == []  # published: unchanged


@pytest.mark.parametrize("mtime", [2 ** 62, -(2 ** 62)])
def test_large_mtimes_inside_int64_are_accepted(srv, mtime):
    """(tarfile reads a PAX mtime as a float: these are exact.)"""
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as client:
        r = client.put(f"/repos/{FQRN}/t", params={"unpack": "true"},
                       content=pax_mtime_tar(str(mtime)))
    assert r.status_code == 200, r.text
    assert srv.repositories[FQRN].artifact_tree("t")["/t/f"].mtime == mtime


def _symlink_not_utf8(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("link")
    info.type = tarfile.SYMTYPE
    info.linkname = b"target-\xff\xfe".decode("utf-8", "surrogateescape")
    tar.addfile(info)


def _name_not_utf8(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo(b"caf\xe9".decode("utf-8", "surrogateescape"))
    info.size = 1
    tar.addfile(info, io.BytesIO(b"x"))


# The archive parser refuses these before staging sees them (runtime/ingest/limits.py), in its
# own words; the staging check behind it is the same rule for every other way in.
@pytest.mark.parametrize("build, words", [(_symlink_not_utf8, "target that is not UTF-8"),
                                          (_name_not_utf8, "name that is not UTF-8")])
def test_names_and_symlink_targets_that_are_not_utf8_are_400(srv, build, words):
    repo = srv.repositories[FQRN]
    before = snapshot(repo)
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as client:
        r = client.put(f"/repos/{FQRN}/t", params={"unpack": "true"}, content=raw_tar(build))
    assert r.status_code == 400
    assert words in one_line_detail(r)
    assert snapshot(repo)[:2] == before[:2] and leftovers(repo) == []  # published: unchanged


# --- 1. failing at commit: only that transaction fails -----------------------------------------

def test_a_transaction_failing_at_commit_fails_alone_and_the_other_20_publish(tmp_path):
    """The poisoned transaction holds an entry staging would refuse (an mtime of 2**63),
    placed in its operations directly: the state a staging bug would leave. SQLite refuses it
    while the catalog is built, inside a group commit shared with 20 legitimate uploads."""
    with served_repository(tmp_path) as s:
        repo = s.repo
        good = []
        for i in range(20):
            tx = repo.begin()
            tx.add_file(f"ok-{i}/f", f"{i}\n".encode())
            good.append(tx)
        poisoned = repo.begin()
        poisoned.add_file("poisoned/f", b"fine so far")
        poisoned.ops.append(Op("file", ("poisoned", "late"), Entry(
            path="/poisoned/late", mode=stat.S_IFREG | 0o644, mtime=2 ** 63, size=0,
            digest=bytes(20))))

        async def commit_all() -> tuple[GroupCommitter, list]:
            committer = GroupCommitter(repo)
            txs = good[:10] + [poisoned] + good[10:]
            results = await asyncio.gather(*(committer.commit(tx) for tx in txs),
                                           return_exceptions=True)
            await committer.aclose()
            return committer, results

        committer, results = asyncio.run(commit_all())
        assert committer.batches == [21], "all 21 went into one group commit"
        outcome = results.pop(10)
        assert isinstance(outcome, OverflowError)
        assert all(not isinstance(r, BaseException) for r in results), results
        assert sorted(a.name for a in repo.artifacts()) == sorted(f"ok-{i}" for i in range(20))
        with s.reader() as reader:
            assert reader.revision == repo.revision()
            for i in range(20):
                assert reader.read_file(f"/ok-{i}/f") == f"{i}\n".encode()
            assert "/poisoned" not in reader.walk()
        assert list(repo.staging_dir.iterdir()) == [], "every marker released"


# --- 6. setuid, setgid and sticky bits are stripped --------------------------------------------

def _special_bits(tar: tarfile.TarFile) -> None:
    d = tarfile.TarInfo("bin")
    d.type, d.mode = tarfile.DIRTYPE, 0o3777  # setgid + sticky
    tar.addfile(d)
    f = tarfile.TarInfo("bin/su")
    f.size, f.mode = 3, 0o4755  # setuid
    tar.addfile(f, io.BytesIO(b"su\n"))


def test_setuid_setgid_and_sticky_bits_are_stripped_on_upload(srv):
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as client:
        r = client.put(f"/repos/{FQRN}/img", params={"unpack": "true"},
                       content=raw_tar(_special_bits))
    assert r.status_code == 200, r.text
    pub = (srv.settings.keys_dir / f"{FQRN}.pub").read_bytes()
    with RepoReader(f"{srv.url}/cvmfs/{FQRN}", FQRN, pub) as reader:
        assert stat.S_IMODE(reader.entry("/img/bin").mode) == 0o777
        assert stat.S_IMODE(reader.entry("/img/bin/su").mode) == 0o755
        assert reader.read_file("/img/bin/su") == b"su\n"


def test_setuid_bits_are_stripped_by_the_cli_publish_path_too(tmp_path):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "su").write_bytes(b"su\n")
    (src / "bin" / "su").chmod(0o4755)
    (src / "bin").chmod(0o3775)
    with served_repository(tmp_path) as s:
        with s.repo.begin() as tx:
            tx.add_tree(src, "tool")
            tx.publish()
        with s.reader() as reader:
            assert stat.S_IMODE(reader.entry("/tool/bin").mode) == 0o775
            assert stat.S_IMODE(reader.entry("/tool/bin/su").mode) == 0o755


# --- 6. names that display as something else ---------------------------------------------------

DECEPTIVE = ["evil\u202egnp.exe", "a\u2028b", "a\u2029b", "a\u0085b", "x\u2066y", "x\u2069y",
             "x\u200ey", "x\u200fy", "x\u061cy", "x\u202ay"]


@pytest.mark.parametrize("name", DECEPTIVE)
def test_artifact_names_with_separators_or_bidi_controls_are_400(srv, name):
    repo = srv.repositories[FQRN]
    before = snapshot(repo)
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as client:
        r = client.put(f"/repos/{FQRN}/{name}", content=b"payload")
    assert r.status_code == 400, r.text
    assert "not allowed" in one_line_detail(r)
    assert snapshot(repo) == before


@pytest.mark.parametrize("member", ["dir/a\u2028b", "dir/evil\u202etxt.sh", "a\u0085/f"])
def test_archive_members_with_separators_or_bidi_controls_are_400(srv, member):
    repo = srv.repositories[FQRN]
    before = snapshot(repo)
    with httpx.Client(base_url=srv.url, headers=auth(), timeout=60) as client:
        r = client.put(f"/repos/{FQRN}/t", params={"unpack": "true"},
                       content=make_tar([(member, "file", b"x")]))
    assert r.status_code == 400, r.text
    assert "not allowed" in one_line_detail(r)
    assert snapshot(repo)[:2] == before[:2] and leftovers(repo) == []  # published: unchanged


def test_names_with_ordinary_unicode_still_publish(tmp_path):
    with served_repository(tmp_path) as s:
        with s.repo.begin() as tx:
            tx.add_file("café/日本語/ß", b"ok")
            tx.publish()
        with s.reader() as reader:
            assert reader.read_file("/café/日本語/ß") == b"ok"
        with pytest.raises(InvalidPath):
            s.repo.begin().add_file("ok/\u202e", b"x")


def test_repository_is_importable_from_the_old_path():
    import runtime.repository as pkg

    assert pkg.Repository is Repository
    for name in ("Transaction", "RepositoryError", "InvalidPath", "ArtifactExists",
                 "ArtifactNotFound", "RepositoryLocked", "NotInitialized", "PublishResult",
                 "StagedFile", "ValidPath", "split_path", "validate_artifact_name",
                 "atomic_write", "StorageFull"):
        assert hasattr(pkg, name), name
