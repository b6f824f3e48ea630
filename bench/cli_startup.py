"""Start-up time of the command line: what a CI script calling ``python -m runtime`` in a loop pays.

Prints, in one run, the median wall time (and min–max) over ``--repeats`` runs of

- the baseline: ``python -c pass`` with the same interpreter (the floor no command can beat);
- ``upload --help``, ``info <fqrn>`` and ``publish`` of a one-file tree into a scratch
  repository (created once, before timing);

each beside the baseline and the 0.3 s target. Runs are interleaved (baseline, then every
command, per round) so that a noisy neighbour slows all of them alike.

``--against DIR`` also times the same commands run from another checkout (an older commit,
e.g. extracted with ``git archive``), interleaved in the same rounds, so a before/after
comparison shares the machine's load.

Usage: ``python bench/cli_startup.py [--repeats 11] [--workdir DIR] [--against DIR]``. Add
``-X importtime`` to a single command by hand to see where its time goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FQRN = "bench.example.org"
TARGET_S = 0.3


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run: on a loaded machine the CPU time
    still tells what the command itself costs."""
    cpu, start = _cpu_children(), time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, _cpu_children() - cpu


def _commands(cli: list[str], checkout: Path, env: dict[str, str],
              source: Path) -> dict[str, list[str]]:
    help_text = subprocess.run([*cli, "publish", "--help"], env=env, cwd=checkout,
                               capture_output=True, text=True).stdout
    name_flag = "--name" if "--name" in help_text else "--as"  # --as before the rename
    return {"upload --help": [*cli, "upload", "--help"], "info": [*cli, "info", FQRN],
            "publish (1 file)": [*cli, "publish", FQRN, str(source), name_flag, "one"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--against", default=None, help="another checkout to time alongside")
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
        runs: list[tuple[str, list[str], Path, dict[str, str]]] = [
            ("python -c pass (baseline)", [sys.executable, "-c", "pass"], ROOT, env)]
        trees = [("", ROOT)] + ([(" [against]", Path(args.against).resolve())]
                                if args.against else [])
        for suffix, root in trees:
            tree_env = {**env, "PYTHONPATH": str(root)}
            for label, argv in _commands(cli, root, tree_env, tree).items():
                runs.append((label + suffix, argv, root, tree_env))
        times: dict[str, list[float]] = {label: [] for label, *_ in runs}
        cpu: dict[str, list[float]] = {label: [] for label, *_ in runs}
        for _ in range(args.repeats):
            for label, argv, cwd, run_env in runs:
                wall, used = _timed(argv, run_env, cwd)
                times[label].append(wall)
                cpu[label].append(used)
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"CLI start-up, median of {args.repeats} runs [min-max], {sys.executable}")
    for label, samples in times.items():
        med = statistics.median(samples)
        print(f"  {label:28} {med * 1000:7.0f} ms [{min(samples) * 1000:.0f}-"
              f"{max(samples) * 1000:.0f}]  {med / base:5.1f}x baseline  "
              f"{'under' if med < TARGET_S else 'OVER'} the {TARGET_S * 1000:.0f} ms target"
              f"  (CPU {statistics.median(cpu[label]) * 1000:.0f} ms)")
    if args.against:
        for label in [k for k in times if k.endswith(" [against]")]:
            mine = label.removesuffix(" [against]")
            wall = statistics.median(times[mine]) / statistics.median(times[label])
            used = statistics.median(cpu[mine]) / statistics.median(cpu[label])
            print(f"  {mine:28} {wall:.2f}x the other checkout's wall time, {used:.2f}x its CPU")


if __name__ == "__main__":
    main()
