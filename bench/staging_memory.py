#!/usr/bin/env python3
"""Peak memory of staging and committing one artifact of many entries.

Stages ``--entries`` small files (all sharing one stored content, so the figure is the cost of
entries, not of bytes) in ``--dirs`` directories of one artifact, then commits it, and prints
the process's peak RSS (``VmHWM`` from /proc/self/status) before staging (the baseline of the
same run: interpreter, modules, an initialized repository), after staging and after the
commit, with the time each step took. Memory that grows with the entries shows as the
difference between the first and the last figure.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.repository import Repository, split_path  # noqa: E402
from runtime.settings import RepositoryConfig  # noqa: E402
from tests.serverproc import proc_status  # noqa: E402


def peak_rss_mib() -> float:
    return proc_status("VmHWM") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="staging-memory-", dir=args.workdir))
    try:
        repo = Repository(root / "data", root / "keys", RepositoryConfig(fqrn="mem.bench.org"),
                          **({"min_free_bytes": 0} if "min_free_bytes" in
                             Repository.__init__.__code__.co_varnames else {}))
        repo.init()
        content = repo.ingester.ingest(b"same small content\n")
        baseline = peak_rss_mib()
        started = time.perf_counter()
        tx = repo.begin()
        tx.add_directory("big")
        per_dir = max(1, args.entries // args.dirs)
        staged = 1
        for d in range(args.dirs):
            directory = split_path(f"big/d{d:05d}")
            tx.add_directory(directory)
            staged += 1
            for f in range(per_dir):
                if staged >= args.entries:
                    break
                tx.add_content(directory.child(f"f{f:07d}"), content)
                staged += 1
        staging_s = time.perf_counter() - started
        after_staging = peak_rss_mib()
        started = time.perf_counter()
        tx.publish()
        commit_s = time.perf_counter() - started
        after_commit = peak_rss_mib()
        info = repo.artifact("big")
        repo.close()
        print(f"entries staged: {staged} ({info.files} files published)")
        print(f"peak RSS before staging (baseline): {baseline:8.1f} MiB")
        print(f"peak RSS after staging:             {after_staging:8.1f} MiB  ({staging_s:.1f} s)")
        print(f"peak RSS after commit:              {after_commit:8.1f} MiB  ({commit_s:.1f} s)")
        print(f"growth over the baseline:           {after_commit - baseline:8.1f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
