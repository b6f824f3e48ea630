"""Every benchmark in ``bench/`` still runs, at its smallest size.

The figures in the issues and the README come from these scripts, so a benchmark that no
longer starts is a lost measurement, found only when someone needs the figure (``bench/
gateway.py`` had stopped starting its gateway once ``serve`` required a repository). These runs
check that each script completes and prints its headline figure beside its baseline; they
assert nothing about speed, which the scripts themselves report on a quiet machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

#: name -> (arguments at the smallest useful size, a line the run must print). ``{work}`` is a
#: scratch directory of the test's own.
RUNS: dict[str, tuple[list[str], str]] = {
    "abuse": (["--dir", "{work}", "--entries", "2000", "--repeat", "1"],
              r"10,000-file tar: alone [\d.]+ s; with 16 stalled uploads"),
    "auth": (["--n", "50", "--repeat", "1", "--tokens", "10"],
             r"static token among 10: [\d.]+ us/check; baseline"),
    "cli_startup": (["--repeats", "5", "--tree-files", "200", "--workdir", "{work}"],
                    r"python -c pass \(baseline\)[\s\S]*publish \(1 file\)\s+\d+ ms[\s\S]*"
                    r"publish \(200 files\)\s+[\d.]+x cp -r \+ sync"),
    "deflate": (["--size-mib", "8", "--table-mib", "8", "--repeat", "1", "--workdir", "{work}"],
                r"ratio to a 1-core stock zlib pass median [\d.]+"),
    "digest": (["--size-mib", "8", "--repeat", "1", "--dir", "{work}"],
               r"--no-digest baseline\s+[\d.]+ s"),
    "download": (["--entries", "2000", "--repeat", "1", "--dir", "{work}"],
                 r"HTTP download over loopback: [\d.]+ s; server RSS .* vs\s+idle"),
    "gateway": (["--subscribers", "200", "--publishes", "5", "--clients", "2"],
                r"200 subscribers: publish->last subscriber p50 [\d.]+ ms.*baseline p50"),
    "gc": (["--quick", "--workdir", "{work}"], r"baseline: list\+stat of the [\d,]+ objects"),
    "ingest_memory": (["--entries", "2000", "--workdir", "{work}"],
                      r"entries=2000 baseline=\d+ MiB staged=\d+ MiB"),
    "publish": (["--size-mib", "8", "--small-files", "500", "--artifacts", "20",
                 "--files-per-artifact", "10", "--samples", "10", "--repeat", "1",
                 "--floor-processes", "1,2", "--dir", "{work}"],
                r"tar -x \+ sync [\d,]+ \[.*cp -r \+ sync [\d,]+ \[[\s\S]*"
                r"object floor, 1 process .*: [\d,]+ \[.*\] files/s = [\d.]+ \[.*x tar -x "
                r"\+ sync\n.*object floor, 2 processes[\s\S]*fastest floor of each round = "
                r"[\d.]+ \[[\s\S]*"
                r"baseline, top-level 1-file publish in the same run: p50\s+[\d.]+ ms"),
    "retention": (["--artifacts", "20", "--samples", "5", "--workdir", "{work}"],
                  r"baseline\s+p50\s+[\d.]+ ms"),
    "site_cache": (["--readers", "2", "--files", "20", "--repeats", "1", "--workdir", "{work}"],
                   r"direct \(baseline\)\s+stratum-0 requests per new object"),
    "staging_memory": (["--entries", "2000", "--dirs", "10", "--workdir", "{work}"],
                       r"growth over the baseline:\s+[\d.]+ MiB"),
    "upload": (["--quick", "--repeat", "1", "--dir", "{work}"],
               r"server peak RSS, 256 MiB upload\s+[\d.]+ MiB\s+vs idle RSS"),
}


def test_every_benchmark_is_listed() -> None:
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"baselines"}  # baselines: a library
    assert scripts == set(RUNS), "a benchmark without a smoke run (or a run without a script)"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_benchmark_runs_and_prints_its_figure(name: str, tmp_path: Path) -> None:
    tools = ("squid", "nginx")
    if name == "site_cache" and not os.environ.get("CI") and not all(
            shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}") for tool in tools):
        pytest.skip("squid or nginx not installed (scripts/ensure-docker.sh installs both)")
    args, expected = RUNS[name]
    work = tmp_path / "work"
    work.mkdir()
    argv = [a.replace("{work}", str(work)) for a in args]
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert re.search(expected, output), f"no line matching {expected!r} in:\n{output[-4000:]}"


def test_object_floor_creates_every_object_named_by_content(tmp_path: Path) -> None:
    """The floor a small-file publish is compared with does the whole of its work: one object
    per distinct content, named by SHA-1 under ``data/XX``, holding the file's bytes."""
    sys.path.insert(0, str(ROOT))
    from bench.baselines import object_floor

    src = tmp_path / "src"
    contents = {f"d{i % 3}/f{i}": os.urandom(100 + i) for i in range(40)}
    contents["d0/same-as-f0"] = contents["d0/f0"]  # one object for two files, as a publish
    for rel, blob in contents.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(blob)
    out = tmp_path / "out"
    seconds = object_floor(src, out, workers=3)
    stored = {p.parent.name + p.name: p.read_bytes()
              for p in (out / "data").glob("*/*")}
    assert seconds > 0
    assert stored == {hashlib.sha1(blob).hexdigest(): blob for blob in contents.values()}
    assert len(stored) == 40
