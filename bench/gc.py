"""Expiry sweep + garbage collection cost, and how it grows with the live data.

Prints, in one run, for 10,000 expired artifacts (one small file each, a directory artifact with
its own nested catalog) among 10,000 live ones, and again among 10x the live artifacts:

- clean: seconds to remove every expired artifact (one revision);
- gc: seconds to mark what the retained revision references and delete the rest, with the
  objects and bytes freed. GC runs hourly and remembers what each catalog references (by
  hash), so the timed run follows an earlier gc over the same live artifacts, as in steady
  state; that earlier, first-ever run (which reads every catalog) is printed too;
- beside them, the baseline of the same run: a bare listing + stat of every object in the store
  (what any sweep must at least do), and the ratio of the 10x run to the 1x run.

Target: clean + gc of the 10k expired artifacts under 10 s (2 cores). The repository clock is
set forward instead of sleeping (expiry, then the grace period).

Usage: ``python bench/gc.py [--expired 10000] [--live-factor 10] [--workdir DIR] [--quick]``;
the scratch repositories go to a temp dir under ``--workdir`` (default: the system temp dir;
pass a directory on the disk under test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.maintenance.clean import clean  # noqa: E402
from runtime.maintenance.gc import collect, default_grace_s  # noqa: E402
from runtime.repository import Repository  # noqa: E402
from runtime.settings import RepositoryConfig  # noqa: E402

BATCH = 10_000  # artifacts per transaction while building the scenario


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Run:
    live: int
    expired: int
    setup_s: float
    scan_s: float
    objects_before: int
    first_gc_s: float
    first_gc_read: int
    clean_s: float
    gc_s: float
    gc_read: int
    removed: int
    objects_deleted: int
    bytes_freed: int
    objects_after: int

    @property
    def total_s(self) -> float:
        return self.clean_s + self.gc_s


def scan_store(repo: Repository) -> tuple[int, float]:
    """Baseline: list and stat every object (the floor of any sweep over the store)."""
    t = time.perf_counter()
    count = sum(1 for _ in repo.store.iter_objects())
    return count, time.perf_counter() - t


def build(repo: Repository, clock: Clock, live: int, expired: int) -> float:
    """Publish ``expired`` artifacts expiring at t0+100 and ``live`` ones without expiry."""
    t = time.perf_counter()
    names = [(f"exp{i:06d}", clock.t + 100) for i in range(expired)]
    names += [(f"live{i:07d}", None) for i in range(live)]
    for start in range(0, len(names), BATCH):
        tx = repo.begin()
        for name, expires_at in names[start:start + BATCH]:
            tx.add_file(f"{name}/file.txt", f"{name}: small artifact content\n".encode())
            if expires_at is not None:
                tx.set_expiry(name, expires_at)
        tx.publish()
    return time.perf_counter() - t


def scenario(workdir: Path, keys: Path, live: int, expired: int) -> Run:
    root = workdir / f"live{live}-expired{expired}"
    clock = Clock(time.time())
    repo = Repository(root / "data", keys, RepositoryConfig(fqrn="bench.example.org"),
                      clock=clock)
    repo.init()
    setup_s = build(repo, clock, live, expired)
    objects_before, scan_s = scan_store(repo)
    first = collect(repo, slack_s=0)  # the previous hourly run: nothing has expired yet

    clock.t += 200
    swept = clean(repo)
    assert len(swept.removed) == expired, swept
    clock.t += default_grace_s(repo) + 1
    gc = collect(repo, slack_s=0)
    objects_after, _ = scan_store(repo)
    remaining = len(repo.artifacts())
    assert remaining == live, (remaining, live)
    repo.close()
    shutil.rmtree(root)
    return Run(live, expired, setup_s, scan_s, objects_before, first.seconds,
               first.catalogs_read, swept.seconds, gc.seconds, gc.catalogs_read,
               len(swept.removed), gc.objects_deleted, gc.bytes_freed, objects_after)


def report(label: str, run: Run, base: Run | None) -> None:
    print(f"{label}: {run.expired:,} expired of {run.expired + run.live:,} artifacts "
          f"(setup {run.setup_s:.1f} s)")
    print(f"   clean {run.clean_s:6.2f} s   gc {run.gc_s:6.2f} s   clean+gc {run.total_s:6.2f} s"
          f"   freed {run.objects_deleted:,} objects / {run.bytes_freed / 2**20:.1f} MiB"
          f"   objects {run.objects_before:,} -> {run.objects_after:,}")
    print(f"   gc read {run.gc_read:,} catalogs; the first gc ever (reads all "
          f"{run.first_gc_read:,}, nothing to free) took {run.first_gc_s:6.2f} s")
    print(f"   baseline: list+stat of the {run.objects_before:,} objects {run.scan_s:6.2f} s;"
          f" clean+gc = {run.total_s / run.scan_s:5.1f}x that")
    if base is not None:
        print(f"   vs 1x live data: clean {run.clean_s / base.clean_s:4.1f}x, "
              f"gc {run.gc_s / base.gc_s:4.1f}x, clean+gc {run.total_s / base.total_s:4.1f}x, "
              f"first gc {run.first_gc_s / base.first_gc_s:4.1f}x "
              f"for {run.live / base.live:.0f}x the live artifacts")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expired", type=int, default=10_000)
    ap.add_argument("--live-factor", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="1,000 expired (a smoke run)")
    args = ap.parse_args()
    expired = 1_000 if args.quick else args.expired
    # never inside the checkout: a scratch repository of 200k files must not end up in git
    workdir = Path(tempfile.mkdtemp(prefix="bench-gc-", dir=args.workdir))
    try:
        keys = workdir / "keys"
        base = scenario(workdir, keys, expired, expired)
        report("1. 1x live data", base, None)
        target = "MET" if base.total_s < 10 else "MISSED"
        print(f"   target clean+gc < 10 s for {expired:,} expired: {target}")
        grown = scenario(workdir, keys, expired * args.live_factor, expired)
        report(f"2. {args.live_factor}x live data", grown, base)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of ~100k cached objects


if __name__ == "__main__":
    main()
