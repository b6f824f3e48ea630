"""Start-up time of the command line: what a CI script calling ``python -m runtime`` in a loop pays.

Prints, in one run, the median wall time (and min–max) over ``--repeats`` runs of

- the baselines: ``python -c pass`` with the same interpreter (the floor no command can beat),
  and ``cp`` of the one file plus ``sync`` of the copy (what the shell's tools pay to put that
  file durably on the same filesystem: the floor of a publish that survives a crash);
- ``upload --help``, ``info <fqrn>`` and ``publish`` of a one-file tree into a scratch
  repository (created once, before timing): the whole command, end to end, as a CI script
  sees it (interpreter start, imports, signing, the fsyncs of the commit);

each beside the baselines and its target: 0.3 s for ``upload --help`` and ``info``, 0.4 s for
the 1-file ``publish`` (issue "small files": a 1-file publish from the CLI in < 0.4 s). Runs are interleaved (baseline, then every
command, per round) so that a noisy neighbour slows all of them alike.

Then the same for a tree of ``--tree-files`` small files (default 10,000 of 1-4 KiB in 100
directories; 0 leaves it out): ``publish`` of it in one call, as a CI job publishing a build
pays it (start-up, the helper processes' start, the publish), beside ``cp -r`` + ``sync -f``
of the same kind of tree. Each of the two runs gets a tree of new content every round, made
untimed beforehand; nothing is deleted before the end (on ext4 without a journal, deleting
files slows the next creations: README, "Benchmarks").

``--against DIR`` also times the same commands run from another checkout (an older commit,
e.g. extracted with ``git archive``), interleaved in the same rounds, so a before/after
comparison shares the machine's load.

Usage: ``python bench/cli_startup.py [--repeats 11] [--workdir DIR] [--against DIR]
[--tree-files 10000]``. Add
``-X importtime`` to a single command by hand to see where its time goes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.baselines import make_small_files  # noqa: E402

FQRN = "bench.example.org"
#: The tree publishes go to a repository of their own: ``info`` walks every object of its
#: repository, and the trees' objects would make the ``info`` row time that walk instead.
TREE_FQRN = "tree.example.org"
#: Wall-time targets per command; the tree runs have none.
TARGETS_S = {"upload --help": 0.3, "info": 0.3, "publish (1 file)": 0.4}
PASS = "python -c pass (baseline)"
COPY = "cp + sync (baseline)"
TREE = "{tree}"  #: in an argument list: a tree of new content, made before each run


def _tree_publish(files: int) -> str:
    """The label of the tree publish (``[against]`` may follow it)."""
    return f"publish ({files:,} files)"


def _tree_copy(files: int) -> str:
    """The label of the tree publish's baseline."""
    return f"cp -r + sync ({files:,} files, baseline)"


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
              source: Path, tree_files: int) -> dict[str, list[str]]:
    help_text = subprocess.run([*cli, "publish", "--help"], env=env, cwd=checkout,
                               capture_output=True, text=True).stdout
    name_flag = "--name" if "--name" in help_text else "--as"  # --as before the rename
    commands = {"upload --help": [*cli, "upload", "--help"], "info": [*cli, "info", FQRN],
                "publish (1 file)": [*cli, "publish", FQRN, str(source), name_flag, "one"]}
    if tree_files:
        commands[_tree_publish(tree_files)] = [*cli, "publish", TREE_FQRN, TREE, name_flag,
                                               "tree"]
    return commands


_tree_numbers = itertools.count(1)


def _fresh_tree(work: Path, count: int) -> str:
    """A new directory of ``count`` small files of content no earlier tree had, synced so that
    its writeback is not charged to the run that reads it."""
    number = next(_tree_numbers)
    tree = work / f"tree-{number}"
    make_small_files(tree, count, seed=number)
    os.sync()
    return str(tree)


def _revision(cli: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([*cli, "info", FQRN], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("revision"))


def _compile(checkout: Path) -> None:
    """Byte-compile the checkout's ``runtime`` package, as ``pip install`` and the image do:
    with ``PYTHONDONTWRITEBYTECODE`` set (as in CI shells and the image), a source checkout
    would otherwise recompile every module on every run and time the compiler."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "runtime")],
                   check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="rounds (>= 5)")
    parser.add_argument("--workdir", default=None,
                        help="scratch directory on the filesystem to measure (default: $TMPDIR)")
    parser.add_argument("--against", default=None, help="another checkout to time alongside")
    parser.add_argument("--tree-files", type=int, default=10_000,
                        help="files in the tree of the tree publish (0: leave it out)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (medians of fewer runs are noise)")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        env = {**os.environ, "CVMFS_EPHEMERAL_DATA_DIR": str(work / "data"),
               "CVMFS_EPHEMERAL_KEYS_DIR": str(work / "keys"), "PYTHONPATH": str(ROOT)}
        env.pop("CVMFS_EPHEMERAL_REPOSITORIES", None)
        cli = [sys.executable, "-m", "runtime"]
        for fqrn in (FQRN, TREE_FQRN) if args.tree_files else (FQRN,):
            subprocess.run([*cli, "init", fqrn], env=env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
        tree = work / "tree"
        tree.mkdir()
        (tree / "hello.txt").write_text("hello\n")
        copy = ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(tree / "hello.txt"),
                str(work / "copy.txt")]
        runs: list[tuple[str, list[str], Path, dict[str, str]]] = [
            (PASS, [sys.executable, "-c", "pass"], ROOT, env), (COPY, copy, ROOT, env)]
        if args.tree_files:
            copy_tree = ["sh", "-c", 'cp -r "$1" "$1.copy" && sync -f "$1.copy"', "sh", TREE]
            runs.append((_tree_copy(args.tree_files), copy_tree, ROOT, env))
        trees = [("", ROOT)] + ([(" [against]", Path(args.against).resolve())]
                                if args.against else [])
        for suffix, root in trees:
            _compile(root)
            tree_env = {**env, "PYTHONPATH": str(root)}
            for label, argv in _commands(cli, root, tree_env, tree, args.tree_files).items():
                runs.append((label + suffix, argv, root, tree_env))
        times: dict[str, list[float]] = {label: [] for label, *_ in runs}
        cpu: dict[str, list[float]] = {label: [] for label, *_ in runs}
        first = _revision(cli, env)
        for round_ in range(args.repeats):
            for label, argv, cwd, run_env in runs:
                if label.startswith(("publish", COPY)):
                    # New content every time: each publish is a real commit (a new revision,
                    # its fsyncs), not the no-op of republishing what is already there.
                    (tree / "hello.txt").write_text(f"hello {round_} {label}\n")
                if TREE in argv:
                    fresh = _fresh_tree(work, args.tree_files)
                    argv = [fresh if arg == TREE else arg for arg in argv]
                wall, used = _timed(argv, run_env, cwd)
                times[label].append(wall)
                cpu[label].append(used)
        if _revision(cli, env) == first:
            raise SystemExit("the publishes did not make a new revision: nothing was measured")
    base = statistics.median(times[PASS])
    copy_base = statistics.median(times[COPY])
    print(f"CLI start-up, median of {args.repeats} runs [min-max], {sys.executable}, "
          f"on {Path(args.workdir or tempfile.gettempdir()).resolve()}")
    for label, samples in times.items():
        med = statistics.median(samples)
        target = TARGETS_S.get(label.removesuffix(" [against]"))
        verdict = ("" if target is None else
                   f"  {'under' if med < target else 'OVER'} the {target * 1000:.0f} ms target")
        print(f"  {label:34} {med * 1000:7.0f} ms [{min(samples) * 1000:.0f}-"
              f"{max(samples) * 1000:.0f}]  {med / base:5.1f}x python, "
              f"{med / copy_base:4.1f}x cp+sync{verdict}"
              f"  (CPU {statistics.median(cpu[label]) * 1000:.0f} ms)")
    if args.tree_files:
        tree_copy = statistics.median(times[_tree_copy(args.tree_files)])
        for label in [k for k in times if k.startswith(_tree_publish(args.tree_files))]:
            print(f"  {label:34} {statistics.median(times[label]) / tree_copy:.2f}x cp -r + sync "
                  "of the same kind of tree")
    if args.against:
        for label in [k for k in times if k.endswith(" [against]")]:
            mine = label.removesuffix(" [against]")
            wall = statistics.median(times[mine]) / statistics.median(times[label])
            used = statistics.median(cpu[mine]) / statistics.median(cpu[label])
            print(f"  {mine:34} {wall:.2f}x the other checkout's wall time, {used:.2f}x its CPU")


if __name__ == "__main__":
    main()
