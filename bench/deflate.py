"""Compressed publishing: the deflate candidates, then a zlib publish, each beside stock zlib.

Prints, on an artifact-like mix (this machine's Python sources and shared libraries, i.e. text
and machine code as CI build outputs hold them, cut into 8 MiB chunks as the writer does):
1. Every candidate deflate (stock zlib 6 = what cvmfs_server uses, zlib-ng 1-6, ISA-L 0-3 where
   installed): single-core MiB/s, speed ratio to stock zlib 6, compressed size vs stock zlib 6
   (the issue's bound: within +10 %).
2. Publishing ``--size-mib`` of the mix with ``compression: zlib`` at the repository's default
   level: MiB/s and the ratio to one single-core stock-zlib pass over the same bytes
   (target >= 2.5; cvmfs_server sits near 1.3-1.6).
Medians over ``--repeat`` runs; the baseline is measured in each round next to the publish.

Usage: ``python bench/deflate.py [--size-mib 1024] [--repeat 5] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.cvmfs import deflate  # noqa: E402
from runtime.repository import Repository  # noqa: E402
from runtime.settings import RepositoryConfig  # noqa: E402

CHUNK = 8 * 1024 * 1024


def artifact_mix(limit: int) -> bytes:
    """Up to ``limit`` bytes: half Python sources, half shared libraries."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = bytearray()
    for p in sorted(stdlib.rglob("*.py")):
        text += p.read_bytes()
        if len(text) >= limit // 2:
            break
    binary = bytearray()
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", str(stdlib)):
        for p in sorted(Path(d).rglob("*.so*")) if Path(d).is_dir() else []:
            if p.is_file() and not p.is_symlink():
                binary += p.read_bytes()
            if len(binary) >= limit // 2:
                break
    return bytes(text[: limit // 2] + binary[: limit // 2])


def per_chunk(fn: Callable[[bytes], bytes], data: bytes) -> tuple[float, int]:
    t = time.perf_counter()
    size = sum(len(fn(data[i:i + CHUNK])) for i in range(0, len(data), CHUNK))
    return time.perf_counter() - t, size


def candidates() -> dict[str, Callable[[bytes], bytes]]:
    out: dict[str, Callable[[bytes], bytes]] = {"stock zlib 6": lambda d: zlib.compress(d, 6)}
    try:
        from zlib_ng import zlib_ng
        for lvl in range(1, 7):
            out[f"zlib-ng {lvl}"] = (lambda l: lambda d: zlib_ng.compress(d, l))(lvl)
    except ImportError:
        pass
    try:
        from isal import isal_zlib
        for lvl in range(0, 4):
            out[f"ISA-L {lvl}"] = (lambda l: lambda d: isal_zlib.compress(d, l))(lvl)
    except ImportError:
        pass
    return out


def table(mix: bytes, repeat: int) -> None:
    print(f"1. deflate candidates on {len(mix) / 2**20:.0f} MiB of sources + shared libraries, "
          f"8 MiB chunks, one core, median of {repeat}")
    base_t = base_n = 0.0
    for name, fn in candidates().items():
        runs = [per_chunk(fn, mix) for _ in range(repeat)]
        t, n = statistics.median(r[0] for r in runs), runs[0][1]
        if not base_t:
            base_t, base_n = t, n
        assert zlib.decompress(fn(mix[:CHUNK])) == mix[:CHUNK], name
        print(f"   {name:13} {len(mix) / t / 2**20:7.1f} MiB/s  speed x{base_t / t:5.2f}  "
              f"size {n / base_n * 100 - 100:+6.1f} % vs stock zlib 6")


def publish_round(root: Path, src: Path) -> tuple[float, float]:
    """(seconds of a single-core stock zlib pass, seconds of the zlib publish) of ``src``."""
    data = src.read_bytes()
    base, _ = per_chunk(lambda d: zlib.compress(d, 6), data)
    del data
    repo = Repository(root / "data", root / "keys", RepositoryConfig(
        fqrn="deflate.bench.org", compression="zlib"))
    repo.init()
    try:
        t = time.perf_counter()
        tx = repo.begin()
        with open(src, "rb") as fh:
            tx.add_file("big/mix.bin", fh)
        tx.publish()
        return base, time.perf_counter() - t
    finally:
        repo.close()
        shutil.rmtree(root / "data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--table-mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    mix = artifact_mix(args.table_mib * 2**20)
    table(mix, args.repeat)
    base_dir = args.workdir or Path(__file__).resolve().parents[1] / "var"
    base_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-deflate-", dir=base_dir))
    try:
        src = root / "mix.bin"
        size = args.size_mib * 2**20
        with open(src, "wb") as fh:  # the mix repeated, shifted so that no two chunks repeat
            written, shift = 0, 0
            while written < size:
                piece = mix[shift % 4096:][: size - written]
                fh.write(piece)
                written += len(piece)
                shift += 997
        ratios, speeds = [], []
        for _ in range(args.repeat):
            base, t = publish_round(root, src)
            ratios.append(base / t)
            speeds.append(size / t / 2**20)
        print(f"2. publish {args.size_mib} MiB of the mix, compression zlib (level "
              f"{RepositoryConfig(fqrn='a.b').compression_level}, {deflate.BACKEND}): "
              f"median {statistics.median(speeds):.1f} MiB/s; ratio to a 1-core stock zlib pass "
              f"median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max "
              f"{max(ratios):.2f}; target >= 2.5)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
