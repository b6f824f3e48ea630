"""kill -9 during clean, gc and resign leaves a repository a client can mount.

Each job runs in a child process that sends itself SIGKILL just before its N-th filesystem
mutation (``os.write``/``fsync``/``rename``/``link``/``unlink``/``utime``/``chmod``): a real
kill at a deterministic point, swept from the first mutation to the last. After every kill the
independent reader must verify the repository, find every object it references and read every
non-expired artifact byte for byte; then the job runs again to completion and must leave a
clean result (expired artifacts gone, no garbage, no trash, a valid whitelist).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from runtime.maintenance.clean import clean
from runtime.maintenance.gc import TRASH_PREFIX, collect, default_grace_s
from runtime.maintenance.resign import resign, utc
from runtime.repository import Repository
from runtime.settings import RepositoryConfig
from tests.cvmfs_reader import RepoReader
from tests.httpserve import serve_directory
from tests.served import object_files
from tests.test_maintenance_clean_gc import Clock, publish, read_everything

REPO_ROOT = Path(__file__).resolve().parents[1]
FQRN = "crash.example.org"
T0 = 1_900_000_000.0  # the repository clock of the scenario (whitelists use real time)
LIVE = {
    "/keep/a.txt": b"kept artifact, file a",
    "/keep/shared.bin": b"bytes shared with an expiring artifact" * 50,
    "/later/b.txt": b"expires, but only next year",
}

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, sys.argv[1])
    data, keys, fqrn, job, kill_at, now = sys.argv[2:8]
    kill_at, now = int(kill_at), float(now)
    calls = 0

    def tripwire(fn):
        def wrapped(*args, **kwargs):
            global calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapped

    from runtime.repository import Repository
    from runtime.settings import RepositoryConfig
    from runtime.maintenance.clean import clean
    from runtime.maintenance.gc import collect
    from runtime.maintenance.resign import resign

    repo = Repository(data, keys, RepositoryConfig(fqrn=fqrn), clock=lambda: now)
    for name in ("write", "fsync", "rename", "replace", "link", "unlink", "utime", "chmod"):
        setattr(os, name, tripwire(getattr(os, name)))
    if job == "clean":
        clean(repo)
    elif job == "gc":
        collect(repo, slack_s=0)
    elif job == "resign":
        resign(repo, force=True)
    print(json.dumps({"calls": calls}))
""")


def _repo(root: Path, now: float) -> Repository:
    return Repository(root / "data", root / "keys", RepositoryConfig(fqrn=FQRN),
                      clock=Clock(now))


def _scenario(root: Path) -> None:
    """Artifacts, two of them expired at T0+100; the sweep already done for the gc scenario
    (``root/after-clean``), so gc at T0+100+grace+10 has roots, catalogs and files to delete."""
    repo = _repo(root, T0)
    repo.init()
    publish(repo, "keep", {"a.txt": LIVE["/keep/a.txt"], "shared.bin": LIVE["/keep/shared.bin"]})
    publish(repo, "later", {"b.txt": LIVE["/later/b.txt"]}, T0 + 365 * 86400)
    publish(repo, "old1", {"shared.bin": LIVE["/keep/shared.bin"], "u.txt": b"unique 1"}, T0 + 50)
    publish(repo, "old2", {f"f{i}": f"unique 2.{i}".encode() for i in range(20)}, T0 + 50)
    aborted = repo.begin()
    aborted.add_file("never/x", b"an upload that was abandoned")
    aborted.abort()
    repo.close()


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("crash-templates")
    _scenario(base / "before-clean")
    shutil.copytree(base / "before-clean", base / "after-clean", symlinks=True)
    repo = _repo(base / "after-clean", T0 + 100)
    assert clean(repo).removed == ["old1", "old2"]
    return {"clean": base / "before-clean", "gc": base / "after-clean",
            "resign": base / "before-clean"}


def _now_for(job: str, root: Path) -> float:
    if job == "clean":
        return T0 + 100
    if job == "gc":
        return T0 + 100 + default_grace_s(_repo(root, T0)) + 10
    return time.time()  # resign: the reader checks the whitelist against the real time


def _run_child(root: Path, job: str, kill_at: int, now: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO_ROOT), str(root / "data"), str(root / "keys"),
         FQRN, job, str(kill_at), repr(now)],
        capture_output=True, text=True, timeout=120)


@contextmanager
def _reader(root: Path):
    site = root / "site"
    site.mkdir(exist_ok=True)
    if not (site / "cvmfs").exists():
        os.symlink(root / "data" / "public", site / "cvmfs")
    pub = (root / "keys" / f"{FQRN}.pub").read_bytes()
    with serve_directory(site) as url:
        with RepoReader(f"{url}/cvmfs/{FQRN}", FQRN, pub) as reader:
            yield reader


def _assert_mountable_with_live_data(root: Path) -> dict[str, bytes]:
    with _reader(root) as reader:
        reader.check()
        files = read_everything(reader)
    assert {p: files.get(p) for p in LIVE} == LIVE
    return files


def _kill_points(total: int) -> list[int]:
    if total <= 12:
        return list(range(1, total + 1))
    picks = {1, 2, 3, total // 4, total // 3, total // 2, 2 * total // 3, 3 * total // 4,
             total - 2, total - 1, total}
    return sorted(p for p in picks if p >= 1)


@pytest.mark.parametrize("job", ["clean", "gc", "resign"])
def test_kill_9_at_every_stage_of_a_job_leaves_a_valid_repository(job, templates, tmp_path):
    # a dry run counts the job's mutations
    dry = tmp_path / "dry"
    shutil.copytree(templates[job], dry, symlinks=True)
    done = _run_child(dry, job, 0, _now_for(job, dry))
    assert done.returncode == 0, done.stderr
    total = json.loads(done.stdout)["calls"]
    print(f"{job}: {total} mutations, killed at {_kill_points(total)}")
    assert total >= 5, f"{job} made only {total} filesystem mutations"

    for point in _kill_points(total):
        root = tmp_path / f"kill-{point}"
        shutil.copytree(templates[job], root, symlinks=True)
        before_wl = (root / "data/public" / FQRN / ".cvmfswhitelist").read_bytes()
        now = _now_for(job, root)
        killed = _run_child(root, job, point, now)
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr)

        files = _assert_mountable_with_live_data(root)
        if job == "clean":
            # killed before the commit point the old revision is served, after it the new one
            assert set(files) in (set(LIVE), set(LIVE) | {
                "/old1/shared.bin", "/old1/u.txt", *(f"/old2/f{i}" for i in range(20))})

        # the job runs again to completion and leaves a clean result
        repo = _repo(root, now)
        if job == "clean":
            clean(repo)
            assert set(_assert_mountable_with_live_data(root)) == set(LIVE)
        elif job == "gc":
            collect(repo, slack_s=0)
            _assert_mountable_with_live_data(root)
            assert not list(repo.store.txn.glob(f"{TRASH_PREFIX}*"))
            with _reader(root) as reader:
                assert object_files(repo) == reader.referenced_objects()
        else:
            # the old whitelist or the complete new one (the reader verified its signature)
            if repo.whitelist_path.read_bytes() != before_wl:
                expires = repo.whitelist().expires
                assert abs((expires - utc(now)).total_seconds() - 30 * 86400) < 5
            result = resign(repo, force=True)
            assert result.resigned
            _assert_mountable_with_live_data(root)
        repo.close()
