"""What the retention decisions cost a publish, beside the same publish without them.

``keep_last`` and the quota are decided at commit time, on the replayed artifact rows, under
the writer lock (``runtime/repository/commit.py``): both walk the repository's artifact names
once per transaction. This prints the publish latency of a 1-file upload into a repository of
``--artifacts`` artifacts in three modes, interleaved sample by sample so that they see the same
disk and cache state:

- baseline: no retention option;
- keep_last: ``keep_last`` larger than the repository (the whole decision, no removal);
- quota: a byte quota that the upload fits (the whole check, no refusal).

Medians and p99 over ``--samples`` each, and the ratio of each median to the baseline's.

Usage: ``python bench/retention.py [--artifacts 5000] [--samples 60] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.repository import Repository  # noqa: E402
from runtime.settings import RepositoryConfig  # noqa: E402


def fill(repo: Repository, artifacts: int) -> None:
    batch = 500
    for start in range(0, artifacts, batch):
        tx = repo.begin()
        for a in range(start, min(artifacts, start + batch)):
            tx.add_file(f"art{a:06d}", f"artifact {a}".encode())
        tx.publish()


def publish_once(repo: Repository, i: int, mode: str, plain: RepositoryConfig,
                 quota: RepositoryConfig, artifacts: int) -> float:
    repo.config = quota if mode == "quota" else plain
    t = time.perf_counter()
    tx = repo.begin()
    tx.add_file(f"probe-{mode}", f"sample {i}".encode())  # replaced each time: count constant
    if mode == "keep_last":
        tx.set_keep_last(f"probe-{mode}", artifacts * 10)
    result = repo.publish(tx)
    elapsed = (time.perf_counter() - t) * 1000
    error = result.error_for(tx)
    if error is not None:
        raise error
    return elapsed


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=int, default=5000)
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-retention-", dir=args.workdir))
    try:
        plain = RepositoryConfig(fqrn="retention.bench.org")
        quota = plain.model_copy(update={"quota_bytes": 1 << 40})
        repo = Repository(root / "data", root / "keys", plain)
        repo.init()
        fill(repo, args.artifacts)
        modes = ("baseline", "keep_last", "quota")
        times: dict[str, list[float]] = {m: [] for m in modes}
        for m in modes:  # warm-up: the first publish of each name creates it
            publish_once(repo, -1, m, plain, quota, args.artifacts)
        for i in range(args.samples):
            for m in modes:
                times[m].append(publish_once(repo, i, m, plain, quota, args.artifacts))
        base = statistics.median(times["baseline"])
        print(f"1-file publish into {args.artifacts} artifacts, {args.samples} samples each:")
        for m in modes:
            med = statistics.median(times[m])
            print(f"  {m:<10} p50 {med:6.2f} ms   p99 {p99(times[m]):6.2f} ms   "
                  f"x{med / base:4.2f} of baseline")
        repo.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
