"""What end-to-end integrity costs the CI client: an upload with ``Content-Digest`` (the
client's pre-pass hash over the file, then the server's check) beside the same upload with
``--no-digest``, in the same run, on the real server over loopback. The server hashes every
file upload either way (its answer carries ``sha256``), so the difference is the client's
second read of the file plus the comparison.

Usage: ``python bench/digest.py [--size-mib N] [--repeat N] [--dir DIR]``; medians printed.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.upload import FQRN, TOKEN, Server, prepare  # noqa: E402
from runtime.client.upload import file_digest, upload  # noqa: E402

MiB = 1024 * 1024


def timed_upload(server: Server, source: Path, name: str, digest: bool) -> float:
    started = time.perf_counter()
    out = upload(source, url=server.url, repo=FQRN, name=name, token=TOKEN, retries=0,
                 digest=digest, overwrite=True)
    elapsed = time.perf_counter() - started
    assert out["digest_verified"] is digest, out
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-digest-") as tmp:
        work = Path(tmp)
        server = Server(work)
        try:
            with_digest, without, prepass = [], [], []
            for i in range(args.repeat):
                # new content for each upload (the store would dedupe a repeat), and the two
                # modes alternate which goes first
                plain = prepare(work, f"p{i}", size, seed=2 * i)
                checked = prepare(work, f"c{i}", size, seed=2 * i + 1)
                runs = [(plain, False, without), (checked, True, with_digest)]
                for source, digest, into in (runs if i % 2 == 0 else runs[::-1]):
                    into.append(timed_upload(server, source, source.stem, digest=digest))
                started = time.perf_counter()
                file_digest(checked)
                prepass.append(time.perf_counter() - started)
                plain.unlink()
                checked.unlink()
            block = b"\x5a" * MiB
            started = time.perf_counter()
            h = hashlib.sha256()
            for _ in range(args.size_mib):
                h.update(block)
            in_memory = time.perf_counter() - started
        finally:
            server.stop()
    med = statistics.median
    print(f"upload of {args.size_mib} MiB, median of {args.repeat}:")
    print(f"  with Content-Digest   {med(with_digest):7.3f} s  "
          f"({args.size_mib / med(with_digest):7.1f} MiB/s)")
    print(f"  --no-digest baseline  {med(without):7.3f} s  "
          f"({args.size_mib / med(without):7.1f} MiB/s)")
    print(f"  client pre-pass alone {med(prepass):7.3f} s  (file in page cache); "
          f"sha256 in memory {in_memory:.3f} s ({args.size_mib / in_memory:.0f} MiB/s)")


if __name__ == "__main__":
    main()
