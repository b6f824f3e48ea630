"""Start-up time of the command line: what a CI script calling ``python -m runtime`` in a loop pays.

Prints, in one run, the median wall time (and min–max) over ``--repeats`` runs of

- the baseline: ``python -c pass`` with the same interpreter (the floor no command can beat);
- ``upload --help``, ``info <fqrn>`` and ``publish`` of a one-file tree into a scratch
  repository (created once, before timing);

each beside the baseline and the 0.3 s target. Runs are interleaved (baseline, then every
command, per round) so that a noisy neighbour slows all of them alike.

Usage: ``python bench/cli_startup.py [--repeats 11] [--workdir DIR]``. Add ``-X importtime``
to a single command by hand to see where its time goes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FQRN = "bench.example.org"
TARGET_S = 0.3


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        env = {**os.environ, "CVMFS_EPHEMERAL_DATA_DIR": str(work / "data"),
               "CVMFS_EPHEMERAL_KEYS_DIR": str(work / "keys"), "PYTHONPATH": str(ROOT)}
        env.pop("CVMFS_EPHEMERAL_REPOSITORIES", None)
        cli = [sys.executable, "-m", "runtime"]
        subprocess.run([*cli, "init", FQRN], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        tree = work / "tree"
        tree.mkdir()
        (tree / "hello.txt").write_text("hello\n")
        commands = {
            "python -c pass (baseline)": [sys.executable, "-c", "pass"],
            "upload --help": [*cli, "upload", "--help"],
            "info": [*cli, "info", FQRN],
            "publish (1 file)": [*cli, "publish", FQRN, str(tree), "--name", "one"],
        }
        if subprocess.run([*cli, "publish", "--help"], env=env, cwd=ROOT,
                          capture_output=True, text=True).stdout.find("--name") < 0:
            commands["publish (1 file)"][-2] = "--as"  # before the rename of --as to --name
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeats):
            for label, argv in commands.items():
                times[label].append(_timed(argv, env))
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"CLI start-up, median of {args.repeats} runs [min-max], {sys.executable}")
    for label, samples in times.items():
        med = statistics.median(samples)
        print(f"  {label:28} {med * 1000:7.0f} ms [{min(samples) * 1000:.0f}-"
              f"{max(samples) * 1000:.0f}]  {med / base:5.1f}x baseline  "
              f"{'under' if med < TARGET_S else 'OVER'} the {TARGET_S * 1000:.0f} ms target")


if __name__ == "__main__":
    main()
