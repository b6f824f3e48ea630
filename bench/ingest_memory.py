#!/usr/bin/env python3
"""Peak memory of staging one archive of many empty files through the archive path.

Runs :func:`runtime.ingest.stage_archive` on an uncompressed tar of ``--entries`` empty files
against a real repository, then commits, and prints the process's peak RSS (``VmHWM``) before
staging (the baseline of the same run), after staging and after the commit. The difference
is what the archive path costs per entry (it should not grow with the entries).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.ingest import stage_archive  # noqa: E402
from runtime.repository import Repository  # noqa: E402
from runtime.settings import RepositoryConfig  # noqa: E402
from tests.ingestkit import empty_files_tar  # noqa: E402
from tests.serverproc import proc_status  # noqa: E402


def peak_rss_mib() -> float:
    return proc_status("VmHWM") / 2**20


class _Chunks(io.RawIOBase):
    """A file object over a generator of pieces (the tar is never whole in memory)."""

    def __init__(self, pieces):
        self._it, self._buf = iter(pieces), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        while not self._buf:
            self._buf = next(self._it, b"")
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ingest-memory-", dir=args.workdir))
    try:
        repo = Repository(root / "data", root / "keys", RepositoryConfig(fqrn="mem.bench.org"))
        repo.init()
        baseline = peak_rss_mib()
        started = time.perf_counter()
        tx = repo.begin()
        stats = stage_archive(tx, "big", io.BufferedReader(_Chunks(empty_files_tar(args.entries)),
                                                           1024 * 1024))
        staged, t_stage = peak_rss_mib(), time.perf_counter() - started
        started = time.perf_counter()
        tx.publish()
        committed, t_commit = peak_rss_mib(), time.perf_counter() - started
        print(f"entries={stats.files} baseline={baseline:.0f} MiB staged={staged:.0f} MiB "
              f"({t_stage:.1f} s) committed={committed:.0f} MiB ({t_commit:.1f} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
